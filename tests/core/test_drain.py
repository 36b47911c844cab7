"""The drain at a stop, in-process: a fake sink, a fake clock, real files.

What the spool holds when the stop comes is shipped, even what the watcher
never reported (a file renamed to ``.done`` just before, lines appended
since the last read); a sink that cannot be reached is skipped at once with
its backlog reported; a drain cut short says what it left.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from sidecar.exit_codes import EXIT_DRAIN_INCOMPLETE
from sidecar.pipeline.drain import DrainReport, SinkLeft, SpoolSnapshot
from sidecar.records import Record
from sidecar.sinks.base import Delivered, Outcome, Retry
from sidecar.spool.tailer import Line
from tests.clocking import drive
from tests.core.helpers import make_reader, span
from tests.core.test_pipeline import FakeSink, Harness, ids
from tests.support import append


def lines_of(records: Sequence[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


async def started_and_idle(h: Harness) -> None:
    """The pipeline runs, has scanned the spool and read what it was told about."""
    h.start()
    await h.until(lambda: not h.pipeline.reader._first_scan
                  and not h.pipeline.spool.changed.is_set())


async def stopped(h: Harness) -> None:
    h.stop.set()
    assert h.task is not None
    await drive(h.clock, h.task.done)
    h.task.result()


async def test_a_file_renamed_to_done_just_before_the_stop_is_shipped(tmp_path: Path) -> None:
    """The Kubernetes order: spans written, the file renamed to .done, the stop at
    once, before any watcher event: every span ships and the checkpoint covers it."""
    h = Harness(tmp_path, FakeSink())
    await started_and_idle(h)
    spans = [span(i) for i in range(25)]
    append(h.file, lines_of(spans))  # no change event: the watcher has not seen it
    done = h.file.with_name(h.file.name + ".done")
    os.rename(h.file, done)
    await stopped(h)
    assert ids(h.sink.stored) == [s["id"] for s in spans]
    assert h.checkpoint() == done.stat().st_size
    assert h.pipeline.drain_left(cut=False) == SinkLeft("fake", None)


async def test_lines_appended_since_the_last_read_are_shipped(tmp_path: Path) -> None:
    """A file already read grows, unannounced, just before the stop."""
    h = Harness(tmp_path, FakeSink())
    first = [span(i) for i in range(3)]
    h.write(first)
    await started_and_idle(h)
    await h.until(lambda: len(h.sink.stored) == 3)
    more = [span(i) for i in range(3, 8)]
    append(h.file, lines_of(more))
    await stopped(h)
    assert ids(h.sink.stored) == [s["id"] for s in first + more]
    assert h.checkpoint() == h.file.stat().st_size


async def test_an_unfinished_last_line_of_a_live_file_does_not_hold_the_drain(
        tmp_path: Path) -> None:
    """A line without its newline in a file still being written is not a line yet:
    the drain ships the rest, ends, and owes nothing."""
    h = Harness(tmp_path, FakeSink())
    await started_and_idle(h)
    append(h.file, lines_of([span(0), span(1)]) + b'{"id": "half')
    await stopped(h)
    assert len(h.sink.stored) == 2
    assert h.pipeline.drain_left(cut=False).reason is None


class AppendingSink(FakeSink):
    """Each send appends more lines to the spool file: a writer that never stops."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    async def send(self, batch: Sequence[Record]) -> Outcome:
        append(self.path, lines_of([span(1000 + self.calls + i) for i in range(20)]))
        return await super().send(batch)


async def test_a_writer_appending_during_the_drain_cannot_hold_it(tmp_path: Path) -> None:
    """The drain reads up to the sizes seen at its rescan: it ends although every
    batch it sends brings more lines, and it has shipped all it found."""
    h = Harness(tmp_path, AppendingSink(tmp_path / "spool" / "agent-host-1-0.jsonl"))
    await started_and_idle(h)
    spans = [span(i) for i in range(30)]
    append(h.file, lines_of(spans))
    await stopped(h)
    assert {s["id"] for s in spans} <= set(ids(h.sink.stored))
    assert h.pipeline.drain_left(cut=False).reason is None


async def test_a_sink_whose_breaker_is_open_is_skipped_at_once(tmp_path: Path) -> None:
    """Breaker open at the stop: the sink is not waited on (no time passes on its
    clock), nothing is committed, and its backlog is reported."""
    sink = FakeSink(*[Retry("connection refused")] * 2)
    h = Harness(tmp_path, sink, failure_threshold=2, reset_timeout_s=30.0)
    h.write([span(i) for i in range(4)])
    h.start()
    await h.until(lambda: h.pipeline.breaker.state == "open")
    h.write([span(i) for i in range(4, 6)])
    t_stop = h.clock.monotonic()
    with capture_logs() as logs:
        await stopped(h)
    assert h.clock.monotonic() - t_stop < 1.0  # far less than the 30 s reset timeout
    assert sink.stored == [] and sink.calls == 2 and h.checkpoint() == 0
    left = h.pipeline.drain_left(cut=False)
    assert (left.reason, left.files, left.bytes) == ("unreachable", 1, h.file.stat().st_size)
    assert [e["reason"] for e in logs if e["event"] == "drain.sink.skipped"] == ["breaker open"]


async def test_a_sink_failing_in_its_backoff_gets_one_more_try_then_is_skipped(
        tmp_path: Path) -> None:
    """A stop during a backoff ends the wait: one attempt at once; when that fails
    too the sink is skipped with the failure named, checkpoint unmoved."""
    sink = FakeSink(Retry("HTTP 503"), Retry("HTTP 503"))
    h = Harness(tmp_path, sink, failure_threshold=5)
    h.write([span(0)])
    h.start()
    await h.until(lambda: sink.calls == 1 and h.clock.sleepers > 0)
    await stopped(h)
    assert sink.calls == 2 and sink.stored == [] and h.checkpoint() == 0
    left = h.pipeline.drain_left(cut=False)
    assert left.reason == "unreachable" and left.detail == "HTTP 503" and left.bytes > 0


async def test_a_sink_recovering_in_the_drain_gets_everything(tmp_path: Path) -> None:
    """Failing before the stop, delivering at the drain's first attempt: nothing left."""
    sink = FakeSink(Retry("HTTP 503"))
    h = Harness(tmp_path, sink, failure_threshold=5)
    h.write([span(i) for i in range(3)])
    h.start()
    await h.until(lambda: sink.calls == 1 and h.clock.sleepers > 0)
    await stopped(h)
    assert len(sink.stored) == 3 and h.checkpoint() == h.file.stat().st_size
    assert h.pipeline.drain_left(cut=False).reason is None


async def test_back_pressure_in_the_drain_is_waited_out(tmp_path: Path) -> None:
    """A 429 is not unreachable: the drain waits the time it names and delivers."""
    sink = FakeSink(Retry("HTTP 429", after_s=2.0, failure=False))
    h = Harness(tmp_path, sink)
    await started_and_idle(h)
    append(h.file, lines_of([span(0), span(1)]))
    await stopped(h)
    assert len(sink.stored) == 2 and h.pipeline.skipped is None


class InFlightSink(FakeSink):
    """Two batches at once; the first one sent fails (once the stop came)."""

    batches_in_flight = 2

    def __init__(self) -> None:
        super().__init__()
        self.stop = asyncio.Event()  # the pipeline's stop, once the harness has it

    async def send(self, batch: Sequence[Record]) -> Outcome:
        self.calls += 1
        if self.calls == 1:
            await self.stop.wait()
            return Retry("connection reset")
        self.stored.extend(batch)
        return Delivered()


async def test_a_batch_after_an_undelivered_one_is_not_committed(tmp_path: Path) -> None:
    """Batches are committed in order: when the drain skips the sink on the first
    batch, the second (delivered) does not move the checkpoint past the first."""
    sink = InFlightSink()
    h = Harness(tmp_path, sink, max_records=2)
    sink.stop = h.stop
    await started_and_idle(h)
    h.write([span(i) for i in range(4)])
    await h.until(lambda: sink.calls == 2)
    await stopped(h)
    assert len(sink.stored) == 2  # the second batch reached the sink
    assert h.checkpoint() == 0
    assert h.pipeline.drain_left(cut=False).reason == "unreachable"


async def test_a_drain_cut_short_reports_what_it_left(tmp_path: Path) -> None:
    """A sink that never answers: cancelled (the drain timeout), the pipeline says
    which files and how many bytes the sink was left."""
    sink = FakeSink()
    sink.gate = asyncio.Event()  # never set
    h = Harness(tmp_path, sink)
    await started_and_idle(h)
    append(h.file, lines_of([span(0), span(1)]))
    h.stop.set()
    await h.until(sink.sending.is_set)
    assert h.task is not None
    h.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await h.task
    left = h.pipeline.drain_left(cut=True)
    assert (left.reason, left.files, left.bytes) == ("timeout", 1, h.file.stat().st_size)


def test_the_exit_code_follows_the_reachable_sinks() -> None:
    """Only a timeout fails the drain; an unreachable sink's backlog is reported."""
    ok = SinkLeft("postgres", None)
    unreachable = SinkLeft("opik", "unreachable", 2, 900, "HTTP 503")
    cut = SinkLeft("postgres", "timeout", 1, 100)
    assert DrainReport((ok, unreachable)).exit_code == 0
    assert DrainReport((cut, unreachable)).exit_code == EXIT_DRAIN_INCOMPLETE != 0
    fields = DrainReport((ok, unreachable), seconds=0.1234).fields()
    assert fields == {"drained": True, "exit_code": 0, "seconds": 0.123, "left": [
        {"sink": "opik", "reason": "unreachable", "files": 2, "bytes": 900,
         "detail": "HTTP 503"}]}


@given(files=st.lists(st.tuples(st.integers(0, 40), st.binary(max_size=30).filter(
           lambda b: b"\n" not in b), st.booleans()), min_size=1, max_size=4),
       appended=st.integers(0, 5))
@settings(max_examples=60, deadline=None)
def test_the_drain_reads_every_complete_line_seen_at_its_rescan_and_ends(
        files: list[tuple[int, bytes, bool]], appended: int) -> None:
    """Any files (complete lines, maybe a partial last one, .done or not) and a
    writer appending to every file at each take: the drain's read ends, and it
    took every complete line present at the rescan, once each, in file order."""
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp)
        expected: dict[str, tuple[list[bytes], bytes]] = {}
        paths = []
        for k, (n, tail, done) in enumerate(files):
            path = spool / f"a-h-{k}-0.jsonl{'.done' if done else ''}"
            lines = [b"%d-%d" % (k, i) for i in range(n)]
            path.write_bytes(b"".join(x + b"\n" for x in lines) + tail)
            # A .done file's partial last line is handed on; a live file's may
            # be completed by the writer's next append (and then read).
            expected[str(path)] = ([*lines, tail] if done and tail else lines,
                                   b"" if done else tail)
            paths.append(path)
        taken = asyncio.run(_drain_read(spool, paths, appended))
    for path, (lines, tail) in expected.items():
        got = taken.get(path, [])
        assert got[: len(lines)] == lines
        late = got[len(lines):]
        if tail and late:
            assert late.pop(0) == tail
        assert all(x in (b"late", b"") for x in late)  # b"": the writer's b"\n"


async def _drain_read(spool: Path, paths: list[Path], appended: int) -> dict[str, list[bytes]]:
    reader = make_reader(spool, chunk=64, max_line=32)
    snap = SpoolSnapshot.take(reader)
    taken: dict[str, list[bytes]] = {}

    def read() -> list[Line]:
        return reader.read(3, 1 << 20)

    async def take(lines: list[Line]) -> None:
        for line in lines:
            taken.setdefault(line.file.path, []).append(line.raw)
        for path in paths:
            if not path.name.endswith(".done"):
                append(path, b"\n" + b"late\n" * appended)

    try:
        await asyncio.wait_for(snap.read(reader, read, take, lambda: False), 10)
    finally:
        reader.close()
    assert snap.complete
    return taken
