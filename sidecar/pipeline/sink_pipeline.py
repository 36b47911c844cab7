"""One sink's pipeline: tail -> parse -> batch -> send -> ack -> checkpoint.

Two tasks joined by a small bounded queue: the producer reads and parses
(it blocks when the queue is full, which means: stop reading the spool), the
consumer delivers one batch at a time, retrying under the breaker and
backoff, and moves the checkpoint only after the sink acknowledged. While
the consumer waits on the sink, the producer parses the next batch. Every
wait goes through the injected clock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from sidecar.breaker import Backoff, CircuitBreaker
from sidecar.clock import Clock, yield_to_loop
from sidecar.config.settings import BatchSettings, BreakerSettings, RetrySettings
from sidecar.pipeline.batching import Batch, Batcher
from sidecar.pipeline.drain import SinkLeft, SpoolSnapshot
from sidecar.pipeline.shared_parse import Decided, SharedParses
from sidecar.policies import Policies, PolicyStage, SampledOut
from sidecar.policies.stage import Found
from sidecar.records import Record, Rejected, SpanRecord, parse_line
from sidecar.sinks.base import (
    Delivered,
    Outcome,
    PartlyRejected,
    Retry,
    Sink,
    StreamingSink,
    batches_in_flight,
)
from sidecar.snapshots import SinkStats
from sidecar.spool.checkpoints import CheckpointStore
from sidecar.spool.quarantine import Quarantine
from sidecar.spool.state import StateDir
from sidecar.spool.tailer import Line, SpoolReader

log = structlog.get_logger("sidecar.pipeline")

# (operation, seconds, sink): where the pipeline's timings go.
Observe = Callable[[str, float, str], None]
YIELD_EVERY = 200
# Lines read at once from which a streaming sink gets a batch while it fills.
STREAM_FROM = 200
# Lines parsed between two turns of the loop for a batched sink (~50 us).
YIELD_EVERY_BATCHED = 8
# Agents named in the sampled-out counters; later ones count as "other", so
# the label's cardinality is bounded and every series only ever grows.
MAX_AGENT_LABELS = 50
OTHER_AGENTS = "other"


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    batch: BatchSettings
    breaker: BreakerSettings
    retry: RetrySettings
    max_line_bytes: int


@dataclass(frozen=True, slots=True)
class SinkSpool:
    """The spool as one sink sees it: its own reader, checkpoints and quarantine,
    the event that says the spool changed, and the state directory."""

    reader: SpoolReader
    store: CheckpointStore
    quarantine: Quarantine
    changed: asyncio.Event
    state: StateDir


# A batch at the sink: when it left, and the task that answers its rejects.
InFlight = tuple[Batch, float, "asyncio.Task[dict[int, str] | None]"]


def _no_observe(op: str, seconds: float, sink: str) -> None:
    return None


class SinkPipeline:
    def __init__(self, sink: Sink, spool: SinkSpool, settings: PipelineSettings,
                 clock: Clock, observe: Observe = _no_observe,
                 policies: PolicyStage | None = None, counts_policies: bool = True) -> None:
        self.sink, self.spool, self.settings = sink, spool, settings
        self.reader, self.quarantine = spool.reader, spool.quarantine
        self.clock, self.observe = clock, observe
        # Shared by every sink's pipeline; only one of them counts what it did.
        self.policies, self.counts_policies = policies, counts_policies
        # Lines another sink's pipeline parsed as they were read (the app's, with two sinks).
        self.shared: SharedParses | None = None
        self.breaker = CircuitBreaker(settings.breaker, sink.name)
        r = settings.retry
        self.backoff = Backoff(r.initial_backoff_s, r.max_backoff_s, r.multiplier)
        # A sink may take larger batches than the default (Postgres: thousands).
        max_records = sink.max_batch_records or settings.batch.max_records
        self.batcher = Batcher(max_records, settings.batch.max_wait_ms / 1000,
                               settings.batch.max_bytes)
        # A sink that can take records while a batch fills (Postgres COPY)
        # gets it early, so the backend works while we parse.
        self.streaming: StreamingSink | None = sink if isinstance(sink, StreamingSink) else None
        self.read_total = self.shipped_total = self.quarantined_total = 0
        self.batches_total = self.failed_total = self.limited_total = 0
        self.bytes_total = 0  # of shipped lines: the catch-up rate in bytes (progress.py)
        self.sampled_out: dict[str, int] = {}
        self._recorded_state = ""
        # The drain (sidecar/pipeline/drain.py): the spool at the stop, and why this
        # sink was skipped (unreachable) if it was.
        self._stop = asyncio.Event()
        self.snapshot: SpoolSnapshot | None = None
        self.skipped: str | None = None
        self._gap = False  # a batch was left undelivered: later ones are not committed

    def reconfigure(self, settings: PipelineSettings) -> None:
        """Batch, breaker and retry settings for what happens from now on (a
        reload): the pending batch and in-flight sends carry on untouched."""
        self.settings = settings
        self.breaker.settings = settings.breaker
        r = settings.retry
        self.backoff = Backoff(r.initial_backoff_s, r.max_backoff_s, r.multiplier)
        b = self.batcher
        b.max_records = self.sink.max_batch_records or settings.batch.max_records
        b.max_wait_s, b.max_bytes = settings.batch.max_wait_ms / 1000, settings.batch.max_bytes

    async def run(self, stop: asyncio.Event) -> None:
        """Ship until ``stop`` is set, then drain: ship every complete line the
        spool holds at that moment (rescanned once) and return; a sink found
        unreachable in the drain is skipped at once (``drain_left`` says what
        it was left)."""
        self._stop = stop
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(self.settings.batch.queue_batches)
        self._record_breaker()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._produce(stop, queue))
            tg.create_task(self._consume(queue))
            tg.create_task(self._wake_on(stop))

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.spool.changed.set()  # an idle producer notices the stop at once

    # -- producer ------------------------------------------------------------
    async def _produce(self, stop: asyncio.Event, queue: asyncio.Queue[Batch | None]) -> None:
        """Read, parse and batch until ``stop``.

        Caught up with a batch pending, the producer sleeps until the batch is
        due and then rescans and reads once more, rather than waking at each of
        the watcher's wake-ups (up to four a batch): what was written meanwhile
        still joins the batch it would have joined, and nothing waits longer
        than ``batch.max_wait_ms`` after the batch's first line (before, a line
        written after the watcher's last wake-up waited for the next batch).
        Each wake-up rescans and reads for every sink and streams to Postgres:
        at 100 spans/s this took the daemon from 1.6 to 1.35 % of a core
        (tests/bench/bench_pod.py). On a trickle (the last read was short
        and left nothing behind) the wake-up that finds new bytes does not
        read them: it opens the batch's wait, and one read at its end takes
        the batch (1.27 -> 1.15 % of a core at 100 spans/s), and holds the
        wake-up through the wait (the watcher then sleeps too: 1.12 ->
        1.00 %). A backlog is read without waiting. The
        wake-up is taken (the event cleared) only with no batch pending,
        below.
        """
        self.spool.changed.set()
        trickle = False  # the last read was short and left nothing behind
        while not stop.is_set():
            pending = self.batcher.time_left(self.clock.monotonic())
            deferred = False
            if pending == 0.0:
                self.reader.scan()  # due: what was written meanwhile joins the batch
            elif pending is None and self.spool.changed.is_set():
                # The wake-up is taken (cleared) only here, with no batch
                # pending: a take tells the watcher to wake this reader again,
                # which a reader with a batch pending does not need (it
                # rescans at the deadline). Taken at each deadline too, it
                # cost the watcher three turns of the loop and a timer a
                # batch: the take, at once a wake-up for what the kernel had
                # queued, then a second take and the throttle's timer.
                self.reader.scan()  # the new bytes are lag from now on
                if trickle and self.reader.unread():
                    # A trickle is read once a batch: the wake-up that finds
                    # new bytes opens the batch's wait, and what came by its
                    # end is read then and goes at once. Read at the wake-up,
                    # the first few lines cost a read and a parse of their
                    # own, for the same deadline. The wake-up is held through
                    # the wait, as with a batch pending.
                    deferred = True
                    await self.clock.wait(stop, self.batcher.max_wait_s)
                    self.spool.changed.clear()
                    self.reader.scan()
                else:
                    # Changes the scan missed are queued in the kernel until
                    # this take, and the watcher wakes this reader for them.
                    self.spool.changed.clear()
            lines = self._read()
            trickle = len(lines) < STREAM_FROM and not self.reader.cut_short
            await self._take(lines, queue)
            left = self.batcher.time_left(self.clock.monotonic())
            if left == 0.0 or (deferred and left is not None):
                await self._hand_over(queue)
            elif lines or stop.is_set():
                continue
            elif left is None:
                await self.clock.wait(self.spool.changed, None)
            else:
                await self.clock.wait(stop, left)
        await self._read_to_snapshot(queue)
        if self.batcher.time_left(0.0) is not None:
            await self._hand_over(queue)
        await queue.put(None)

    def _read(self) -> list[Line]:
        budget = max(self.batcher.max_records, 256)
        return self.reader.read(budget, self.settings.batch.max_bytes)

    async def _read_to_snapshot(self, queue: asyncio.Queue[Batch | None]) -> None:
        """The drain's reading: rescan once, then read every complete line up to
        the sizes seen then (``SpoolSnapshot.read``); none for a sink whose
        breaker is open, which the drain skips."""
        if self.breaker.state == "open":
            self._skip("breaker open")
        snap = self.snapshot = SpoolSnapshot.take(self.reader)

        async def take(lines: list[Line]) -> None:
            await self._take(lines, queue)

        await snap.read(self.reader, self._read, take, lambda: self.skipped is not None)

    async def _take(self, lines: list[Line], queue: asyncio.Queue[Batch | None]) -> None:
        """Parse ``lines`` into the batcher, handing over each batch that fills.

        Every line passes here: what does not change from line to line is
        looked up once a call."""
        batcher = self.batcher
        streaming = self.streaming is not None
        short = len(lines) < STREAM_FROM  # a trickle's read, not a backlog's or a burst's
        # A streaming sink (Postgres) parses in 200-line slices, letting the
        # consumer stream what is parsed and handle the backend's answers:
        # that keeps Postgres busy while we parse. A batched sink (Opik)
        # parses in short slices: with both sinks on, the Postgres stream gets
        # its turns (the backend idles while we hold the loop), and so do the
        # probes. A short read (a trickle's, under ~1 ms of parsing) is one
        # slice: its turns would only be more wake-ups of a cold loop.
        every = YIELD_EVERY if streaming or short else YIELD_EVERY_BATCHED
        # Read in bulk (a backlog, a burst), a batch goes to a streaming sink
        # at its first line. Otherwise it goes whole when it is due or full:
        # streamed from its first line, a trickle of spans kept a COPY open
        # on the server for the whole of batch.max_wait_ms (~90 % of the
        # time at 100 spans a second), which through PgBouncer pinned a
        # server connection per sidecar, and with pool_size 1 kept /stats
        # waiting up to a second; whole, a second's spans take milliseconds.
        bulk = streaming and not short
        # The redaction gate runs once a slice, over its lines joined: one
        # call into RE2 a line was most of the gate's cost (Redactor.suspects).
        # Decisions are shared with the other sinks' pipelines only for a
        # read that is not bulk (a trickle, where their readers go together
        # and each runs the parse cold): in a backlog one reader leads by far
        # more lines than are kept, and sharing cost ~7 % more instructions
        # a span with both sinks (callgrind), for no hits.
        shared = self.shared if short else None
        policies = self.policies
        cleared: Policies | None = None
        suspects: set[int] = set()
        for n, line in enumerate(lines, 1):
            batch = batcher.current  # _ingest adds to it; only _hand_over replaces it
            at = (n - 1) % every  # the line's place in its slice
            if at == 0 and policies is not None:
                chunk = lines[n - 1:n - 1 + every]
                # Lines another pipeline decided already are not searched
                # (b""), and are suspects: gated on their own if, after all,
                # they must be decided here (their entry was stale).
                held = set() if shared is None else {
                    i for i, x in enumerate(chunk) if shared.holds(x)}
                cleared, suspects = None, set()
                if len(held) < len(chunk):  # all held (a trickle's second reader): no search
                    try:
                        cleared, suspects = policies.screen(
                            [b"" if i in held else x.raw for i, x in enumerate(chunk)])
                    except Exception:  # each line's own gate then, which quarantines alone
                        pass
                suspects |= held
            self._ingest(line, None if at in suspects else cleared, shared)
            if bulk and not batch.queued and batch.ends:
                # This is where reading blocks while the sink is busy.
                batch.queued = True
                await queue.put(batch)
            if batcher.full:
                await self._hand_over(queue)
            elif n % every == 0:
                if streaming:
                    batch.grown.set()
                await yield_to_loop()
        batcher.current.grown.set()

    async def _hand_over(self, queue: asyncio.Queue[Batch | None]) -> None:
        batch = self.batcher.take()
        batch.sealed_at = self.clock.monotonic()
        if not batch.queued:
            batch.queued = True
            await queue.put(batch)

    def _ingest(self, line: Line, cleared_by: Policies | None = None,
                shared: SharedParses | None = None) -> None:
        """``cleared_by``: the policies whose redaction gate cleared the line
        (``PolicyStage.screen``); ``shared``: the decisions shared with the
        other sinks' pipelines, when this read shares them."""
        self.read_total += 1
        stage = self.policies
        compiled = None if stage is None else stage.policies
        whole = not (line.too_long or line.unfinished)  # a line a parse decides
        decided = shared.take(line, compiled) if shared is not None and whole else None
        result: Record | Rejected | SampledOut
        found: Found | None = None
        if decided is not None:  # another sink's pipeline parsed it a moment ago
            parsed, result, found = decided.parsed, decided.result, decided.found
        else:
            step = "parser"
            try:
                # A line must never stop the pipeline: whatever parsing or the
                # policy stage raise for it quarantines that line, named by the
                # exception's type (its text may quote the line, so it is left out).
                result = parsed = self._parse(line)
                if stage is not None and not isinstance(parsed, Rejected):
                    step = "policy stage"
                    result, found = stage.decide(parsed, line.raw, cleared_by)
            except Exception as exc:
                result = parsed = Rejected(f"{step} failed: {type(exc).__name__}")
            if shared is not None and whole:
                shared.put(line, Decided(line.raw, compiled, parsed, result, found, 0))
        if found is not None and stage is not None and self.counts_policies:
            stage.count(found)
        now = self.clock.monotonic()
        if isinstance(result, Rejected):
            self.quarantine.put(line.raw, line.file.path, line.offset, result.reason,
                                size=line.too_long or None)
            self.quarantined_total += 1
            self.batcher.add(line, None, now)
            return
        if isinstance(result, SampledOut):
            # Acknowledged with the batch, like a quarantined line's position.
            if not isinstance(parsed, Rejected):
                self._count_sampled_out(parsed)
            self.batcher.add(line, None, now)
            return
        self.batcher.add(line, result, now)

    def _count_sampled_out(self, record: Record) -> None:
        agent = (record.agent_name if isinstance(record, SpanRecord) else None) or "unknown"
        counts = self.sampled_out
        if agent not in counts and len(counts) >= MAX_AGENT_LABELS:
            agent = OTHER_AGENTS
        counts[agent] = counts.get(agent, 0) + 1

    def _parse(self, line: Line) -> Record | Rejected:
        if line.too_long:
            return Rejected(f"line exceeds spans.max_line_bytes "
                            f"({self.settings.max_line_bytes} bytes): {line.too_long} bytes")
        if line.unfinished:
            return Rejected("unfinished last line of a .done file (no newline)")
        return parse_line(line.raw)

    # -- consumer ------------------------------------------------------------
    async def _consume(self, queue: asyncio.Queue[Batch | None]) -> None:
        """Deliver batches, up to ``sink.batches_in_flight`` at once (a sink
        whose round trips are long keeps the backend busy while the next one
        is encoded and sent), and commit them strictly in order: the
        checkpoint never passes a batch that is not acknowledged."""
        limit = 1 if self.streaming is not None else batches_in_flight(self.sink)
        in_flight: deque[InFlight] = deque()
        getter: asyncio.Future[Batch | None] | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    if len(in_flight) >= limit:
                        await self._settle(in_flight.popleft())
                        continue
                    getter = getter or asyncio.ensure_future(queue.get())
                    waits: set[asyncio.Future[Any]] = {getter}
                    if in_flight:
                        waits.add(in_flight[0][2])
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    if in_flight and in_flight[0][2].done():
                        await self._settle(in_flight.popleft())  # in order, first
                    elif getter.done():
                        batch, getter = getter.result(), None
                        if batch is None:
                            break
                        in_flight.append((batch, self.clock.monotonic(),
                                          tg.create_task(self._ship(batch))))
                while in_flight:
                    await self._settle(in_flight.popleft())
        finally:
            if getter is not None:
                getter.cancel()

    async def _ship(self, batch: Batch) -> dict[int, str] | None:
        """The sink's rejects once it has the batch; None when the drain skipped
        the sink (the batch is not delivered)."""
        if self.skipped is not None:
            await batch.sealed.wait()
            return None
        if await self._stream(batch):
            return {}
        return await self._deliver(batch)

    async def _settle(self, entry: InFlight) -> None:
        batch, started, task = entry
        rejects = await task
        if rejects is None:
            self._gap = True  # nothing after an undelivered batch may be committed
        elif not self._gap:
            await self._commit(batch, rejects)
        self.observe("batch_flush", self.clock.monotonic() - started, self.sink.name)

    async def _stream(self, batch: Batch) -> bool:
        """Send a batch while it fills (one transaction); True when delivered.

        Anything but a clean delivery falls back to the ordinary path with
        the sealed batch, which retries under the breaker: the streamed
        transaction was rolled back, and writes are idempotent anyway.
        """
        if self.streaming is None or self.breaker.state != "closed":
            await batch.sealed.wait()
            return False
        outcome = await self._guarded(self.streaming.send_stream(batch.stream()))
        await batch.sealed.wait()
        if not isinstance(outcome, Delivered):
            reason = outcome.reason if isinstance(outcome, Retry) else "partly rejected"
            log.info("sink.stream.fell_back", sink=self.sink.name, reason=reason[:300])
            return False
        self.observe("sink_send", max(0.0, self.clock.monotonic() - batch.sealed_at),
                     self.sink.name)
        self.breaker.record_success()
        self._record_breaker()
        return True

    async def _deliver(self, batch: Batch) -> dict[int, str] | None:
        attempt = 0
        while batch.records:
            if self.skipped is not None:
                return None
            wait = self.breaker.wait_time(self.clock.monotonic())
            if wait > 0:
                await self._pause(wait, "breaker open")
                continue
            self.breaker.allow(self.clock.monotonic())
            t0 = self.clock.monotonic()
            outcome = await self._guarded(self.sink.send(batch.records))
            self.observe("sink_send", self.clock.monotonic() - t0, self.sink.name)
            if isinstance(outcome, Delivered | PartlyRejected):
                self.breaker.record_success()
                self._record_breaker()
                return outcome.reasons if isinstance(outcome, PartlyRejected) else {}
            delay = self._after_retry(outcome, attempt, len(batch))
            self._record_breaker()
            await self._pause(delay, outcome.reason if outcome.failure else None)
            attempt += 1
        return {}

    async def _pause(self, seconds: float, failure: str | None) -> None:
        """Wait before the next attempt. Back-pressure (``failure`` None) is
        waited out, drain or not: the sink is there. A failing sink's wait
        ends at the stop, so the drain tries it once more at once; failing in
        the drain, it is skipped (waiting would only hold the others' exit)."""
        if failure is None:
            await self.clock.sleep(seconds)
        elif self._stop.is_set():
            self._skip(failure)
        else:
            await self.clock.wait(self._stop, seconds)

    def _skip(self, reason: str) -> None:
        if self.skipped is None:
            self.skipped = reason[:300]
            log.warning("drain.sink.skipped", sink=self.sink.name, reason=self.skipped,
                        breaker=self.breaker.state)

    async def _guarded(self, sending: Awaitable[Outcome]) -> Outcome:
        """Await a sink's answer; a sink that raises gets a Retry, not a dead pipeline."""
        try:
            return await sending
        except Exception as exc:
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

    async def _commit(self, batch: Batch, rejects: dict[int, str]) -> None:
        """Quarantine the sink's rejects durably, then move the checkpoint.
        A quarantine write held back by a full disk or the file limit is
        waited for (retried on the clock): no line is acknowledged before
        its entry is durable (sidecar/spool/faults.py)."""
        for index, reason in sorted(rejects.items()):
            line = batch.lines[index]
            self.quarantine.put(line.raw, line.file.path, line.offset,
                                f"rejected by {self.sink.name}: {reason}")
        await self.quarantine.durable()
        for f, gen, end in batch.ends.values():
            self.reader.ack(f, gen, end)
        try:
            self.spool.store.save(self.reader.marks())
        except OSError as exc:
            # The previous checkpoint is intact and only trails what was
            # stored (a restart re-ships, without duplicates); the next batch
            # tries again, so a full disk does not stop the shipping.
            log.error("checkpoint.write.failed", sink=self.sink.name, error=exc.strerror)
        self.quarantined_total += len(rejects)
        self.shipped_total += len(batch.records) - len(rejects)
        self.batches_total += 1
        self.bytes_total += batch.bytes
        log.debug("sink.batch.shipped", sink=self.sink.name, records=len(batch.records),
                  rejected=len(rejects))

    def _record_breaker(self) -> None:
        """Leave the breaker state on disk for ``span-sidecar status``."""
        state = self.breaker.state
        if state != self._recorded_state:
            self._recorded_state = state
            self.spool.state.write_status(self.sink.name,
                                          {"breaker": state, "time": self.clock.wall()})

    # -- reporting -----------------------------------------------------------
    def drain_left(self, cut: bool) -> SinkLeft:
        """What the drain left for this sink: its backlog when it was skipped as
        unreachable, or when ``cut`` (the drain timeout ended it) and it had
        not acknowledged everything the spool held at the stop."""
        if self.snapshot is None:  # cut before it rescanned: the spool as it is now
            self.snapshot = SpoolSnapshot.take(self.reader)
        return self.snapshot.verdict(self.sink.name, self.reader, self.skipped, cut)

    def stats(self) -> SinkStats:
        oldest = self.reader.oldest_unacked()
        lag_s = 0.0 if oldest is None else max(0.0, self.clock.wall() - oldest)
        sampled = sum(self.sampled_out.values())
        in_flight = self.read_total - self.shipped_total - self.quarantined_total - sampled
        return SinkStats(
            sink=self.sink.name, records_read=self.read_total, records_shipped=self.shipped_total,
            records_quarantined=self.quarantined_total, batches_shipped=self.batches_total,
            attempts_failed=self.failed_total, rate_limited_total=self.limited_total,
            lag_bytes=self.reader.lag_bytes(), lag_records=max(0, in_flight), lag_seconds=lag_s,
            oldest_unacked=oldest, breaker=self.breaker.stats(), bytes_shipped=self.bytes_total,
            records_sampled_out=sampled,
            sampled_out_by_agent=tuple(sorted(self.sampled_out.items())),
        )
