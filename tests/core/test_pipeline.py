"""SinkPipeline in-process: a fake sink, a fake clock, real files; no real sleep.

Each test names the behaviour it proves. Time moves only when every task
waits on the clock (``drive``), so a 30 s breaker timeout costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from sidecar.clock import FakeClock, yield_to_loop
from sidecar.config.settings import BatchSettings, BreakerSettings, RetrySettings
from sidecar.pipeline.sink_pipeline import (
    STREAM_FROM,
    YIELD_EVERY_BATCHED,
    PipelineSettings,
    SinkPipeline,
    SinkSpool,
)
from sidecar.records import Record, SpanRecord
from sidecar.sinks.base import Delivered, Outcome, PartlyRejected, Retry
from sidecar.spool.checkpoints import CheckpointStore
from sidecar.spool.quarantine import Quarantine
from sidecar.spool.state import StateDir
from sidecar.spool.tailer import Line, SpoolReader
from tests.clocking import drive
from tests.core.helpers import PATTERNS, span
from tests.support import append

Answer = Outcome | Exception


class FakeSink:
    """Answers from a script (then Delivered); remembers what it stored."""

    name = "fake"
    max_batch_records = 0  # the pipeline's default batch size
    batches_in_flight = 1

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.stored: list[Record] = []
        self.calls = 0
        self.gate: asyncio.Event | None = None  # when set: send waits on it
        self.sending = asyncio.Event()

    async def __aenter__(self) -> FakeSink:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def check(self) -> bool:
        return True

    async def send(self, batch: Sequence[Record]) -> Outcome:
        self.calls += 1
        self.sending.set()
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if self.answers else Delivered()
        if isinstance(answer, Exception):
            raise answer
        rejected = answer.reasons if isinstance(answer, PartlyRejected) else {}
        if not isinstance(answer, Retry):
            self.stored.extend(r for i, r in enumerate(batch) if i not in rejected)
        return answer


class StreamingFakeSink(FakeSink):
    """Takes batches while they fill; the stream answers from its own script."""

    def __init__(self, *stream_answers: Outcome) -> None:
        super().__init__()
        self.stream_answers = list(stream_answers)
        self.streamed = 0

    async def send_stream(self, records: AsyncIterator[Record]) -> Outcome:
        got = [r async for r in records]
        self.streamed += 1
        answer = self.stream_answers.pop(0) if self.stream_answers else Delivered()
        if isinstance(answer, Delivered):
            self.stored.extend(got)
        return answer


class Harness:
    """A pipeline over ``tmp_path`` with its task, clock and files."""

    def __init__(self, tmp_path: Path, sink: FakeSink, *, max_records: int = 10,
                 failure_threshold: int = 2, reset_timeout_s: float = 30.0,
                 changed: asyncio.Event | None = None, clock: FakeClock | None = None,
                 spool_dir: Path | None = None) -> None:
        """``clock`` and ``spool_dir``: another harness's, for two sinks on one spool."""
        self.clock = clock or FakeClock()
        self.spool_dir = spool_dir or tmp_path / "spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.state = StateDir(tmp_path / "state")
        self.sink = sink
        self.store = CheckpointStore(self.state, sink.name)
        reader = SpoolReader(self.spool_dir, PATTERNS, 1 << 20, 1 << 16, self.store.load(),
                             sink.name, self.clock)
        self.quarantine = Quarantine(self.state, sink.name, self.clock)
        spool = SinkSpool(reader, self.store, self.quarantine, changed or asyncio.Event(),
                          self.state)
        settings = PipelineSettings(
            BatchSettings(max_records=max_records, max_wait_ms=500),
            BreakerSettings(failure_threshold=failure_threshold, reset_timeout_s=reset_timeout_s),
            RetrySettings(initial_backoff_s=0.5, max_backoff_s=4.0), 1 << 20)
        self.observed: list[tuple[str, str]] = []
        self.pipeline = SinkPipeline(sink, spool, settings, self.clock,
                                     observe=lambda op, s, sink: self.observed.append((op, sink)))
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.file = self.spool_dir / "agent-host-1-0.jsonl"

    def write(self, records: Sequence[dict[str, Any] | bytes]) -> None:
        append(self.file, b"".join(r if isinstance(r, bytes) else orjson.dumps(r) + b"\n"
                                   for r in records))
        self.pipeline.spool.changed.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self.pipeline.run(self.stop))

    async def until(self, condition: Any) -> None:
        await drive(self.clock, condition)

    async def finish(self) -> None:
        self.stop.set()
        assert self.task is not None
        await drive(self.clock, self.task.done)
        self.task.result()
        self.quarantine.close()
        self.pipeline.reader.close()

    def checkpoint(self) -> int:
        return sum(m.offset for m in self.store.load().values())

    def quarantined(self) -> list[dict[str, Any]]:
        path = self.state.quarantine_file(self.sink.name)
        return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def ids(records: Sequence[Record]) -> list[str]:
    return [str(r.id) for r in records if isinstance(r, SpanRecord)]


async def test_every_record_is_delivered_once_and_the_checkpoint_reaches_the_end(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeSink())
    spans = [span(i) for i in range(25)]
    h.write(spans)
    h.start()
    await h.until(lambda: len(h.sink.stored) == 25)
    await h.finish()
    assert ids(h.sink.stored) == [s["id"] for s in spans]
    assert h.checkpoint() == h.file.stat().st_size
    assert ("batch_flush", "fake") in h.observed and ("sink_send", "fake") in h.observed


async def test_a_failed_stream_falls_back_to_send_and_delivers(tmp_path: Path) -> None:
    sink = StreamingFakeSink(Retry("unique violation: a re-delivery"))
    h = Harness(tmp_path, sink)
    spans = [span(i) for i in range(5)]
    h.write(spans)
    h.start()
    await h.until(lambda: len(sink.stored) == 5)
    await h.finish()
    assert sink.streamed == 1 and sink.calls == 1  # streamed, refused, then sent
    assert ids(sink.stored) == [s["id"] for s in spans]
    assert h.checkpoint() == h.file.stat().st_size


async def test_a_clean_stream_commits_without_a_second_send(tmp_path: Path) -> None:
    sink = StreamingFakeSink()
    h = Harness(tmp_path, sink)
    h.write([span(i) for i in range(7)])
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    assert sink.streamed >= 1 and sink.calls == 0 and len(sink.stored) == 7


async def test_breaker_opens_half_opens_and_closes_on_the_fake_clock(tmp_path: Path) -> None:
    """Three failures with a threshold of two: open, wait 30 s of fake time, trial, closed."""
    sink = FakeSink(Retry("503"), Retry("503"), Retry("503"))
    h = Harness(tmp_path, sink, failure_threshold=2, reset_timeout_s=30.0)
    h.write([span(0)])
    began, t0 = time.monotonic(), h.clock.monotonic()
    with capture_logs() as logs:
        h.start()
        await h.until(lambda: len(sink.stored) == 1)
        await h.finish()
    moves = [(e["old"], e["new"]) for e in logs if e["event"] == "breaker.state.changed"]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                     ("open", "half_open"), ("half_open", "closed")]
    assert h.clock.monotonic() - t0 >= 60.0  # two reset timeouts passed on the fake clock
    assert time.monotonic() - began < 2.0  # and none in real time
    assert h.state.read_status("fake")["breaker"] == "closed"
    assert h.pipeline.stats().attempts_failed == 3


async def test_backpressure_waits_without_opening_the_breaker(tmp_path: Path) -> None:
    sink = FakeSink(*[Retry("429", after_s=10.0, failure=False)] * 4)
    h = Harness(tmp_path, sink, failure_threshold=2)
    h.write([span(0)])
    t0 = h.clock.monotonic()
    h.start()
    await h.until(lambda: len(sink.stored) == 1)
    await h.finish()
    stats = h.pipeline.stats()
    assert stats.breaker.opened_total == 0 and stats.rate_limited_total == 4
    assert h.clock.monotonic() - t0 >= 40.0  # RateLimit-Reset honoured each time


async def test_a_429_moves_the_backpressure_counter_not_the_failure_counter(
        tmp_path: Path) -> None:
    """/metrics: an alert on send failures must not fire on rate limiting."""
    from prometheus_client.parser import text_string_to_metric_families

    from sidecar.health.metrics import Metrics
    from sidecar.snapshots import SpoolStats

    sink = FakeSink(Retry("429", after_s=1.0, failure=False), Retry("503"),
                    Retry("429", after_s=1.0, failure=False))
    h = Harness(tmp_path, sink, failure_threshold=5)
    h.write([span(0)])
    h.start()
    await h.until(lambda: len(sink.stored) == 1)
    await h.finish()
    metrics = Metrics(sinks=lambda: [h.pipeline.stats()], spool=lambda: SpoolStats(0, 0),
                      status=lambda: "healthy")
    got = {s.name: s.value for f in text_string_to_metric_families(metrics.render().decode())
           for s in f.samples if s.labels.get("sink") == "fake"}
    assert got["span_sidecar_send_backpressure_total"] == 2
    assert got["span_sidecar_send_failures_total"] == 1


async def test_partial_rejects_are_quarantined_and_synced_before_the_checkpoint_moves(
        tmp_path: Path) -> None:
    sink = FakeSink(PartlyRejected({1: "value too long for type"}))
    h = Harness(tmp_path, sink)
    order: list[str] = []
    real_sync, real_save = h.quarantine.sync, h.store.save
    h.quarantine.sync = lambda: (order.append("quarantine.sync"), real_sync())[1]  # type: ignore[method-assign]
    h.store.save = lambda marks: (order.append("checkpoint.save"), real_save(marks))[1]  # type: ignore[method-assign]
    spans = [span(i) for i in range(3)]
    h.write(spans)
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    assert order[:2] == ["quarantine.sync", "checkpoint.save"]
    [entry] = h.quarantined()
    assert entry["reason"] == "rejected by fake: value too long for type"
    assert orjson.loads(entry["raw"])["id"] == spans[1]["id"]
    assert ids(sink.stored) == [spans[0]["id"], spans[2]["id"]]
    stats = h.pipeline.stats()
    assert (stats.records_shipped, stats.records_quarantined) == (2, 1)


async def test_unparseable_lines_are_quarantined_and_do_not_block_the_rest(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeSink())
    good = [span(0), span(1)]
    h.write([orjson.dumps(good[0]) + b"\n", b"{not json\n", b"[1, 2]\n",
             orjson.dumps(good[1]) + b"\n"])
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    assert ids(h.sink.stored) == [g["id"] for g in good]
    reasons = [e["reason"] for e in h.quarantined()]
    assert reasons[0].startswith("invalid JSON") and reasons[1] == "not a JSON object"


async def test_a_sink_that_raises_does_not_kill_the_pipeline(tmp_path: Path) -> None:
    sink = FakeSink(RuntimeError("driver bug"))
    h = Harness(tmp_path, sink)
    h.write([span(0)])
    with capture_logs() as logs:
        h.start()
        await h.until(lambda: len(sink.stored) == 1)
        await h.finish()
    assert sink.calls == 2
    assert [e["error_type"] for e in logs if e["event"] == "sink.send.crashed"] == ["RuntimeError"]


async def test_drain_delivers_the_batch_in_flight_and_what_the_spool_holds(
        tmp_path: Path) -> None:
    """Stopped while a batch is at the sink: that batch is delivered, and so is a
    span written after the stop but before the drain's rescan (the spool as the
    drain found it); the checkpoint reaches the end of the file."""
    sink = FakeSink()
    sink.gate = asyncio.Event()
    h = Harness(tmp_path, sink)
    h.write([span(i) for i in range(4)])
    h.start()
    await h.until(sink.sending.is_set)
    h.stop.set()  # stop while the batch is at the sink
    h.write([span(9)])
    sink.gate.set()
    assert h.task is not None
    await drive(h.clock, h.task.done)
    h.task.result()
    assert len(sink.stored) == 5
    assert h.checkpoint() == h.file.stat().st_size


async def test_lag_returns_to_zero_under_steady_traffic(tmp_path: Path) -> None:
    """Lag in records, bytes and seconds falls back to zero after every batch,
    and the seconds never grow with the number of rounds."""
    h = Harness(tmp_path, FakeSink(), max_records=1000)
    h.start()
    for round_ in range(20):
        h.write([span(round_ * 10 + i) for i in range(10)])
        h.clock.advance(0.2)
        await h.until(lambda r=round_: len(h.sink.stored) == (r + 1) * 10)  # type: ignore[misc]
        stats = h.pipeline.stats()
        assert (stats.lag_records, stats.lag_bytes, stats.lag_seconds) == (0, 0, 0.0)
        h.clock.advance(5.0)  # time passes between bursts: it must not count as lag
    h.write([span(999)])
    for _ in range(20):  # the wake-up: a rescan, and the batch's wait begins
        await yield_to_loop()
    h.clock.advance(0.3)  # less than max_wait: the span waits in the spool
    stats = h.pipeline.stats()
    assert stats.lag_bytes == h.file.stat().st_size - h.checkpoint() > 0
    assert stats.lag_seconds == pytest.approx(0.3)  # the pending span's age, not the run's
    await drive(h.clock, lambda: len(h.sink.stored) == 201)
    await h.finish()


@pytest.mark.parametrize("sink", [FakeSink(), StreamingFakeSink()], ids=["send", "stream"])
async def test_checkpoint_survives_a_restart_without_reshipping(tmp_path: Path,
                                                                sink: FakeSink) -> None:
    h = Harness(tmp_path, sink)
    h.write([span(i) for i in range(3)])
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    store = CheckpointStore(h.state, sink.name)
    reader = SpoolReader(h.spool_dir, PATTERNS, 1 << 20, 1 << 16, store.load(), sink.name,
                         h.clock)
    reader.scan()
    assert reader.read(100) == []  # nothing left to ship
    reader.close()


class GatedSink(FakeSink):
    """Two batches at once; the first waits for its gate, later ones answer at once."""

    batches_in_flight = 2

    def __init__(self) -> None:
        super().__init__()
        self.first_gate = asyncio.Event()
        self.sizes: list[int] = []

    async def send(self, batch: Sequence[Record]) -> Outcome:
        self.sizes.append(len(batch))
        if len(self.sizes) == 1:
            await self.first_gate.wait()
        self.stored.extend(batch)
        return Delivered()


async def test_batches_in_flight_are_committed_in_order(tmp_path: Path) -> None:
    """The second batch is acknowledged first; the checkpoint waits for the first."""
    sink = GatedSink()
    h = Harness(tmp_path, sink, max_records=5)
    h.write([span(i) for i in range(10)])
    h.start()
    await h.until(lambda: len(sink.sizes) == 2 and len(sink.stored) == 5)
    assert h.checkpoint() == 0  # batch 2 is stored, batch 1 is not: nothing moves
    assert h.pipeline.stats().records_shipped == 0
    sink.first_gate.set()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    assert sink.sizes == [5, 5] and h.pipeline.stats().records_shipped == 10


async def test_a_finished_batch_is_committed_without_waiting_for_more_input(
        tmp_path: Path) -> None:
    """With room for two batches, the one answered is settled as soon as it is
    answered, not when a next batch arrives (none will)."""
    sink = FakeSink(PartlyRejected({0: "refused"}))
    sink.batches_in_flight = 2
    h = Harness(tmp_path, sink)
    h.write([span(0), span(1)])
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    assert len(h.quarantined()) == 1 and len(sink.stored) == 1
    await h.finish()


@pytest.mark.parametrize("lines", [STREAM_FROM, STREAM_FROM - 1])
async def test_parsing_a_large_read_lets_other_tasks_run(tmp_path: Path, lines: int) -> None:
    """A batched (non-streaming) sink's producer gives the loop back every few
    lines of a large read: the other sink's stream and the probes do not wait
    behind a 1000-line read (~6 ms of parsing). A short read (a trickle's,
    ~1 ms) is parsed in one turn: more turns would only wake a cold loop."""
    h = Harness(tmp_path, FakeSink(), max_records=1000)
    h.write([span(i) for i in range(lines)])
    turns: list[int] = []

    async def other_work() -> None:
        while h.pipeline.read_total < lines:
            turns.append(h.pipeline.read_total)
            await yield_to_loop()

    other = asyncio.create_task(other_work())
    h.start()
    await h.until(lambda: len(h.sink.stored) == lines)
    await other
    await h.finish()
    # Turns taken while the producer was part-way through the read.
    midway = {n for n in turns if 0 < n < lines}
    if lines >= STREAM_FROM:
        assert len(midway) >= lines // YIELD_EVERY_BATCHED - 1
    else:
        assert midway == set()


async def test_a_pending_batch_takes_what_comes_at_its_deadline_not_at_each_wake_up(
        tmp_path: Path) -> None:
    """Caught up with a batch pending, the producer does not wake for every
    change (each wake-up rescans and reads: CPU at a trickle); at the batch's
    deadline it rescans and reads once, so a line written meanwhile, even one
    the watcher has not reported yet, still ships in that batch, on time."""
    sink = FakeSink()
    h = Harness(tmp_path, sink)  # max_wait 0.5 s
    spans = [span(i) for i in range(5)]
    h.write(spans[:1])
    h.start()
    await h.until(lambda: h.pipeline.read_total == 1)
    started = h.clock.monotonic()
    for s in spans[1:4]:
        h.clock.advance(0.1)
        h.write([s])  # and the watcher's wake-up
        for _ in range(20):
            await yield_to_loop()
        assert h.pipeline.read_total == 1
    append(h.file, orjson.dumps(spans[4]) + b"\n")  # not reported yet (the watcher's throttle)
    await h.until(lambda: sink.calls == 1)
    assert h.clock.monotonic() - started == pytest.approx(0.5)  # the batch's deadline
    assert ids(sink.stored) == [s["id"] for s in spans]
    await h.finish()
    assert sink.calls == 1 and h.checkpoint() == h.file.stat().st_size


async def test_a_trickle_is_read_once_a_batch_from_the_wake_up_that_finds_it(
        tmp_path: Path) -> None:
    """Caught up on a trickle, the wake-up that finds new bytes reads nothing
    yet: it opens the batch's wait (a rescan only, so the bytes count as lag),
    and at its end one read takes what came meanwhile and the batch goes at
    once. Nothing waits longer than ``batch.max_wait_ms`` after its wake-up."""
    sink = FakeSink()
    h = Harness(tmp_path, sink)  # max_wait 0.5 s
    reads: list[int] = []
    read = h.pipeline.reader.read

    def counted(max_lines: int, max_bytes: int = 1 << 62) -> list[Line]:
        lines = read(max_lines, max_bytes)
        reads.append(len(lines))
        return lines

    h.pipeline.reader.read = counted  # type: ignore[method-assign]
    spans = [span(i) for i in range(6)]
    h.write(spans[:2])
    h.start()  # the first read after a start is at once (it may be a backlog)
    await h.until(lambda: sink.calls == 1)
    await h.until(lambda: h.clock.sleepers == 0)  # caught up, waiting for a wake-up
    reads.clear()
    woke = h.clock.monotonic()
    h.write(spans[2:3])
    for s in spans[3:]:
        for _ in range(20):
            await yield_to_loop()
        assert h.pipeline.read_total == 2 and sum(reads) == 0  # not read at the wake-up
        assert h.pipeline.stats().lag_bytes > 0
        h.clock.advance(0.1)
        append(h.file, orjson.dumps(s) + b"\n")  # written during the wait
    await h.until(lambda: sink.calls == 2)
    assert h.clock.monotonic() - woke == pytest.approx(0.5)  # the wake-up's batch deadline
    assert ids(sink.stored) == [s["id"] for s in spans]
    assert [n for n in reads if n] == [4]  # one read took the batch's lines
    await h.finish()
    assert h.checkpoint() == h.file.stat().st_size


async def test_a_reader_cut_short_reads_on_at_its_wake_up(tmp_path: Path) -> None:
    """A read that left lines behind (a backlog: ``SpoolReader.cut_short``)
    is no trickle: the next wake-up reads at once, with no batch wait."""
    sink = FakeSink()
    h = Harness(tmp_path, sink, max_records=2)
    read = h.pipeline.reader.read

    def backlog(max_lines: int, max_bytes: int = 1 << 62) -> list[Line]:
        lines = read(max_lines, max_bytes)
        h.pipeline.reader.cut_short = True  # as a read in a backlog leaves it
        return lines

    h.pipeline.reader.read = backlog  # type: ignore[method-assign]
    h.write([span(0), span(1)])
    h.start()
    await h.until(lambda: sink.calls == 1)  # a full batch: none pending
    h.write([span(2), span(3)])
    for _ in range(50):
        await yield_to_loop()
    assert h.pipeline.read_total == 4 and h.clock.monotonic() == 1_000.0  # no time passed
    await h.until(lambda: len(sink.stored) == 4)
    await h.finish()


class _Takes(asyncio.Event):
    """The spool's "changed" event, noting whether a batch was pending at each take."""

    def __init__(self, pending: Any) -> None:
        super().__init__()
        self.pending = pending
        self.taken_with: list[float | None] = []

    def clear(self) -> None:
        self.taken_with.append(self.pending())
        super().clear()


async def test_a_reader_takes_its_wake_up_only_with_no_batch_pending(tmp_path: Path) -> None:
    """Taking the wake-up (clearing the event) asks the watcher for the next
    one, which costs it turns of the loop; a reader with a batch pending
    needs none (it rescans at the deadline anyway). So it takes its wake-up
    after the hand-over, not at the deadline's rescan, and loses nothing."""
    sink = FakeSink()
    takes = _Takes(lambda: h.pipeline.batcher.time_left(h.clock.monotonic()))
    h = Harness(tmp_path, sink, changed=takes)  # max_wait 0.5 s
    spans = [span(i) for i in range(6)]
    h.write(spans[:1])
    h.start()
    await h.until(lambda: h.pipeline.read_total == 1)
    h.write(spans[1:3])  # a wake-up while the batch is pending
    await h.until(lambda: sink.calls == 1)
    await h.until(lambda: not takes.is_set())  # taken after the hand-over
    h.write(spans[3:])  # idle: the next write is read at once
    await h.until(lambda: h.pipeline.read_total == 6)
    await h.until(lambda: len(sink.stored) == 6)
    await h.finish()
    assert ids(sink.stored) == [s["id"] for s in spans]
    assert len(takes.taken_with) >= 3 and set(takes.taken_with) == {None}


class _TimedStreamSink(StreamingFakeSink):
    """Notes on ``clock`` when each stream opened and whether its batch was still filling."""

    def __init__(self) -> None:
        super().__init__()
        self.clock: FakeClock | None = None  # the harness's, once it is built
        self.opened: list[float] = []

    async def send_stream(self, records: AsyncIterator[Record]) -> Outcome:
        assert self.clock is not None
        self.opened.append(self.clock.monotonic())
        return await super().send_stream(records)


async def test_a_trickle_goes_to_a_streaming_sink_whole_at_its_deadline(tmp_path: Path) -> None:
    """Spans that come slower than a batch fills are not streamed from the
    first line (that held a COPY open on the server for the batch's whole
    wait): the batch goes whole when it is due, every span delivered."""
    sink = _TimedStreamSink()
    h = Harness(tmp_path, sink, max_records=1000)  # max_wait 0.5 s
    sink.clock = h.clock
    spans = [span(i) for i in range(40)]
    h.write(spans[:10])
    h.start()
    await h.until(lambda: h.pipeline.read_total == 10)
    started = h.clock.monotonic()
    for i in range(10, 40, 10):
        h.clock.advance(0.1)
        h.write(spans[i:i + 10])
        for _ in range(20):
            await yield_to_loop()
        assert sink.opened == []  # nothing open while the batch waits
    await h.until(lambda: len(sink.stored) == 40)
    await h.finish()
    assert sink.opened == [pytest.approx(started + 0.5)] and sink.calls == 0
    assert ids(sink.stored) == [s["id"] for s in spans]


async def test_a_backlog_is_streamed_while_its_batch_fills(tmp_path: Path) -> None:
    """Read in bulk (a backlog, a burst), the batch goes to a streaming sink
    at its first line, before it is sealed: Postgres works while we parse."""
    sink = _TimedStreamSink()
    h = Harness(tmp_path, sink, max_records=1000)  # max_wait 0.5 s
    sink.clock = h.clock
    spans = [span(i) for i in range(300)]
    h.write(spans)
    h.start()
    for _ in range(50):
        await yield_to_loop()
    assert sink.opened == [h.clock.monotonic()]  # no time passed: opened while it fills
    await h.until(lambda: len(sink.stored) == len(spans))
    await h.finish()
    assert len(sink.opened) == 1 and ids(sink.stored) == [s["id"] for s in spans]
