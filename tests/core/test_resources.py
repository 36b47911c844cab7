"""Exhausted resources are back-pressure: each errno on the spool, the quarantine
and the state directory is an episode (logged once), counted, retried on the
clock, and loses nothing. Errors are injected at the system-call seams."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from sidecar.clock import FakeClock
from sidecar.spool import discovery as discovery_module
from sidecar.spool import quarantine as quarantine_module
from sidecar.spool.checkpoints import CheckpointStore, FileMark
from sidecar.spool.faults import FaultTracker
from sidecar.spool.quarantine import Quarantine
from sidecar.spool.state import StateDir
from tests.clocking import drive
from tests.core.helpers import ack_all, append, make_reader, numbered, read_all, span
from tests.core.test_pipeline import FakeSink, Harness

ERRNOS = [errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.EIO]
Logs = list[MutableMapping[str, Any]]


def fault(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def events(logs: Logs, name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


class Switch:
    """A fault to inject while ``on``; counts the calls it refused."""

    def __init__(self, code: int) -> None:
        self.code, self.on, self.refused = code, True, 0

    def check(self) -> None:
        if self.on:
            self.refused += 1
            raise fault(self.code)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- the tracker -------------------------------------------------------------------------

@pytest.mark.parametrize("code", ERRNOS)
def test_an_episode_is_logged_once_and_every_failed_try_is_counted(
        clock: FakeClock, code: int) -> None:
    faults = FaultTracker(clock)
    name = errno.errorcode[code]
    with capture_logs() as logs:
        for _ in range(50):
            faults.failed("quarantine", "postgres", fault(code), op="write")
            clock.advance(0.5)
        assert faults.reasons() == [f"quarantine (postgres): {name} for 25 s, retrying"]
        faults.cleared("quarantine", "postgres")
        faults.cleared("quarantine", "postgres")  # no episode: nothing to say
    assert [e["event"] for e in logs] == ["resource.fault.started", "resource.fault.cleared"]
    assert events(logs, "resource.fault.cleared")[0]["failed_tries"] == 50
    stats = faults.stats()
    assert stats.active == () and stats.failures == (("quarantine", name, 50),)


def test_episodes_are_per_owner_so_one_sinks_success_does_not_clear_anothers(
        clock: FakeClock) -> None:
    faults = FaultTracker(clock)
    faults.failed("state", "postgres", fault(errno.ENOSPC), op="checkpoint")
    faults.failed("state", "opik", fault(errno.ENOSPC), op="checkpoint")
    faults.cleared("state", "opik")
    assert [e.owner for e in faults.stats().active] == ["postgres"]


async def test_a_deferred_write_is_retried_on_the_clock_until_it_succeeds(
        clock: FakeClock) -> None:
    faults = FaultTracker(clock)
    attempts: list[float] = []

    def retry() -> bool:
        attempts.append(clock.monotonic())
        return len(attempts) >= 3

    faults.failed("state", "postgres", fault(errno.EIO), op="checkpoint", retry=retry)
    stop = asyncio.Event()
    task = asyncio.create_task(faults.run(stop))
    await drive(clock, lambda: len(attempts) >= 3)
    clock.advance(10.0)
    await asyncio.sleep(0)
    stop.set()
    await drive(clock, task.done)
    assert len(attempts) == 3  # done: never called again
    assert attempts[1] - attempts[0] == pytest.approx(1.0)


# -- the spool ---------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.EIO])
async def test_a_scan_that_cannot_list_the_spool_is_an_episode_and_loses_nothing(
        spool: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    faults = FaultTracker(clock)
    reader = make_reader(spool, clock=clock)
    reader.faults = faults
    lines = numbered(5)
    append(spool / "a.jsonl", b"".join(lines))
    switch = Switch(code)
    real = discovery_module.spool_files

    def listing(*args: Any) -> Any:
        switch.check()
        return real(*args)

    monkeypatch.setattr(discovery_module, "spool_files", listing)
    with capture_logs() as logs:
        for _ in range(3):
            assert await read_all(reader) == []
        assert faults.active("spool", "test")
        switch.on = False
        got = await read_all(reader)
    assert [x.raw + b"\n" for x in got] == lines
    assert [e["event"] for e in logs if e["event"].startswith("resource.")] == [
        "resource.fault.started", "resource.fault.cleared"]
    assert faults.stats().failures == (("spool", errno.errorcode[code], 3),)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.EIO])
async def test_a_file_that_cannot_be_opened_or_read_now_is_read_whole_later(
        spool: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    faults = FaultTracker(clock)
    reader = make_reader(spool, clock=clock)
    reader.faults = faults
    first, second = numbered(4), numbered(3, start=4)
    path = spool / "a.jsonl"
    append(path, b"".join(first))
    got = await read_all(reader)
    append(path, b"".join(second))  # the reopen after this fails, then the read
    opening, reading = Switch(code), Switch(code)
    real_open, real_pread = os.open, os.pread

    def fake_open(name: Any, *args: Any, **kwargs: Any) -> int:
        if str(name).startswith(str(spool)):
            opening.check()
        return real_open(name, *args, **kwargs)

    def fake_pread(fd: int, n: int, at: int) -> bytes:
        if at > 0:  # a chunk past the first lines, not a fingerprint (at 0)
            reading.check()
        return real_pread(fd, n, at)

    monkeypatch.setattr(discovery_module.os, "open", fake_open)
    monkeypatch.setattr(discovery_module.os, "pread", fake_pread)
    with capture_logs() as logs:
        assert await read_all(reader) == []
        opening.on = False
        assert await read_all(reader) == []  # opened now; the read fails
        reading.on = False
        got += await read_all(reader)
        reader.scan()  # a round without a fault ends the episode
    assert [x.raw + b"\n" for x in got] == first + second
    assert len(events(logs, "resource.fault.started")) == 1
    assert len(events(logs, "resource.fault.cleared")) == 1
    assert not events(logs, "spool.file.unreadable")
    assert reader.open_files() == 0


async def test_without_a_tracker_a_resource_error_is_raised(
        spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands (status, replay) read the spool without one: they say so and exit."""
    reader = make_reader(spool)
    switch = Switch(errno.EMFILE)
    monkeypatch.setattr(discovery_module, "spool_files", lambda *a: switch.check())
    with pytest.raises(OSError):
        reader.scan()


# -- descriptors -----------------------------------------------------------------------

async def test_a_reader_holds_no_descriptor_between_reads_and_reads_every_line_once(
        spool: Path) -> None:
    want: list[bytes] = []
    for i in range(40):
        lines = numbered(3, start=i * 3)
        append(spool / f"agent-{i:02}.jsonl", b"".join(lines))
        want += lines
    reader = make_reader(spool)
    reader.scan()
    assert reader.open_files() == reader.max_open  # opened at discovery while there is room
    got = await read_all(reader, scan=False)
    assert reader.open_files() == 0
    assert sorted(x.raw + b"\n" for x in got) == sorted(want)
    more = numbered(2, start=500)
    append(spool / "agent-07.jsonl", b"".join(more))
    again = await read_all(reader)  # scan sees it grow: reopened, read, closed
    assert [x.raw + b"\n" for x in again] == more and reader.open_files() == 0


async def test_a_new_file_on_a_reused_inode_while_closed_is_read_from_the_start(
        spool: Path) -> None:
    """The fingerprint of what was read is checked at every reopen: a file that
    got the inode of one read and closed never resumes at its offset."""
    old = spool / "a.jsonl"
    append(old, b"".join(numbered(5)))
    reader = make_reader(spool)
    await read_all(reader)  # read and closed, not yet acknowledged: still tracked
    [f] = reader.files.values()
    assert not f.is_open
    old.unlink()
    new_lines = numbered(30, start=50)  # longer than the old offset: only the head can tell
    new = spool / "b.jsonl"
    append(new, b"".join(new_lines))
    st = new.stat()
    f.dev, f.ino = st.st_dev, st.st_ino  # as if the file system had reused the inode
    reader.files = {f.key: f}
    with capture_logs() as logs:
        lines = await read_all(reader)
    assert [x.raw + b"\n" for x in lines] == new_lines and lines[0].offset == 0
    assert events(logs, "spool.file.truncated")


async def test_a_rename_to_done_between_scan_and_open_is_not_a_warning(spool: Path) -> None:
    path = spool / "a.jsonl"
    lines = numbered(3)
    append(path, b"".join(lines))
    reader = make_reader(spool)
    reader.max_open = 0  # scan does not open it: the read will
    reader.scan()
    path.rename(spool / "a.jsonl.done")
    with capture_logs() as logs:
        assert reader.read(100) == []
        got = await read_all(reader)  # the next scan finds the new name
    assert [x.raw + b"\n" for x in got] == lines
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]
    assert events(logs, "spool.file.moved")[0]["log_level"] == "debug"


async def test_a_file_deleted_while_closed_with_bytes_unread_is_logged_as_lost(
        spool: Path) -> None:
    """The documented loss: only possible when someone else deletes a file
    (the janitor deletes only what every sink passed)."""
    path = spool / "a.jsonl"
    append(path, b"".join(numbered(3)))
    reader = make_reader(spool)
    reader.max_open = 0
    reader.scan()
    size = path.stat().st_size
    path.unlink()
    with capture_logs() as logs:
        reader.scan()
    assert reader.files == {}
    [lost] = events(logs, "spool.file.lost")
    assert lost["log_level"] == "error" and lost["bytes"] == size


# -- the quarantine --------------------------------------------------------------------

@pytest.fixture
def failing_write(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], Switch]]:
    real = quarantine_module._write_whole

    def install(code: int) -> Switch:
        switch = Switch(code)

        def write(fd: int, data: bytes) -> None:
            switch.check()
            real(fd, data)

        monkeypatch.setattr(quarantine_module, "_write_whole", write)
        return switch

    yield install


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO])
async def test_a_quarantine_write_that_fails_is_held_and_written_when_it_can_be(
        tmp_path: Path, clock: FakeClock, failing_write: Callable[[int], Switch],
        code: int) -> None:
    faults = FaultTracker(clock)
    q = Quarantine(StateDir(tmp_path, faults), "postgres", clock, max_bytes=1 << 20)
    q.open()
    switch = failing_write(code)
    with capture_logs() as logs:
        for i in range(5):
            q.put(b'{"bad": %d}' % i, "/s/a.jsonl", i * 10, "not a span")
        waiting = asyncio.create_task(q.durable())
        await drive(clock, lambda: switch.refused >= 4)
        assert not waiting.done() and q.stats().held == 5
        switch.on = False
        await drive(clock, waiting.done)
    entries = [orjson.loads(x) for x in q.path.read_bytes().splitlines()]
    assert [e["offset"] for e in entries] == [0, 10, 20, 30, 40]  # once each, in order
    assert q.stats().held == 0 and not faults.active("quarantine", "postgres")
    assert len(events(logs, "resource.fault.started")) == 1
    assert len(events(logs, "resource.fault.cleared")) == 1


async def test_a_line_whose_quarantine_write_failed_is_not_acknowledged_past(
        tmp_path: Path, failing_write: Callable[[int], Switch]) -> None:
    h = Harness(tmp_path, FakeSink())
    faults = FaultTracker(h.clock)
    h.state.faults = h.quarantine.faults = h.store.faults = faults
    h.pipeline.reader.faults = faults
    switch = failing_write(errno.ENOSPC)
    good = [span(i) for i in range(3)]
    h.write([good[0], b"not json\n", good[1], good[2]])
    h.start()
    await h.until(lambda: len(h.sink.stored) == 3 and switch.refused >= 3)
    assert h.checkpoint() == 0  # the batch waits for its quarantine entry
    switch.on = False
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    assert [e["raw"] for e in h.quarantined()] == ["not json"]


def test_past_its_cap_the_quarantine_drops_its_oldest_entries_and_counts_them(
        tmp_path: Path, clock: FakeClock) -> None:
    cap = 1 << 16
    q = Quarantine(StateDir(tmp_path), "postgres", clock, max_bytes=cap)
    with capture_logs() as logs:
        for i in range(200):
            q.put(b'{"n": %d, "pad": "%s"}' % (i, b"x" * 1000), "/s/a.jsonl", i, "bad")
        q.sync()
    entries = [orjson.loads(x) for x in q.path.read_bytes().splitlines()]
    assert q.path.stat().st_size <= cap
    offsets = [e["offset"] for e in entries]
    assert offsets == list(range(200 - len(offsets), 200))  # the newest, in order
    dropped = events(logs, "quarantine.entries.dropped")
    assert sum(e["entries"] for e in dropped) == q.stats().dropped_entries == 200 - len(offsets)
    assert all(e["bytes"] >= cap // 4 for e in dropped)  # a quarter at a time, not one by one


def test_an_entry_larger_than_the_cap_is_kept_alone(tmp_path: Path, clock: FakeClock) -> None:
    q = Quarantine(StateDir(tmp_path), "postgres", clock, max_bytes=1 << 16)
    q.put(b"small", "/s/a.jsonl", 0, "bad")
    q.put(b"\x01" * (60 << 10), "/s/a.jsonl", 10, "bad")  # escaped: ~6x larger than the cap
    q.sync()
    [entry] = [orjson.loads(x) for x in q.path.read_bytes().splitlines()]
    assert entry["offset"] == 10


# -- the state directory ---------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.EIO])
def test_a_checkpoint_that_cannot_be_saved_is_saved_later_with_the_newest_marks(
        tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    faults = FaultTracker(clock)
    store = CheckpointStore(StateDir(tmp_path, faults), "postgres")
    first = {(1, 1): FileMark(1, 1, "", 0, 10, "/s/a.jsonl")}
    newer = {(1, 1): FileMark(1, 1, "", 0, 20, "/s/a.jsonl")}
    assert store.save(first)
    switch = Switch(code)
    real = store._write

    def write(marks: dict[tuple[int, int], FileMark]) -> None:
        switch.check()
        real(marks)

    monkeypatch.setattr(store, "_write", write)
    assert not store.save(newer)
    faults.retry_now()
    assert store.load() == first and faults.active("state", "postgres")
    switch.on = False
    faults.retry_now()
    assert store.load() == newer and not faults.active("state", "postgres")


def test_a_status_file_that_cannot_be_written_is_written_later(
        tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = FaultTracker(clock)
    state = StateDir(tmp_path, faults)
    switch = Switch(errno.ENOSPC)
    real = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        switch.check()
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert not state.write_status("postgres", {"breaker": "open"})
    assert state.read_status("postgres") == {}
    switch.on = False
    faults.retry_now()
    assert state.read_status("postgres") == {"breaker": "open"}
    assert faults.stats().active == ()


def test_acknowledged_lines_survive_the_reader_closing_files(spool: Path) -> None:
    """Marks of closed files keep their fingerprint (a restart checks it)."""
    path = spool / "a.jsonl"
    append(path, b"".join(numbered(100, pad=20)))
    reader = make_reader(spool)
    lines = asyncio.run(read_all(reader))
    assert reader.open_files() == 0
    ack_all(reader, lines[:60])
    [mark] = reader.marks().values()
    assert mark.fp_len == min(1024, mark.offset) and mark.offset == lines[59].end
