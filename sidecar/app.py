"""The composition root: builds every component once and owns the TaskGroup.

Lifecycle: start (sinks entered on an AsyncExitStack, checkpoints loaded),
run (every long loop in one TaskGroup: watcher, one pipeline per sink,
janitor, health verdict, health spans, catch-up progress, HTTP heartbeat,
watchdog), drain (on
stop: each pipeline rescans the spool once and ships every complete line it
holds, within ``shutdown.drain_timeout_s``; ``drain_report`` says what each
sink was left, and the daemon's exit status follows it, see
``sidecar/pipeline/drain.py``), stop.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import structlog

# Imported now, not on the first bad line: with the file limit reached, a lazy
# import raises OSError (it opens the module's file).
import sidecar.schema  # noqa: F401
from sidecar import __version__
from sidecar.clock import Clock, SystemClock, every
from sidecar.config.reload import Reload, live_settings
from sidecar.config.settings import Settings
from sidecar.health import HealthReporter, Metrics, Notifier, SelfMonitor
from sidecar.health.progress import Progress
from sidecar.logging import set_level
from sidecar.pipeline.drain import DrainReport, drain
from sidecar.pipeline.shared_parse import SharedParses
from sidecar.pipeline.sink_pipeline import PipelineSettings, SinkPipeline, SinkSpool
from sidecar.policies import PolicyStage
from sidecar.read.service import ReadSide
from sidecar.sinks.base import Sink, SinkContext
from sidecar.sinks.registry import build_sink, enabled_sinks, sink_sections
from sidecar.snapshots import SinkStats, SpoolStats
from sidecar.spool.checkpoints import CheckpointStore
from sidecar.spool.faults import FaultTracker
from sidecar.spool.janitor import Janitor
from sidecar.spool.quarantine import Quarantine
from sidecar.spool.quota import SpoolQuota
from sidecar.spool.state import StateDir
from sidecar.spool.tailer import SpoolReader
from sidecar.spool.watcher import THROTTLE_S, SpoolWatcher

if TYPE_CHECKING:
    from sidecar.health.http import HttpServer
    from sidecar.receivers.server import ReceiverServer

log = structlog.get_logger("sidecar.app")
CANCEL_GRACE_S = 2.0


class App:
    def __init__(self, settings: Settings, clock: Clock | None = None,
                 notifier: Notifier | None = None, environment: str | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        # Exhausted resources are waited out, not fatal (sidecar/spool/faults.py).
        self.faults = FaultTracker(self.clock)
        self.state = StateDir(settings.spool.state_dir, self.faults)
        self.pipelines: list[SinkPipeline] = []
        self.started = asyncio.Event()
        self.notifier = notifier or Notifier(clock=self.clock)
        # One stage for every sink: sample, redact, truncate (sidecar/policies).
        env = os.environ.get("SIDECAR_ENV", "") if environment is None else environment
        self.policies = PolicyStage(settings.sampling, settings.spans, env,
                                    opik_api_key=settings.opik.api_key)
        self.quota = SpoolQuota(settings.spool, lambda: [p.reader for p in self.pipelines],
                                self.clock, faults=self.faults)
        self.metrics = Metrics(sinks=self.sink_stats, spool=self.spool_stats,
                               status=lambda: self.monitor.status.status,
                               policies=self.policies.stats, quota=self.quota.stats)
        self.metrics.add_resources(self.faults.stats,
                                   lambda: [p.quarantine.stats() for p in self.pipelines])
        self.monitor = SelfMonitor(settings.health, self.clock, recorder=self.metrics,
                                   quota=self.quota.stats, faults=self.faults.reasons)
        self.progress = Progress(self.sink_stats, self.clock)
        self.http: HttpServer | None = None
        self.receivers: ReceiverServer | None = None
        self.read: ReadSide | None = None  # stats, cache and retention (with Postgres)
        self.watcher: SpoolWatcher | None = None
        self.drain_report: DrainReport | None = None  # once stopped

    def sink_stats(self) -> list[SinkStats]:
        return [p.stats() for p in self.pipelines]

    def spool_stats(self) -> SpoolStats:
        """Files and bytes in the spool, as every reader together sees them."""
        sizes: dict[tuple[int, int], int] = {}
        for p in self.pipelines:
            for key, f in p.reader.positions().items():
                sizes[key] = max(sizes.get(key, 0), f.size)
        return SpoolStats(len(sizes), sum(sizes.values()))

    async def _open_sinks(self, stack: AsyncExitStack) -> list[Sink]:
        names = enabled_sinks(self.settings)
        if not names:
            hint = " or ".join(sink_sections(self.settings))
            log.warning("app.sinks.none", hint=f"enable {hint}; spans stay in the spool")
        context = SinkContext(self.clock, on_stored=self._on_stored)
        return [await stack.enter_async_context(build_sink(name, self.settings, context))
                for name in names]

    async def _open_read_side(self, stack: AsyncExitStack) -> ReadSide | None:
        # Not a sink spelled by name: the read side reads the table the
        # Postgres sink writes (its statistics, retention, partitions), so
        # it lives and goes with that sink's section.
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
        store = CheckpointStore(self.state, sink.name)
        reader = SpoolReader(s.spool.dir, s.spool.patterns, s.spans.max_line_bytes,
                             s.spool.read_chunk_bytes, store.load(), sink.name, self.clock,
                             idle_done_after_s=s.spool.idle_done_after_s, faults=self.faults)
        quarantine = Quarantine(self.state, sink.name, self.clock,
                                max_bytes=s.quarantine.max_bytes)
        quarantine.open()
        spool = SinkSpool(reader, store, quarantine, watcher.subscribe(), self.state)
        # The first pipeline counts what the shared policy stage did.
        return SinkPipeline(sink, spool, self._pipeline_settings(), self.clock,
                            observe=self.monitor.observe, policies=self.policies,
                            counts_policies=not self.pipelines)

    def _pipeline_settings(self) -> PipelineSettings:
        s = self.settings
        return PipelineSettings(s.batch, s.breaker, s.retry, s.spans.max_line_bytes)

    def reload(self, new: Settings) -> Reload:
        """Apply what can change live (``sidecar/config/reload.py: LIVE``) to
        what happens from now on; the changed keys that need a restart are
        ignored. In-flight batches carry on."""
        change = live_settings(self.settings, new)
        effective = self.settings = change.settings
        self.policies.configure(effective.sampling, effective.spans)
        for p in self.pipelines:
            p.reconfigure(self._pipeline_settings())
        self.quota.reconfigure(effective.spool)
        if self.watcher is not None:
            self.watcher.throttle_s = _throttle_s(effective)
        set_level(effective.logging.level)
        return change

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain and return."""
        s = self.settings
        s.spool.dir.mkdir(parents=True, exist_ok=True)
        s.spool.state_dir.mkdir(parents=True, exist_ok=True)
        async with AsyncExitStack() as stack:
            stack.callback(self.notifier.close)
            self.read = await self._open_read_side(stack)
            sinks = await self._open_sinks(stack)
            watcher = self.watcher = SpoolWatcher(s.spool, self.clock,
                                                  throttle_s=_throttle_s(s))
            for sink in sinks:
                self.pipelines.append(self._pipeline(sink, watcher))
            pipelines = self.pipelines
            if len(pipelines) > 1:  # a line read by all of them is parsed once
                shared = SharedParses(len(pipelines))
                for p in pipelines:
                    p.shared = shared
            for p in pipelines:
                stack.callback(p.reader.close)
                stack.callback(p.quarantine.close)
            if s.http.enabled:
                from sidecar.health.http import HttpServer, readiness_check

                self.http = await stack.enter_async_context(HttpServer(
                    s.http, self.metrics.render, readiness_check(s.spool, self.sink_stats,
                                                          health=self.monitor.explain),
                    status=self.status_report))
                if self.read is not None:
                    self.http.set_stats_handler(self.read.stats_http)
            if s.receivers.enabled:  # agents' HTTP writes, appended to the spool
                from sidecar.receivers.otlp import parse_otlp
                from sidecar.receivers.server import ReceiverServer

                self.receivers = await stack.enter_async_context(
                    ReceiverServer(s.receivers, s.spool.dir, self.quota.stats, otlp=parse_otlp))
            log.info("app.started", spool_dir=str(s.spool.dir), state_dir=str(s.spool.state_dir),
                     sinks=[p.sink.name for p in pipelines], **{
                         name: section.target() if section.enabled else None
                         for name, section in sink_sections(s).items()})
            await self._supervise(stop, sinks, watcher, self._reporter(stack))

    def _reporter(self, stack: AsyncExitStack) -> HealthReporter | None:
        """Health spans go through the spool, like any agent's."""
        if not self.settings.health.enabled:
            return None
        from sidecar.client.writer import SpoolWriter

        writer = SpoolWriter(self.settings.spool.dir, "span-sidecar")
        stack.callback(writer.close)
        def write(span: dict[str, Any]) -> None:
            if not writer.write(span):
                log.warning("health.span.dropped", reason=writer.stats().last_error)

        return HealthReporter(self.settings.health, self.monitor, self.sink_stats,
                              self.spool_stats, write, self.clock, policies=self.policies.stats,
                              quota=self.quota.stats)

    async def _supervise(self, stop: asyncio.Event, sinks: list[Sink], watcher: SpoolWatcher,
                         reporter: HealthReporter | None) -> None:
        s = self.settings
        background = asyncio.Event()
        janitor = Janitor([p.reader.positions for p in self.pipelines], s.spool, self.clock,
                          enabled=[p.sink.name for p in self.pipelines])
        async with asyncio.TaskGroup() as tg:
            probes = [tg.create_task(_probe(sink)) for sink in sinks]
            tg.create_task(watcher.run(background))
            tg.create_task(janitor.run(background))
            tg.create_task(self.notifier.run_watchdog(background))
            tg.create_task(every(self.clock, s.health.evaluate_interval_s, background,
                                 self.evaluate))
            tg.create_task(self.progress.run(background))
            tg.create_task(self.quota.run(background))
            tg.create_task(self.faults.run(background))
            if self.http is not None:
                tg.create_task(self.http.run(background))
            if reporter is not None:
                tg.create_task(reporter.run(background))
            if self.read is not None:
                tg.create_task(self.read.run(background))
            # The pipelines stop (and drain) once the receiver answers no more:
            # every record it answered is then in the drain's snapshot.
            ship_until = asyncio.Event()
            tasks = [tg.create_task(p.run(ship_until)) for p in self.pipelines]
            self.started.set()
            self.notifier.ready()
            self.notifier.status(f"shipping to {', '.join(p.sink.name for p in self.pipelines)}")
            await stop.wait()
            self.notifier.stopping()
            if self.receivers is not None:
                await self.receivers.close()
            ship_until.set()
            report = await self._drain(tasks)
            for probe in probes:
                probe.cancel()
            background.set()
        log.info("app.stopped", drained=report.drained)

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> DrainReport:
        """Let every pipeline ship what the spool holds at the stop, within the
        drain timeout; log what each sink was left (``app.drain.finished``)."""
        timeout = self.settings.shutdown.drain_timeout_s
        log.info("app.drain.started", timeout_s=timeout)
        t0 = self.clock.monotonic()
        if not await drain(tasks, timeout, CANCEL_GRACE_S):
            log.warning("app.drain.timed_out", note="checkpoints trail what was stored")
        left = tuple(p.drain_left(cut=task.cancelled() or not task.done())
                     for p, task in zip(self.pipelines, tasks, strict=True))
        report = self.drain_report = DrainReport(left, self.clock.monotonic() - t0)
        fields = report.fields()
        level = "info" if not fields["left"] else "warning" if report.drained else "error"
        getattr(log, level)("app.drain.finished", **fields)
        return report

    def status_report(self) -> dict[str, Any]:
        """``GET /status``: who runs, and each sink's snapshot and catch-up pace."""
        return {"pid": os.getpid(), "version": __version__,
                "health": self.monitor.status.status,
                "health_reasons": self.monitor.explain()["reasons"], **self.progress.report()}

    def evaluate(self) -> None:
        """The health verdict, on its own schedule (health spans or not)."""
        self.monitor.evaluate(self.sink_stats())


def _throttle_s(settings: Settings) -> float:
    """The longest the readers wait for writes that go on (``spool/watcher.py``):
    a quarter of a batch's wait, at most ``THROTTLE_S``."""
    return min(THROTTLE_S, settings.batch.max_wait_ms / 4000)


async def _probe(sink: Sink) -> None:
    """Reach each backend once at start (Postgres connects and migrates here)."""
    reachable = await sink.check()
    log.info("sink.check.finished", sink=sink.name, reachable=reachable)
