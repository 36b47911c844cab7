"""Batches flush on size or on time and carry, per file, the position they reach."""

from __future__ import annotations

import pytest

from sidecar.pipeline.batching import Batcher
from sidecar.records import SpanRecord, parse_line
from tests.core.helpers import dumps, fake_file, fake_line, span


def record(i: int = 0) -> SpanRecord:
    parsed = parse_line(dumps(span(i)))
    assert isinstance(parsed, SpanRecord)
    return parsed


def test_a_batch_is_full_at_max_records() -> None:
    batcher, f = Batcher(max_records=3, max_wait_s=1.0), fake_file(1)
    for i in range(2):
        batcher.add(fake_line(f, i * 10), record(i), now=0.0)
        assert not batcher.full
    batcher.add(fake_line(f, 20), record(2), now=0.0)
    assert batcher.full
    batch = batcher.take()
    assert len(batch) == 3 and not batcher.full and batcher.time_left(0.0) is None


def test_a_batch_is_due_max_wait_after_its_first_line() -> None:
    batcher, f = Batcher(max_records=100, max_wait_s=1.0), fake_file(1)
    assert batcher.time_left(50.0) is None  # nothing pending: no timer
    batcher.add(fake_line(f, 0), record(), now=100.0)
    batcher.add(fake_line(f, 10), record(1), now=100.9)  # later lines do not restart it
    assert batcher.time_left(100.25) == pytest.approx(0.75)
    assert batcher.time_left(101.0) == 0.0
    assert batcher.time_left(500.0) == 0.0
    batcher.take()
    batcher.add(fake_line(f, 20), record(2), now=200.0)
    assert batcher.time_left(200.0) == pytest.approx(1.0)  # a new batch, a new timer


def test_a_batch_keeps_the_last_position_of_each_file() -> None:
    batcher, a, b = Batcher(100, 1.0), fake_file(1, "a.jsonl"), fake_file(2, "b.jsonl")
    lines = [fake_line(a, 0), fake_line(b, 0), fake_line(a, 3), fake_line(b, 3), fake_line(b, 6)]
    for i, line in enumerate(lines):
        batcher.add(line, record(i), now=0.0)
    batch = batcher.take()
    assert batch.ends == {a.key: (a, 0, 6), b.key: (b, 0, 9)}
    assert batch.lines == lines and len(batch.records) == 5


def test_a_quarantined_line_only_advances_its_file_position() -> None:
    batcher, f = Batcher(max_records=2, max_wait_s=1.0), fake_file(1)
    good0, bad, good1 = fake_line(f, 0), fake_line(f, 3, b"nope"), fake_line(f, 9)
    batcher.add(good0, record(0), now=0.0)
    batcher.add(bad, None, now=0.0)
    assert not batcher.full  # quarantined lines do not fill a batch
    batcher.add(good1, record(1), now=0.0)
    batch = batcher.take()
    assert batch.lines == [good0, good1] and len(batch.records) == 2  # lines[i] holds records[i]
    assert batch.ends[f.key] == (f, 0, good1.end)


def test_a_batch_of_only_quarantined_lines_is_still_flushed_on_time() -> None:
    """Its positions must reach the checkpoint, or the bad lines are read forever."""
    batcher, f = Batcher(max_records=10, max_wait_s=0.5), fake_file(1)
    for i in range(1000):
        batcher.add(fake_line(f, i * 3, b"x"), None, now=5.0)
    assert not batcher.full and batcher.time_left(5.5) == 0.0
    batch = batcher.take()
    assert not batch.empty and len(batch) == 0 and not batch.lines
    assert batch.ends[f.key][2] == 999 * 3 + 2


def test_positions_carry_the_generation_of_their_lines() -> None:
    batcher, f = Batcher(10, 1.0), fake_file(1)
    batcher.add(fake_line(f, 0, gen=0), record(0), now=0.0)
    batcher.add(fake_line(f, 0, gen=1), record(1), now=0.0)  # the file was truncated
    assert batcher.take().ends[f.key] == (f, 1, 3)


def test_a_batch_is_full_at_max_bytes_whatever_its_record_count() -> None:
    """Big spans fill a batch by bytes long before max_records: memory stays bounded."""
    batcher, f = Batcher(max_records=5000, max_wait_s=1.0, max_bytes=3000), fake_file(1)
    raw = b"x" * 1000
    batcher.add(fake_line(f, 0, raw), record(0), now=0.0)
    batcher.add(fake_line(f, 1001, raw), record(1), now=0.0)
    assert not batcher.full
    batcher.add(fake_line(f, 2002, raw), record(2), now=0.0)
    assert batcher.full and batcher.take().bytes == 3000
