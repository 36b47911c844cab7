"""SpoolReader: complete lines, file identity across renames, restarts, reuse and truncation."""

from __future__ import annotations

import dataclasses
import os
import time
import tracemalloc
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sidecar.spool.checkpoints import CheckpointStore
from sidecar.spool.state import StateDir
from sidecar.spool.tailer import Line, SpoolReader
from tests.core.helpers import (
    ack_all,
    append,
    dumps,
    expected_offsets,
    make_reader,
    numbered,
    offsets,
    read_all,
    span,
)

MiB = 1 << 20


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def raws(lines: list[Line]) -> list[bytes]:
    return [line.raw + b"\n" for line in lines]


def events(logs: list[MutableMapping[str, Any]]) -> list[object]:
    return [e["event"] for e in logs]


def stop(reader: SpoolReader, state: Path) -> CheckpointStore:
    """Save the reader's checkpoint through a real store, as the pipeline does, and close it."""
    store = CheckpointStore(StateDir(state), reader.sink)
    store.save(reader.marks())
    reader.close()
    return store


def start(spool: Path, store: CheckpointStore, max_line: int = 1 << 20,
          chunk: int = 1 << 16) -> SpoolReader:
    return make_reader(spool, store.load(), max_line=max_line, chunk=chunk)


def reuse_inode(spool: Path, ino: int, name: str, data: bytes) -> Path | None:
    """Create files until the file system hands out ``ino`` again (bounded attempts)."""
    made: list[Path] = []
    try:
        for i in range(500):
            candidate = spool / f"candidate-{i}.tmp"  # not a spool name: never read
            append(candidate, data)
            made.append(candidate)
            if candidate.stat().st_ino == ino:
                made.pop()
                return candidate.rename(spool / name)
        return None
    finally:
        for path in made:
            path.unlink()


# -- complete lines only -----------------------------------------------------------------

async def test_a_half_written_line_is_returned_once_whole_never_as_two_halves(spool: Path) -> None:
    path, first, rec = spool / "a.jsonl", numbered(1), dumps(span())
    append(path, first[0] + rec[:37])
    reader = make_reader(spool)
    assert raws(await read_all(reader)) == first
    for _ in range(5):  # however often flush timers fire meanwhile
        assert await read_all(reader) == []
    append(path, rec[37:] + b"\n")
    lines = await read_all(reader)
    assert raws(lines) == [rec + b"\n"]
    assert offsets(lines) == [(len(first[0]), len(first[0]) + len(rec) + 1)]


async def test_lines_come_with_their_exact_byte_offsets(spool: Path) -> None:
    chunks = numbered(50, pad=37)
    append(spool / "a.jsonl", b"".join(chunks))
    lines = await read_all(make_reader(spool, chunk=1000))  # many chunk boundaries
    assert raws(lines) == chunks and offsets(lines) == expected_offsets(chunks)


# -- identity: rename, restart ---------------------------------------------------------------

async def test_a_rename_to_done_mid_stream_keeps_the_offset(spool: Path) -> None:
    path, first, more = spool / "w-1.jsonl", numbered(3), numbered(2, start=3)
    append(path, b"".join(first))
    reader = make_reader(spool)
    got = await read_all(reader)
    done = path.rename(spool / "w-1.jsonl.done")
    append(done, b"".join(more))
    with capture_logs() as logs:
        got2 = await read_all(reader)
    assert raws(got) == first and raws(got2) == more  # no repeat, no loss
    assert offsets(got2) == expected_offsets(more, start=len(b"".join(first)))
    assert "spool.file.renamed" in events(logs)
    ack_all(reader, got + got2)
    [mark] = reader.marks().values()
    assert mark.path == str(done) and mark.offset == done.stat().st_size


@pytest.mark.parametrize("renamed_while_stopped", [False, True])
async def test_a_restart_resumes_exactly_at_the_acked_offset(
        spool: Path, tmp_path: Path, renamed_while_stopped: bool) -> None:
    path, chunks = spool / "w-1.jsonl", numbered(10)
    append(path, b"".join(chunks))
    reader = make_reader(spool)
    got = await read_all(reader)
    ack_all(reader, got[:6])  # lines 6.. were read but never acknowledged
    store = stop(reader, tmp_path / "state")
    if renamed_while_stopped:
        path = path.rename(spool / "w-1.jsonl.done")
    more = numbered(2, start=10)
    append(path, b"".join(more))
    again = await read_all(start(spool, store))
    assert raws(again) == chunks[6:] + more
    assert offsets(again) == expected_offsets(chunks[6:] + more, start=got[5].end)


async def test_a_restart_after_everything_was_acked_reads_only_new_lines(
        spool: Path, tmp_path: Path) -> None:
    path = spool / "w-1.jsonl"
    append(path, b"".join(numbered(3)))
    reader = make_reader(spool)
    ack_all(reader, await read_all(reader))
    reader = start(spool, stop(reader, tmp_path / "state"))
    assert await read_all(reader) == []
    append(path, numbered(1, start=3)[0])
    assert raws(await read_all(reader)) == numbered(1, start=3)


async def test_two_files_with_the_same_first_bytes_are_distinct(
        spool: Path, tmp_path: Path) -> None:
    common = numbered(40, pad=30)  # longer than the fingerprint: equal fingerprints
    a, b = common + numbered(2, start=100), common + numbered(3, start=200)
    append(spool / "a.jsonl", b"".join(a))
    append(spool / "b.jsonl", b"".join(b))
    reader = make_reader(spool)
    got = await read_all(reader)
    by_path = {p: [ln for ln in got if ln.file.path == str(spool / p)]
               for p in ("a.jsonl", "b.jsonl")}
    assert raws(by_path["a.jsonl"]) == a and raws(by_path["b.jsonl"]) == b
    ack_all(reader, by_path["a.jsonl"] + by_path["b.jsonl"][:40])
    fps = {m.fp for m in reader.marks().values()}
    assert len(fps) == 1  # the fingerprints collide; identity must not rely on them alone
    again = await read_all(start(spool, stop(reader, tmp_path / "state")))
    assert raws(again) == b[40:]


# -- inode reuse -----------------------------------------------------------------------------

async def test_a_new_file_on_a_reused_inode_is_read_from_the_start_while_running(
        spool: Path) -> None:
    old = spool / "a.jsonl"
    append(old, b"".join(numbered(5)))
    reader = make_reader(spool)
    ack_all(reader, await read_all(reader))
    ino = old.stat().st_ino
    old.unlink()
    reader.scan()  # read to the end and acked: closed, so the inode is free
    assert reader.files == {}
    new_lines = numbered(8, start=50)
    new = reuse_inode(spool, ino, "b.jsonl", b"".join(new_lines))
    if new is None:
        pytest.skip("the file system did not reuse the inode")
    lines = await read_all(reader)
    assert raws(lines) == new_lines and lines[0].offset == 0


async def test_a_new_file_on_a_reused_inode_is_read_from_the_start_after_a_restart(
        spool: Path, tmp_path: Path) -> None:
    """A stale checkpoint mark must not resume a different file (Fluent Bit #8025)."""
    old = spool / "a.jsonl"
    append(old, b"".join(numbered(5)))
    reader = make_reader(spool)
    ack_all(reader, await read_all(reader))
    ino, acked = old.stat().st_ino, old.stat().st_size
    store = stop(reader, tmp_path / "state")
    old.unlink()
    new_lines = numbered(30, start=50)  # longer than the old offset: only the fp can tell
    new = reuse_inode(spool, ino, "b.jsonl", b"".join(new_lines))
    marks = store.load()
    if new is None:  # simulate: the old mark, forged onto the new file's identity
        new = spool / "b.jsonl"
        append(new, b"".join(new_lines))
        st = new.stat()
        [old_mark] = marks.values()
        forged = dataclasses.replace(old_mark, dev=st.st_dev, ino=st.st_ino)
        marks = {forged.key: forged}
    assert new.stat().st_size > acked
    reader = make_reader(spool, marks)
    with capture_logs() as logs:
        lines = await read_all(reader)
    assert raws(lines) == new_lines and lines[0].offset == 0
    assert "spool.file.inode_reused" in events(logs)


async def test_marks_of_files_gone_at_start_are_dropped_before_an_inode_is_reused(
        spool: Path, tmp_path: Path) -> None:
    old = spool / "a.jsonl"
    append(old, b"".join(numbered(5)))
    reader = make_reader(spool)
    ack_all(reader, await read_all(reader))
    ino = old.stat().st_ino
    store = stop(reader, tmp_path / "state")
    old.unlink()
    reader = start(spool, store)
    with capture_logs() as logs:
        assert await read_all(reader) == []
    assert "checkpoint.file.gone" in events(logs)
    new_lines = numbered(30, start=50)
    if reuse_inode(spool, ino, "b.jsonl", b"".join(new_lines)) is None:
        pytest.skip("the file system did not reuse the inode")
    assert raws(await read_all(reader)) == new_lines


# -- truncation ----------------------------------------------------------------------------

async def test_a_file_truncated_while_running_is_read_again_from_zero(spool: Path) -> None:
    path = spool / "a.jsonl"
    append(path, b"".join(numbered(5)))
    reader = make_reader(spool)
    old = await read_all(reader)
    ack_all(reader, old[:3])
    os.truncate(path, 0)
    new_lines = numbered(1, start=100)
    append(path, new_lines[0])
    with capture_logs() as logs:
        lines = await read_all(reader)
    assert raws(lines) == new_lines and offsets(lines) == expected_offsets(new_lines)
    assert "spool.file.truncated" in events(logs)
    ack_all(reader, old)  # acknowledgements of the lines from before are void
    assert [m.offset for m in reader.marks().values()] == [0]
    ack_all(reader, lines)
    assert [m.offset for m in reader.marks().values()] == [len(new_lines[0])]


async def test_a_file_truncated_and_rewritten_past_the_old_offset_is_read_from_zero(
        spool: Path) -> None:
    """Truncation is noticed even when the file grew back before the next scan."""
    path = spool / "a.jsonl"
    append(path, b"".join(numbered(3)))
    reader = make_reader(spool)
    ack_all(reader, await read_all(reader))
    reader.marks()  # the pipeline saves a checkpoint after every acknowledged batch
    os.truncate(path, 0)
    new_lines = numbered(10, start=100, pad=20)
    append(path, b"".join(new_lines))
    with capture_logs() as logs:
        lines = await read_all(reader)
    assert raws(lines) == new_lines and lines[0].offset == 0
    assert "spool.file.truncated" in events(logs)


@pytest.mark.parametrize("rewrite", [0, 1], ids=["truncated-to-empty", "truncated-and-new-line"])
async def test_a_file_truncated_while_stopped_is_read_again_from_zero(
        spool: Path, tmp_path: Path, rewrite: int) -> None:
    path = spool / "a.jsonl"
    append(path, b"".join(numbered(20)))
    reader = make_reader(spool)
    ack_all(reader, await read_all(reader))
    store = stop(reader, tmp_path / "state")
    os.truncate(path, 0)
    new_lines = numbered(rewrite, start=100)
    append(path, b"".join(new_lines))
    reader = start(spool, store)
    with capture_logs() as logs:
        lines = await read_all(reader)
    assert "spool.file.truncated" in events(logs)
    append(path, numbered(1, start=200)[0])
    lines += await read_all(reader)
    assert raws(lines) == new_lines + numbered(1, start=200) and lines[0].offset == 0


# -- over-long lines -------------------------------------------------------------------------

async def test_an_over_long_line_comes_out_once_flagged_and_the_next_is_read_normally(
        spool: Path) -> None:
    before, after = numbered(1), numbered(2, start=1)
    long = b'{"blob":"' + b"x" * (5 * MiB) + b'"}\n'
    chunks = [before[0], long, *after]
    append(spool / "a.jsonl", b"".join(chunks))
    lines = await read_all(make_reader(spool, max_line=MiB, chunk=MiB))
    assert len(lines) == 4
    assert offsets(lines) == expected_offsets(chunks)
    assert [ln.too_long for ln in lines] == [0, len(long) - 1, 0, 0]
    assert lines[1].raw == long[: len(lines[1].raw)] and len(lines[1].raw) <= 64 << 10
    assert raws([lines[0], *lines[2:]]) == [before[0], *after]


async def test_a_read_skips_an_over_long_line_whole_instead_of_returning_nothing(
        spool: Path) -> None:
    """An empty read must mean 'nothing complete yet': the pipeline idles on it."""
    long, after = b"y" * (5 * MiB) + b"\n", numbered(1)
    append(spool / "a.jsonl", long + after[0])
    reader = make_reader(spool, max_line=MiB, chunk=MiB)
    reader.scan()
    first = reader.read(100)  # the old reader answered [] four times here
    assert [ln.too_long for ln in first] == [len(long) - 1]
    lines = first + await read_all(reader, scan=False)
    assert offsets(lines) == expected_offsets([long, after[0]])


async def test_an_over_long_line_inside_a_chunk_is_flagged_with_its_size(spool: Path) -> None:
    chunks = [numbered(1)[0], b"z" * 5000 + b"\n", numbered(1, start=1)[0]]
    append(spool / "a.jsonl", b"".join(chunks))
    lines = await read_all(make_reader(spool, max_line=1024, chunk=64 << 10))
    assert [ln.too_long for ln in lines] == [0, 5000, 0]
    assert offsets(lines) == expected_offsets(chunks)


async def test_an_over_long_line_still_being_written_is_skipped_without_buffering(
        spool: Path) -> None:
    path = spool / "a.jsonl"
    append(path, b"w" * (3 * MiB))
    reader = make_reader(spool, max_line=MiB, chunk=MiB)
    assert await read_all(reader) == []
    [f] = reader.files.values()
    assert f.read_pos == 3 * MiB and len(f.skip_head) <= 64 << 10  # skipped, not held
    append(path, b"w" * MiB + b"\n" + numbered(1)[0])
    lines = await read_all(reader)
    assert [ln.too_long for ln in lines] == [4 * MiB, 0]
    assert lines[0].offset == 0 and lines[1].offset == 4 * MiB + 1


async def test_a_restart_after_an_acked_over_long_line_does_not_read_it_again(
        spool: Path, tmp_path: Path) -> None:
    path = spool / "a.jsonl"
    append(path, b"v" * (2 * MiB) + b"\n" + numbered(1)[0])
    reader = make_reader(spool, max_line=MiB, chunk=MiB)
    ack_all(reader, await read_all(reader))
    reader = start(spool, stop(reader, tmp_path / "state"), max_line=MiB, chunk=MiB)
    append(path, numbered(1, start=1)[0])
    assert raws(await read_all(reader)) == numbered(1, start=1)


# -- what is never read ----------------------------------------------------------------------

@pytest.mark.timeout(20)  # opening the fifo for reading without O_NONBLOCK would hang here
async def test_only_regular_files_matching_the_patterns_are_read(
        spool: Path, tmp_path: Path) -> None:
    good = spool / "agent-h-1-0.jsonl"
    append(good, numbered(1)[0])
    outside = tmp_path / "outside"
    outside.mkdir()
    append(outside / "secret.jsonl", b'{"secret": 1}\n')
    os.symlink(outside / "secret.jsonl", spool / "link.jsonl")
    os.symlink(outside, spool / "dirlink.jsonl")
    os.symlink(spool / "missing", spool / "dangling.jsonl")
    os.mkfifo(spool / "pipe.jsonl")
    (spool / "sub.jsonl").mkdir()
    append(spool / "sub.jsonl" / "inner.jsonl", b'{"inner": 1}\n')
    for name in ("notes.txt", "a.jsonl.tmp", "a.jsonl.done.gz", "A.JSONL", "jsonl"):
        append(spool / name, b'{"other": 1}\n')
    reader = make_reader(spool)
    lines = await read_all(reader)
    assert raws(lines) == numbered(1)
    assert [f.path for f in reader.files.values()] == [str(good)]


@pytest.mark.timeout(20)
def test_a_fifo_that_replaced_a_file_after_discovery_is_not_opened_blocking(spool: Path) -> None:
    fifo = spool / "a.jsonl"
    os.mkfifo(fifo)
    st = fifo.stat()
    reader = make_reader(spool)
    reader._track(str(fifo), st)  # the race: scandir saw a regular file
    assert reader.open_files() == 0
    reader.scan()  # not a regular file: never tracked
    assert reader.files == {}


# -- deleted files, fairness, memory ---------------------------------------------------------

async def test_a_deleted_file_is_read_to_the_end_then_closed_once_acked(spool: Path) -> None:
    path, chunks = spool / "a.jsonl", numbered(4)
    append(path, b"".join(chunks))
    reader = make_reader(spool)
    reader.scan()
    path.unlink()  # deleted before it was read: the open descriptor still reads it
    lines = await read_all(reader)
    assert raws(lines) == chunks
    reader.scan()
    [f] = reader.files.values()  # not acknowledged yet: kept
    assert f.deleted
    ack_all(reader, lines[:-1])
    reader.scan()
    assert len(reader.files) == 1
    ack_all(reader, lines[-1:])
    with capture_logs() as logs:
        reader.scan()
    assert reader.files == {} and "spool.file.closed" in events(logs)
    with pytest.raises(OSError):
        os.fstat(f.fd)


async def test_a_file_moved_out_of_the_spool_is_finished_then_closed(
        spool: Path, tmp_path: Path) -> None:
    path, chunks = spool / "a.jsonl.done", numbered(3)
    append(path, b"".join(chunks))
    reader = make_reader(spool)
    reader.scan()
    path.rename(tmp_path / "archived.jsonl.done")
    lines = await read_all(reader)
    assert raws(lines) == chunks
    ack_all(reader, lines)
    reader.scan()
    assert reader.files == {}


async def test_reads_rotate_across_files_so_none_is_starved(spool: Path) -> None:
    names = [f"agent-{i:02}.jsonl" for i in range(20)]
    for name in names:
        append(spool / name, b"".join(numbered(300, pad=10)))
    reader = make_reader(spool, chunk=4096)
    reader.scan()
    firsts = []
    for _ in range(len(names)):
        lines = reader.read(10)
        firsts.append(Path(lines[0].file.path).name)
    assert sorted(firsts) == names


async def test_a_large_backlog_in_one_file_does_not_delay_another(spool: Path) -> None:
    append(spool / "big.jsonl", b"".join(numbered(20_000)))
    append(spool / "small.jsonl", numbered(1)[0])
    reader = make_reader(spool, chunk=64 << 10)
    reader.scan()
    seen = [ln.file.path for _ in range(2) for ln in reader.read(100)]
    assert str(spool / "small.jsonl") in seen


async def test_a_read_takes_one_chunk_a_file_and_stops_visiting_files_at_max_lines(
        spool: Path) -> None:
    chunk = 4096
    for i in range(5):
        append(spool / f"w-{i}.jsonl", b"".join(numbered(1000, pad=20)))
    reader = make_reader(spool, max_line=1024, chunk=chunk)
    reader.scan()
    one = reader.read(1)
    assert len({ln.file.path for ln in one}) == 1 and len(one) > 1  # a whole chunk of lines
    assert sum(ln.end - ln.offset for ln in one) <= chunk
    every = reader.read(10**6)
    assert len({ln.file.path for ln in every}) == 5
    assert sum(ln.end - ln.offset for ln in every) <= 5 * chunk


async def test_a_large_backlog_is_read_one_chunk_per_file_per_read(spool: Path) -> None:
    chunk = 64 << 10
    block = b"".join(numbered(1000, pad=900))  # about 1 MB
    for _ in range(16):
        append(spool / "a.jsonl", block)
    reader = make_reader(spool, max_line=4096, chunk=chunk)
    reader.scan()
    total, reads = 0, 0
    while lines := reader.read(100_000):
        size = sum(ln.end - ln.offset for ln in lines)
        assert size <= chunk
        total, reads = total + size, reads + 1
    assert total == 16 * len(block) and reads >= total // chunk


async def test_memory_stays_bounded_reading_a_200_mb_backlog(spool: Path) -> None:
    """A 200 MB garbage line (a sparse file) and the line after it, in bounded memory."""
    path = spool / "a.jsonl"
    append(path, b"")
    os.truncate(path, 200 * MiB)  # sparse: costs no disk
    append(path, b"\n" + numbered(1)[0])
    reader = make_reader(spool, max_line=MiB, chunk=MiB)
    reader.scan()
    tracemalloc.start()
    try:
        lines = await read_all(reader, scan=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [ln.too_long for ln in lines] == [200 * MiB, 0]
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB while reading a 200 MiB backlog"


async def test_lag_counts_bytes_not_yet_acknowledged(spool: Path) -> None:
    chunks = numbered(4)
    append(spool / "a.jsonl", b"".join(chunks))
    reader = make_reader(spool)
    lines = await read_all(reader)
    assert reader.lag_bytes() == len(b"".join(chunks))
    ack_all(reader, lines[:2])
    assert reader.lag_bytes() == len(b"".join(chunks[2:]))


async def test_an_unfinished_last_line_of_a_done_file_is_handed_on_flagged(spool: Path) -> None:
    """A .done file ending without a newline (its writer died mid-write) yields that tail
    once, flagged, so the file can be acknowledged to its end and removed."""
    path = spool / "a-h-1-0.jsonl"
    append(path, b"".join(numbered(2)) + b'{"half": ')
    reader = make_reader(spool)
    first = await read_all(reader)
    assert len(first) == 2 and not any(x.unfinished for x in first)
    os.rename(path, spool / "a-h-1-0.jsonl.done")
    tail = await read_all(reader)
    assert [(x.raw, x.unfinished) for x in tail] == [(b'{"half": ', True)]
    assert tail[0].end == path.with_name("a-h-1-0.jsonl.done").stat().st_size
    assert await read_all(reader) == []


async def test_an_unfinished_over_long_tail_of_a_done_file_is_handed_on(spool: Path) -> None:
    """A .done file ending inside an over-long line without a newline: that line comes
    out once (too long, unfinished) instead of holding the file forever."""
    path = spool / "a-h-1-0.jsonl.done"
    append(path, b"".join(numbered(1)) + b"x" * 5000)
    reader = make_reader(spool, max_line=1024, chunk=4096)
    lines = await read_all(reader)
    assert [(x.too_long, x.unfinished) for x in lines] == [(0, False), (5000, True)]
    assert lines[-1].end == path.stat().st_size


async def test_the_unfinished_tail_of_a_dead_writers_idle_file_is_handed_on(spool: Path) -> None:
    """A .jsonl idle longer than idle_done_after_s counts as done: its tail comes out."""
    path = spool / "a-h-1-0.jsonl"
    append(path, b"".join(numbered(1)) + b'{"half"')
    old = time.time() - 3600
    os.utime(path, (old, old))
    reader = make_reader(spool)
    reader.idle_done_after_s = 60.0
    lines = await read_all(reader)
    assert [x.unfinished for x in lines] == [False, True]
    fresh = make_reader(spool)  # without an idle limit the tail waits
    assert [x.unfinished for x in await read_all(fresh)] == [False]


# -- whether a read left lines behind (the pipeline's trickle) ----------------------------
async def test_a_read_says_when_it_left_complete_lines_behind(spool: Path) -> None:
    """Cut short by its line budget (before another file's turn), or by a
    chunk smaller than what a file holds, a read says so; one that took
    everything does not."""
    f = spool / "agent-h-1-0.jsonl"
    append(f, b"".join(numbered(30)))
    append(spool / "agent-h-2-0.jsonl", b"".join(numbered(30, start=100)))
    reader = make_reader(spool, chunk=4096, max_line=1024)
    reader.scan()
    assert len(reader.read(10)) == 30 and reader.cut_short  # the budget: one file's chunk
    assert len(reader.read(1000)) == 30 and not reader.cut_short  # the other file
    append(f, b"".join(numbered(200, start=30, pad=40)))  # ~12 kB: three chunks
    reader.scan()
    assert reader.read(10_000) and reader.cut_short  # one chunk of the file
    while reader.read(10_000):
        pass
    assert not reader.cut_short
    reader.close()


async def test_unread_is_growth_past_what_reads_took_or_found_unfinished(spool: Path) -> None:
    f = spool / "agent-h-1-0.jsonl"
    append(f, b"".join(numbered(3)))
    reader = make_reader(spool)
    reader.scan()
    assert reader.unread()
    await read_all(reader)
    assert not reader.unread()
    append(f, b'{"half": ')  # an unfinished line: read, nothing complete
    reader.scan()
    assert reader.unread()
    assert reader.read(100) == [] and not reader.unread()
    append(f, b'"written"}\n')
    reader.scan()
    assert reader.unread()
    assert raws(reader.read(100)) == [b'{"half": "written"}\n'] and not reader.unread()
    reader.close()
