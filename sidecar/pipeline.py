"""One sink's pipeline: tail -> parse -> batch -> send -> ack -> checkpoint.

Two tasks joined by a small bounded queue: the producer reads and parses
(it blocks when the queue is full, which means: stop reading the spool), the
consumer delivers one batch at a time, retrying under the breaker and
backoff, and moves the checkpoint only after the sink acknowledged. While
the consumer waits on the database, the producer parses the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import structlog

from sidecar.batching import Batch, Batcher
from sidecar.breaker import Backoff, CircuitBreaker
from sidecar.clock import Clock
from sidecar.records import Rejected, parse_line
from sidecar.settings import BatchSettings, BreakerSettings, RetrySettings
from sidecar.sinks.base import Delivered, PartlyRejected, Retry, Sink
from sidecar.spool.checkpoints import CheckpointStore
from sidecar.spool.quarantine import Quarantine
from sidecar.spool.tailer import Line, SpoolReader
from sidecar.stats import SinkStats

log = structlog.get_logger("sidecar.pipeline")

Observe = Callable[[str, float], None]
YIELD_EVERY = 200
SEND_OP = {"postgres": "postgres_write", "opik": "opik_request"}


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    batch: BatchSettings
    breaker: BreakerSettings
    retry: RetrySettings
    max_line_bytes: int


def _no_observe(op: str, seconds: float) -> None:
    return None


class SinkPipeline:
    def __init__(self, sink: Sink, reader: SpoolReader, store: CheckpointStore,
                 quarantine: Quarantine, settings: PipelineSettings, changed: asyncio.Event,
                 clock: Clock, observe: Observe = _no_observe) -> None:
        self.sink, self.reader, self.store, self.quarantine = sink, reader, store, quarantine
        self.settings, self.changed, self.clock, self.observe = settings, changed, clock, observe
        self.breaker = CircuitBreaker(settings.breaker, sink.name)
        r = settings.retry
        self.backoff = Backoff(r.initial_backoff_s, r.max_backoff_s, r.multiplier)
        # A sink may take larger batches than the default (Postgres: thousands).
        max_records = sink.max_batch_records or settings.batch.max_records
        self.batcher = Batcher(max_records, settings.batch.max_wait_ms / 1000,
                               settings.batch.max_bytes)
        # A sink that can take records while a batch fills (Postgres COPY)
        # gets it early, so the database works while we parse.
        self.streaming = hasattr(sink, "send_stream")
        self._send_op = SEND_OP.get(sink.name, f"{sink.name}_send")
        self.read_total = self.shipped_total = self.quarantined_total = 0
        self.batches_total = self.failed_total = self.limited_total = 0
        self._behind_since: float | None = None
        self._recorded_state = ""

    async def run(self, stop: asyncio.Event) -> None:
        """Ship until ``stop`` is set, then deliver what was read and return."""
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(self.settings.batch.queue_batches)
        self._record_breaker()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._produce(stop, queue))
            tg.create_task(self._consume(queue))

    # -- producer ------------------------------------------------------------
    async def _produce(self, stop: asyncio.Event, queue: asyncio.Queue[Batch | None]) -> None:
        self.changed.set()
        budget = max(self.batcher.max_records, 256)
        while not stop.is_set():
            if self.changed.is_set():
                self.changed.clear()
                self.reader.scan()
            lines = await self.reader.read(budget, self.settings.batch.max_bytes)
            for n, line in enumerate(lines, 1):
                await self._add(line, queue)
                if self.batcher.full:
                    await self._hand_over(queue)
                elif self.streaming and n % YIELD_EVERY == 0:
                    # Let the consumer stream what is parsed and handle the
                    # database's answers: that keeps Postgres busy while we parse.
                    # (Not for other sinks: interleaving their request buffers
                    # with the next batch's records fragmented the heap, +70 MB.)
                    self.batcher.current.grown.set()
                    await asyncio.sleep(0)
            self.batcher.current.grown.set()
            left = self.batcher.time_left(self.clock.monotonic())
            if left == 0.0:
                await self._hand_over(queue)
            elif not lines:
                await self._idle(stop, left)
        if self.batcher.time_left(0.0) is not None:
            await self._hand_over(queue)
        await queue.put(None)

    async def _add(self, line: Line, queue: asyncio.Queue[Batch | None]) -> None:
        """Parse one line into the pending batch; a streaming sink gets the
        batch as soon as it has its first line (this is where reading blocks)."""
        fresh = self.batcher.current.empty
        self._ingest(line)
        if fresh and self.streaming and not self.batcher.current.empty:
            await queue.put(self.batcher.current)

    async def _hand_over(self, queue: asyncio.Queue[Batch | None]) -> None:
        batch = self.batcher.take()
        batch.sealed_at = self.clock.monotonic()
        if not self.streaming:
            await queue.put(batch)

    async def _idle(self, stop: asyncio.Event, wait_s: float | None) -> None:
        if self.reader.lag_bytes() == 0 and not self.batcher.time_left(0.0):
            self._behind_since = None
        waiters = [asyncio.ensure_future(self.changed.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _ingest(self, line: Line) -> None:
        self.read_total += 1
        if self._behind_since is None:
            self._behind_since = self.clock.wall()
        if line.too_long:
            result: object = Rejected(
                f"line exceeds spans.max_line_bytes ({self.settings.max_line_bytes} bytes): "
                f"{line.too_long} bytes")
        elif line.unfinished:
            result = Rejected("unfinished last line of a .done file (no newline)")
        else:
            result = parse_line(line.raw)
        now = self.clock.monotonic()
        if isinstance(result, Rejected):
            self.quarantine.put(line.raw, line.file.path, line.offset, result.reason,
                                size=line.too_long or None)
            self.quarantined_total += 1
            self.batcher.add(line, None, now)
        else:
            self.batcher.add(line, result, now)  # type: ignore[arg-type]

    # -- consumer ------------------------------------------------------------
    async def _consume(self, queue: asyncio.Queue[Batch | None]) -> None:
        while (batch := await queue.get()) is not None:
            started = self.clock.monotonic()
            if not await self._stream(batch):
                rejects = await self._deliver(batch)
                self._commit(batch, rejects)
            self.observe("batch_flush", self.clock.monotonic() - started)

    async def _stream(self, batch: Batch) -> bool:
        """Send a batch while it fills (one transaction); True when delivered.

        Anything but a clean delivery falls back to the ordinary path with
        the sealed batch, which retries under the breaker: the streamed
        transaction was rolled back, and writes are idempotent anyway.
        """
        send_stream = getattr(self.sink, "send_stream", None)
        if send_stream is None or self.breaker.state != "closed":
            await batch.sealed.wait()
            return False
        try:
            outcome = await send_stream(batch.stream())
        except Exception as exc:  # a sink bug must not kill the pipeline
            log.exception("sink.send.crashed", sink=self.sink.name, error_type=type(exc).__name__)
            outcome = Retry(f"{type(exc).__name__}: {exc}")
        await batch.sealed.wait()
        if not isinstance(outcome, Delivered):
            return False
        self.observe(self._send_op, max(0.0, self.clock.monotonic() - batch.sealed_at))
        self.breaker.record_success()
        self._record_breaker()
        self._commit(batch, {})
        return True

    async def _deliver(self, batch: Batch) -> dict[int, str]:
        attempt = 0
        while batch.records:
            wait = self.breaker.wait_time(self.clock.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.breaker.allow(self.clock.monotonic())
            t0 = self.clock.monotonic()
            outcome = await self._send(batch)
            self.observe(self._send_op, self.clock.monotonic() - t0)
            if isinstance(outcome, Delivered | PartlyRejected):
                self.breaker.record_success()
                self._record_breaker()
                return outcome.reasons if isinstance(outcome, PartlyRejected) else {}
            delay = self._after_retry(outcome, attempt, len(batch))
            self._record_breaker()
            await asyncio.sleep(delay)
            attempt += 1
        return {}

    async def _send(self, batch: Batch) -> Delivered | PartlyRejected | Retry:
        try:
            return await self.sink.send(batch.records)
        except Exception as exc:  # a sink bug must not kill the pipeline
            log.exception("sink.send.crashed", sink=self.sink.name, error_type=type(exc).__name__)
            return Retry(f"{type(exc).__name__}: {exc}")

    def _after_retry(self, outcome: Retry, attempt: int, size: int) -> float:
        self.failed_total += 1
        if outcome.failure:
            self.breaker.record_failure(self.clock.monotonic())
            delay = max(self.backoff.delay(attempt), outcome.after_s or 0.0)
        else:
            self.limited_total += 1
            delay = outcome.after_s if outcome.after_s is not None else self.backoff.delay(attempt)
        log.warning("sink.batch.failed", sink=self.sink.name, reason=outcome.reason[:300],
                    records=size, attempt=attempt + 1, retry_in_s=round(delay, 3),
                    breaker=self.breaker.state, backpressure=not outcome.failure)
        return delay

    def _commit(self, batch: Batch, rejects: dict[int, str]) -> None:
        for index, reason in sorted(rejects.items()):
            line = batch.lines[index]
            self.quarantine.put(line.raw, line.file.path, line.offset,
                                f"rejected by {self.sink.name}: {reason}")
        self.quarantine.sync()
        for f, gen, end in batch.ends.values():
            self.reader.ack(f, gen, end)
        self.store.save(self.reader.marks())
        self.quarantined_total += len(rejects)
        self.shipped_total += len(batch.records) - len(rejects)
        self.batches_total += 1
        log.debug("sink.batch.shipped", sink=self.sink.name, records=len(batch.records),
                  rejected=len(rejects))

    def _record_breaker(self) -> None:
        """Leave the breaker state on disk for ``span-sidecar status``."""
        state = self.breaker.state
        if state == self._recorded_state:
            return
        self._recorded_state = state
        path = self.store.dir.parent / "status" / f"{self.sink.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"breaker": state, "time": self.clock.wall()}))
        os.replace(tmp, path)

    # -- reporting -----------------------------------------------------------
    def stats(self) -> SinkStats:
        lag_bytes = self.reader.lag_bytes()
        behind = self._behind_since
        lag_s = max(0.0, self.clock.wall() - behind) if behind is not None and lag_bytes else 0.0
        in_flight = self.read_total - self.shipped_total - self.quarantined_total
        return SinkStats(
            sink=self.sink.name, records_read=self.read_total, records_shipped=self.shipped_total,
            records_quarantined=self.quarantined_total, batches_shipped=self.batches_total,
            attempts_failed=self.failed_total, rate_limited_total=self.limited_total,
            lag_bytes=lag_bytes, lag_records=max(0, in_flight), lag_seconds=lag_s,
            breaker=self.breaker.stats(),
        )


async def drain(task: asyncio.Task[None], timeout_s: float) -> bool:
    """Wait for a stopping pipeline up to ``timeout_s``; cancel it after."""
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if done:
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False
