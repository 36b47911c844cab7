"""Lines parsed once for two sinks' pipelines: what is shared, when, and what never is."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import sidecar.pipeline.sink_pipeline as sink_pipeline
from sidecar.clock import FakeClock
from sidecar.config.settings import Settings
from sidecar.pipeline.shared_parse import Decided, SharedParses
from sidecar.records import Record, SpanRecord, parse_line
from sidecar.spool.files import Line, TrackedFile
from tests.core.helpers import span, stage_of
from tests.core.test_pipeline import FakeSink, Harness, StreamingFakeSink, ids

SECRET = "AKIAIOSFODNN7EXAMPLE"


def _line(offset: int, raw: bytes, ino: int = 7) -> Line:
    return Line(TrackedFile(dev=1, ino=ino, fd=-1, path="a.jsonl", read_pos=0, acked=0),
                0, offset, offset + len(raw) + 1, raw)


def _decided(raw: bytes, policies: Any = None) -> Decided:
    parsed = parse_line(raw)
    return Decided(raw, policies, parsed, parsed, None, 0)


def test_an_entry_goes_once_every_other_pipeline_took_it() -> None:
    raw = json.dumps(span(0)).encode()
    shared = SharedParses(readers=3)
    shared.put(_line(0, raw), _decided(raw))
    assert shared.holds(_line(0, raw)) and not shared.holds(_line(0, raw, ino=8))
    first, second = shared.take(_line(0, raw), None), shared.take(_line(0, raw), None)
    assert first is not None and first is second
    assert shared.take(_line(0, raw), None) is None and len(shared) == 0
    lone = SharedParses(readers=1)  # one sink: nothing is kept for nobody
    lone.put(_line(0, raw), _decided(raw))
    assert len(lone) == 0


def test_other_bytes_or_other_policies_at_the_same_place_are_not_taken() -> None:
    """A file truncated and written again holds other bytes at an offset; a
    reload compiles new policies: either way the taker decides for itself."""
    raw, other = json.dumps(span(0)).encode(), json.dumps(span(1)).encode()
    shared = SharedParses(readers=2)
    shared.put(_line(0, raw), _decided(raw))
    assert shared.take(_line(0, other), None) is None
    assert len(shared) == 0  # the stale entry is gone
    old, new = stage_of(Settings()).policies, stage_of(Settings()).policies
    shared.put(_line(0, raw, ino=8), _decided(raw, old))
    assert shared.take(_line(0, raw, ino=8), new) is None
    shared.put(_line(0, raw, ino=9), _decided(raw, old))
    assert shared.take(_line(0, raw, ino=9), old) is not None


def test_a_pipeline_behind_the_one_that_left_a_line_leaves_nothing() -> None:
    """Once a line was left here, a pipeline deciding an earlier line of that
    file (its entry taken, dropped or stale) is behind: the other one read
    past it, so nothing it decides there is kept. A truncated file (a new
    generation) starts again."""
    raws = [json.dumps(span(i)).encode() for i in range(3)]
    at = [0, len(raws[0]) + 1, len(raws[0]) + len(raws[1]) + 2]
    shared = SharedParses(readers=2)
    shared.put(_line(at[1], raws[1]), _decided(raws[1]))
    shared.put(_line(at[0], raws[0]), _decided(raws[0]))  # behind: not kept
    assert not shared.holds(_line(at[0], raws[0])) and len(shared) == 1
    shared.put(_line(at[2], raws[2]), _decided(raws[2]))  # ahead: kept
    assert len(shared) == 2
    truncated = _line(at[0], raws[0])
    truncated.gen = 1
    shared.put(truncated, _decided(raws[0]))
    assert shared.holds(truncated) and len(shared) == 3


def test_the_entries_are_bounded_the_oldest_going_first() -> None:
    shared = SharedParses(readers=2, capacity=4)
    raws = [json.dumps(span(i)).encode() for i in range(9)]
    offset = 0
    for raw in raws:
        shared.put(_line(offset, raw), _decided(raw))
        offset += len(raw) + 1
    assert len(shared) == 4 and shared.dropped == 5
    assert not shared.holds(_line(0, raws[0]))
    assert shared.holds(_line(offset - len(raws[-1]) - 1, raws[-1]))


def _pair(tmp_path: Path, capacity: int = 1024, counting: str = "a",
          **kw: Any) -> tuple[Harness, Harness, SharedParses]:
    """Two sinks' pipelines on one spool and one clock, sharing their parses
    and one policy stage (``counting`` is the one that counts, as the app's first)."""
    clock = FakeClock()
    a = Harness(tmp_path / "a", FakeSink(), clock=clock, **kw)
    (tmp_path / "b").mkdir()
    b = Harness(tmp_path / "b", StreamingFakeSink(), clock=clock, spool_dir=a.spool_dir, **kw)
    stage = stage_of(Settings())
    shared = SharedParses(2, capacity)
    for h in (a, b):
        h.pipeline.policies, h.pipeline.shared = stage, shared
        h.pipeline.counts_policies = (h is a) == (counting == "a")
    return a, b, shared


def _write(a: Harness, b: Harness, records: list[dict[str, Any]]) -> None:
    a.write(records)
    b.pipeline.spool.changed.set()


def _counting_parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    parsed: list[bytes] = []

    def counted(raw: bytes) -> Any:
        parsed.append(raw)
        return parse_line(raw)

    monkeypatch.setattr(sink_pipeline, "parse_line", counted)
    return parsed


def _both_hold(a: Harness, b: Harness, n: int) -> bool:
    return len(a.sink.stored) >= n and len(b.sink.stored) >= n


def _masked(records: list[Record]) -> list[int]:
    return [i for i, r in enumerate(records) if isinstance(r, SpanRecord)
            and r.input is not None and json.loads(bytes(r.input)).get("key") == "[REDACTED]"]


@pytest.mark.parametrize("counting", ["a", "b"])
async def test_two_sinks_reading_together_parse_each_line_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counting: str) -> None:
    """Both sinks get every record, masked alike; each line is parsed once,
    and what the policy stage did is counted once, whichever pipeline counts."""
    parsed = _counting_parses(monkeypatch)
    a, b, shared = _pair(tmp_path, counting=counting)
    planted = {3, 10, 11, 29}
    records = [span(i, input={"key": SECRET} if i in planted else {"n": i}) for i in range(30)]
    a.start()
    b.start()
    for k in range(0, 30, 5):  # a trickle: both readers take each write together
        _write(a, b, records[k:k + 5])
        await a.until(partial(_both_hold, a, b, k + 5))
    await a.finish()
    await b.finish()
    assert ids(a.sink.stored) == ids(b.sink.stored) == [r["id"] for r in records]
    assert _masked(a.sink.stored) == _masked(b.sink.stored) == sorted(planted)
    assert len(parsed) == 30 and shared.taken == 30 and len(shared) == 0
    stage = a.pipeline.policies
    assert stage is not None and dict(stage.stats().redactions) == {"aws_access_key_id": 4}


async def test_a_sink_far_behind_parses_for_itself_and_misses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other sink's entries are bounded: a reader held back (its sink
    stalls) finds the oldest gone and parses them again, and still counts
    each line once (it is the counting one here)."""
    parsed = _counting_parses(monkeypatch)
    a, b, shared = _pair(tmp_path, capacity=8, counting="a")
    a.sink.gate = gate = asyncio.Event()
    planted = {0, 17, 44, 59}
    records = [span(i, input={"key": SECRET} if i in planted else {"n": i}) for i in range(60)]
    a.start()
    b.start()
    _write(a, b, records)
    await a.until(lambda: len(b.sink.stored) == 60)
    assert len(a.sink.stored) == 0  # held back: its reader stopped a batch or two in
    gate.set()
    await a.until(lambda: len(a.sink.stored) == 60)
    await a.finish()
    await b.finish()
    assert ids(a.sink.stored) == ids(b.sink.stored) == [r["id"] for r in records]
    assert _masked(a.sink.stored) == _masked(b.sink.stored) == sorted(planted)
    assert shared.dropped > 0 and 60 < len(parsed) < 120
    stage = a.pipeline.policies
    assert stage is not None and dict(stage.stats().redactions) == {"aws_access_key_id": 4}


async def test_a_line_decided_before_a_reload_is_decided_again_and_gated(
        tmp_path: Path) -> None:
    """The other pipeline decided a line with the policies before a reload:
    the slice's search left that line out (it was held), so when its entry
    turns out stale the line is gated on its own, with the new policies."""
    a, b, shared = _pair(tmp_path)
    records = [span(i, input={"t": "TCK-123456"} if i == 2 else {"n": i}) for i in range(5)]
    a.start()
    _write(a, b, records)
    await a.until(lambda: len(a.sink.stored) == 5)
    assert len(shared) == 5 and _masked(a.sink.stored) == []
    new = Settings(spans={"redaction": {"patterns": [{"name": "ticket", "regex": "TCK-[0-9]{6}"}]}})
    stage = b.pipeline.policies
    assert stage is not None
    stage.configure(new.sampling, new.spans)
    b.start()
    await a.until(lambda: len(b.sink.stored) == 5)
    await a.finish()
    await b.finish()
    inputs = [json.loads(bytes(r.input)) for r in b.sink.stored
              if isinstance(r, SpanRecord) and r.input is not None]
    assert inputs[2] == {"t": "[REDACTED]"} and inputs[1] == {"n": 1}
    # none taken, and b left none of its own: a read past them already
    assert shared.taken == 0 and len(shared) == 0


async def test_a_bulk_read_shares_nothing(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of STREAM_FROM lines or more (a backlog) decides for itself: one
    reader leads the other by far more lines than are kept, so sharing there
    only cost instructions."""
    parsed = _counting_parses(monkeypatch)
    a, b, shared = _pair(tmp_path, max_records=1000)
    n = sink_pipeline.STREAM_FROM + 50
    records = [span(i) for i in range(n)]
    _write(a, b, records)
    a.start()
    b.start()
    await a.until(partial(_both_hold, a, b, n))
    await a.finish()
    await b.finish()
    assert ids(a.sink.stored) == ids(b.sink.stored) == [r["id"] for r in records]
    assert len(parsed) == 2 * n and len(shared) == 0 and shared.taken == 0


async def test_a_bad_line_read_together_is_quarantined_by_each_sink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused line's decision is shared too: parsed once, it goes to each
    sink's own quarantine with the same reason, and what follows ships."""
    parsed = _counting_parses(monkeypatch)
    a, b, shared = _pair(tmp_path)
    a.start()
    b.start()
    a.write([span(0), b'{"kind": "span", "id": "not-a-uuid"}\n', span(2)])
    b.pipeline.spool.changed.set()
    await a.until(partial(_both_hold, a, b, 2))
    await a.until(lambda: bool(a.quarantined()) and bool(b.quarantined()))
    await a.finish()
    await b.finish()
    assert ids(a.sink.stored) == ids(b.sink.stored) and len(a.sink.stored) == 2
    reasons = [[e["reason"] for e in h.quarantined()] for h in (a, b)]
    assert reasons[0] == reasons[1] and len(reasons[0]) == 1
    assert len(parsed) == 3 and shared.taken == 3
