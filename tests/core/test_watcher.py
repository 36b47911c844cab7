"""The spool watcher: inotify read by the event loop, bursts throttled.

An idle sidecar must not wake: the watcher has no thread polling for changes
(watchfiles polled every 10 ms from one), and a burst of writes wakes the
readers once per ``throttle_s`` rather than once per write.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.clock import FakeClock, yield_to_loop
from sidecar.config.settings import SpoolSettings
from sidecar.spool.watcher import SpoolWatcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


def _settings(tmp_path: Path) -> SpoolSettings:
    # No periodic rescan within a test: every wake-up comes from inotify.
    return SpoolSettings(dir=tmp_path / "spool", state_dir=tmp_path / "state",
                         rescan_interval_s=3600)


def _rescanning(tmp_path: Path) -> SpoolSettings:
    """A rescan every 5 s: the only source of wake-ups when inotify fails."""
    return SpoolSettings(dir=tmp_path / "spool", state_dir=tmp_path / "state",
                         rescan_interval_s=5)


async def _started(watcher: SpoolWatcher, stop: asyncio.Event) -> asyncio.Task[None]:
    task = asyncio.create_task(watcher.run(stop))
    while not watcher.settings.dir.exists():  # the watch is set up before it is made
        await yield_to_loop()
    for _ in range(20):
        await yield_to_loop()
    return task


@contextlib.asynccontextmanager
async def _watching(settings: SpoolSettings, clock: FakeClock,
                    throttle_s: float = 0.25) -> AsyncIterator[tuple[SpoolWatcher, asyncio.Event]]:
    """A started watcher and its subscriber's event; stopped and awaited after."""
    stop = asyncio.Event()
    watcher = SpoolWatcher(settings, clock, throttle_s=throttle_s)
    woken = watcher.subscribe()
    task = await _started(watcher, stop)
    yield watcher, woken
    assert not task.done()
    stop.set()
    async with asyncio.timeout(5):
        await task


async def _woken(event: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        await event.wait()
    event.clear()


async def _pass(clock: FakeClock, seconds: float) -> None:
    """Move ``clock`` past the watcher's throttle, once it waits on it."""
    async with asyncio.timeout(5):
        while (clock.next_deadline() or float("inf")) > clock.monotonic() + seconds:
            await yield_to_loop()
    clock.advance(seconds)


def _append(path: Path, text: str = '{"x": 1}\n') -> None:
    with path.open("a") as fh:
        fh.write(text)


async def test_a_write_wakes_the_readers_with_no_thread_watching(tmp_path: Path) -> None:
    threads = threading.active_count()
    stop = asyncio.Event()
    watcher = SpoolWatcher(_settings(tmp_path), FakeClock())
    woken = watcher.subscribe()
    task = await _started(watcher, stop)
    _append(watcher.settings.dir / "a.jsonl")
    await _woken(woken)
    # watchfiles watched from a worker thread that polled every 10 ms
    assert threading.active_count() == threads
    stop.set()
    async with asyncio.timeout(5):
        await task


async def test_a_burst_of_writes_is_one_wakeup_per_throttle(tmp_path: Path) -> None:
    clock = FakeClock()
    async with _watching(_settings(tmp_path), clock) as (watcher, woken):
        path = watcher.settings.dir / "a.jsonl"
        _append(path)  # the first write after a quiet spell: woken at once
        await _woken(woken)
        assert watcher.wakeups == 1
        for _ in range(50):
            _append(path)
        for _ in range(50):
            await yield_to_loop()
        assert not woken.is_set()  # the 50 writes wait for the throttle
        await _pass(clock, 0.25)
        await _woken(woken)
        assert watcher.wakeups == 2
        await _pass(clock, 0.25)  # a quiet throttle: nothing to wake for
        for _ in range(50):
            await yield_to_loop()
        assert not woken.is_set()
        _append(path)  # quiet again: the next write wakes at once
        await _woken(woken)
        assert watcher.wakeups == 3


async def test_new_renamed_and_deleted_files_wake_the_readers(tmp_path: Path) -> None:
    clock = FakeClock()
    async with _watching(_settings(tmp_path), clock) as (watcher, woken):
        path = watcher.settings.dir / "b.jsonl"
        for change in (lambda: path.touch(),
                       lambda: path.rename(path.with_suffix(".jsonl.done")),
                       lambda: path.with_suffix(".jsonl.done").unlink()):
            change()
            await _woken(woken)
            await _pass(clock, 0.25)
        assert watcher.wakeups == 3


async def test_inotify_failing_leaves_the_rescan(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from sidecar.spool import watcher as module

    def refuse(path: Path) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(module, "Inotify", refuse)
    clock = FakeClock()
    async with _watching(_rescanning(tmp_path), clock) as (_, woken):
        await _pass(clock, 5)
        await _woken(woken)


async def test_a_failing_read_of_the_descriptor_leaves_the_rescan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error reading inotify's descriptor (EIO, say) stops the watch, not
    the daemon: it is logged and the periodic rescan goes on waking the readers."""
    import errno
    import os

    from sidecar.spool import watcher as module

    class Broken:
        def __init__(self, path: Path) -> None:
            self._r, self._w = os.pipe()
            os.write(self._w, b"x")  # readable at once
            self.fd, self.lost = self._r, 0

        def read(self) -> int:
            raise OSError(errno.EIO, "input/output error")

        def close(self) -> None:
            os.close(self._r)
            os.close(self._w)

    monkeypatch.setattr(module, "Inotify", Broken)
    clock = FakeClock()
    async with _watching(_rescanning(tmp_path), clock) as (_, woken):
        for _ in range(2):  # the rescan ticks on after the failure
            await _pass(clock, 5)
            await _woken(woken)


async def test_a_replaced_directory_is_watched_again(tmp_path: Path) -> None:
    """The directory renamed away and made anew (an operator, a volume
    mounted again): the watch is lost, set up again on the new directory
    within ``RETRY_WATCH_S``, and writes there wake the readers within a
    throttle of their last take, not at the next rescan (an hour away here)."""
    from sidecar.spool.watcher import RETRY_WATCH_S

    clock = FakeClock()
    async with _watching(_settings(tmp_path), clock) as (watcher, woken):
        spool = watcher.settings.dir
        assert watcher.watches == 1
        spool.rename(tmp_path / "spool.old")
        spool.mkdir()
        await _woken(woken)  # the old directory's watch said it went
        await _pass(clock, RETRY_WATCH_S)
        async with asyncio.timeout(5):
            while watcher.watches < 2:
                await yield_to_loop()
        await _woken(woken)  # set up again: what was written meanwhile is looked at
        _append(spool / "a.jsonl")
        await _pass(clock, 0.25)  # the throttle from the reader's take
        await _woken(woken)
        assert watcher.wakeups == 3


async def test_a_watch_refused_at_start_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused watch (the watch limit reached) is tried again every
    ``RETRY_WATCH_S``; once it is set up, writes wake the readers (within a
    throttle of their last take)."""
    import errno

    from sidecar.spool import watcher as module

    real, refusals = module.Inotify, list[Path]()

    def refuse_once(path: Path) -> module.Inotify:
        if not refusals:
            refusals.append(path)
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return real(path)

    monkeypatch.setattr(module, "Inotify", refuse_once)
    clock = FakeClock()
    async with _watching(_settings(tmp_path), clock) as (watcher, woken):
        assert watcher.watches == 0
        await _pass(clock, module.RETRY_WATCH_S)
        async with asyncio.timeout(5):
            while watcher.watches < 1:
                await yield_to_loop()
        await _woken(woken)
        _append(watcher.settings.dir / "a.jsonl")
        await _pass(clock, 0.25)
        await _woken(woken)


async def test_no_wakeup_while_every_reader_still_holds_the_last_one(tmp_path: Path) -> None:
    """A reader waiting for its batch's deadline keeps its event set: further
    wake-ups would change nothing, so the watcher waits until a reader takes
    its wake-up, then, a throttle after the take (the reader rescans and
    reads as it takes), wakes it for what the kernel queued."""
    clock = FakeClock()
    async with _watching(_settings(tmp_path), clock) as (watcher, woken):
        path = watcher.settings.dir / "a.jsonl"
        _append(path)
        async with asyncio.timeout(5):
            await woken.wait()  # held: not cleared
        assert watcher.wakeups == 1
        for _ in range(20):
            _append(path)
        for _ in range(50):
            await yield_to_loop()
        assert watcher.wakeups == 1  # the writes wait in the kernel's queue
        assert clock.sleepers == 1  # only the rescan's timer: no throttle ticking
        clock.advance(1.0)  # the reader's batch comes due
        woken.clear()  # the reader takes it (and rescans)
        for _ in range(50):
            await yield_to_loop()
        assert not woken.is_set()  # not at once: the reader's rescan read it
        await _pass(clock, 0.25)
        await _woken(woken)  # what the kernel queued
        assert watcher.wakeups == 2


async def test_a_taken_wakeup_reads_the_queue_a_throttle_later(
        tmp_path: Path) -> None:
    """A reader takes its wake-up at its batch's deadline, then rescans and
    reads: what the kernel queued before the take is read by then, so the
    watcher reads the queue a throttle after the take (one wake-up of the
    reader, where one at once was nearly always for nothing), without
    handing the descriptor to the loop; an empty queue is then waited on
    as before."""
    clock = FakeClock()
    async with _watching(_settings(tmp_path), clock) as (watcher, woken):
        path = watcher.settings.dir / "a.jsonl"
        _append(path)
        async with asyncio.timeout(5):
            await woken.wait()
        armed = watcher.armed
        _append(path)
        clock.advance(1.0)
        woken.clear()
        await _pass(clock, 0.25)
        async with asyncio.timeout(5):
            await woken.wait()
        assert watcher.wakeups == 2 and watcher.armed == armed
        assert clock.sleepers == 1  # only the rescan's timer
        clock.advance(1.0)
        woken.clear()  # nothing queued this time: the descriptor is waited on
        await _pass(clock, 0.25)
        for _ in range(50):
            await yield_to_loop()
        assert not woken.is_set() and watcher.armed == armed + 1
        _append(path)
        await _woken(woken)
        assert watcher.wakeups == 3
