"""The composition root: builds every component once and owns the TaskGroup.

Lifecycle: start (sinks entered on an AsyncExitStack, checkpoints loaded),
run (watcher, one pipeline per sink, janitor), drain (on stop: readers stop,
in-flight batches are delivered within ``shutdown.drain_timeout_s``), stop.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import structlog

from sidecar.clock import Clock, SystemClock
from sidecar.health import (
    HealthReporter,
    HttpServer,
    Metrics,
    Notifier,
    SelfMonitor,
    readiness_check,
)
from sidecar.janitor import Janitor
from sidecar.pipeline import PipelineSettings, SinkPipeline
from sidecar.read_side import ReadSide
from sidecar.settings import Settings, mask_url
from sidecar.sinks.base import Sink
from sidecar.spool.checkpoints import CheckpointStore
from sidecar.spool.quarantine import Quarantine
from sidecar.spool.tailer import SpoolReader
from sidecar.spool.watcher import SpoolWatcher
from sidecar.stats import SinkStats, SpoolStats

log = structlog.get_logger("sidecar.app")
CANCEL_GRACE_S = 2.0


class App:
    def __init__(self, settings: Settings, clock: Clock | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.pipelines: list[SinkPipeline] = []
        self.started = asyncio.Event()
        self.notifier = notifier or Notifier()
        self.metrics = Metrics(sinks=self.sink_stats, spool=self.spool_stats,
                               status=lambda: self.monitor.status.status)
        self.monitor = SelfMonitor(settings.health, self.clock, recorder=self.metrics)
        self.http: HttpServer | None = None
        self.read: ReadSide | None = None  # stats, cache and retention (with Postgres)

    def sink_stats(self) -> list[SinkStats]:
        return [p.stats() for p in self.pipelines]

    def spool_stats(self) -> SpoolStats:
        """Files and bytes in the spool, as the first reader sees them."""
        if not self.pipelines:
            return SpoolStats(0, 0)
        files = self.pipelines[0].reader.files.values()
        return SpoolStats(len(files), sum(f.size for f in files))

    async def _open_sinks(self, stack: AsyncExitStack) -> list[Sink]:
        s = self.settings
        sinks: list[Sink] = []
        if s.postgres.enabled:
            from sidecar.sinks.postgres import PostgresSink

            sinks.append(await stack.enter_async_context(
                PostgresSink(s.postgres, s.opik.project_name, on_stored=self._on_stored)))
        if s.opik.enabled:
            from sidecar.sinks.opik import OpikSink

            sinks.append(await stack.enter_async_context(OpikSink(s.opik, clock=self.clock)))
        if not sinks:
            log.warning("app.sinks.none", hint="enable postgres or opik; spans stay in the spool")
        return sinks

    async def _open_read_side(self, stack: AsyncExitStack) -> ReadSide | None:
        if not self.settings.postgres.enabled:
            return None
        read = await stack.enter_async_context(
            ReadSide(self.settings, self.clock, self.monitor.observe))
        self.metrics.add_cache(read.cache_stats)
        return read

    async def _on_stored(self, agents: frozenset[str]) -> None:
        if self.read is not None:
            await self.read.on_stored(agents)

    def _pipeline(self, sink: Sink, watcher: SpoolWatcher) -> SinkPipeline:
        s = self.settings
        store = CheckpointStore(s.spool.state_dir, sink.name)
        reader = SpoolReader(s.spool.dir, s.spool.patterns, s.spans.max_line_bytes,
                             s.spool.read_chunk_bytes, store.load(), sink.name,
                             idle_done_after_s=s.spool.idle_done_after_s)
        quarantine = Quarantine(s.spool.state_dir, sink.name)
        quarantine.open()
        settings = PipelineSettings(s.batch, s.breaker, s.retry, s.spans.max_line_bytes)
        return SinkPipeline(sink, reader, store, quarantine, settings, watcher.subscribe(),
                            self.clock, observe=self.monitor.observe)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain and return."""
        s = self.settings
        s.spool.dir.mkdir(parents=True, exist_ok=True)
        s.spool.state_dir.mkdir(parents=True, exist_ok=True)
        async with AsyncExitStack() as stack:
            self.read = await self._open_read_side(stack)
            sinks = await self._open_sinks(stack)
            watcher = SpoolWatcher(s.spool)
            pipelines = self.pipelines = [self._pipeline(sink, watcher) for sink in sinks]
            for p in pipelines:
                stack.callback(p.reader.close)
                stack.callback(p.quarantine.close)
            janitor = Janitor([p.reader for p in pipelines], s.spool)
            if s.http.enabled:
                self.http = await stack.enter_async_context(HttpServer(
                    s.http, self.metrics.render, readiness_check(s.spool, self.sink_stats)))
                if self.read is not None:
                    self.http.set_stats_handler(self.read.stats_http)
            reporter = self._reporter(stack)
            log.info("app.started", spool_dir=str(s.spool.dir), state_dir=str(s.spool.state_dir),
                     sinks=[p.sink.name for p in pipelines], postgres=mask_url(s.postgres.dsn)
                     if s.postgres.enabled else None, opik=mask_url(s.opik.url)
                     if s.opik.enabled else None)
            await self._supervise(stop, watcher, janitor, reporter)

    def _reporter(self, stack: AsyncExitStack) -> HealthReporter | None:
        """Health spans go through the spool, like any agent's (CONTRACT 7)."""
        if not self.settings.health.enabled:
            return None
        from sidecar.client.writer import SpoolWriter

        writer = SpoolWriter(self.settings.spool.dir, "span-sidecar")
        stack.callback(writer.close)
        def write(span: dict[str, Any]) -> None:
            if not writer.write(span):
                log.warning("health.span.dropped", reason=writer.stats().last_error)

        return HealthReporter(self.settings.health, self.monitor, self.sink_stats,
                              self.spool_stats, write, self.clock)

    async def _supervise(self, stop: asyncio.Event, watcher: SpoolWatcher, janitor: Janitor,
                         reporter: HealthReporter | None) -> None:
        background = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(watcher.run(background))
            tg.create_task(janitor.run(background))
            tg.create_task(self.notifier.run_watchdog(background))
            if reporter is not None:
                tg.create_task(reporter.run(background))
            if self.read is not None:
                tg.create_task(self.read.run(background))
            tasks = [tg.create_task(p.run(stop)) for p in self.pipelines]
            self.started.set()
            self.notifier.ready()
            self.notifier.status(f"shipping to {', '.join(p.sink.name for p in self.pipelines)}")
            await stop.wait()
            self.notifier.stopping()
            log.info("app.drain.started", timeout_s=self.settings.shutdown.drain_timeout_s)
            drained = await self._drain(tasks)
            background.set()
        log.info("app.stopped", drained=drained)

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> bool:
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown.drain_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            # Bounded too: a task stuck in a driver's cleanup is left behind
            # (the exit tears it down); a second signal cancels this wait.
            await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
            log.warning("app.drain.timed_out", undelivered_sinks=len(pending),
                        note="checkpoints trail what was stored; the rest ships after restart")
        return not pending
