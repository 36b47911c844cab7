"""Wake-ups for the readers: inotify plus a periodic rescan.

The rescan is the safety net for missed events and the only source in
``poll`` mode (network volumes, where inotify sees nothing). A watch that
is lost (the directory removed or renamed: replaced by an operator, a
volume mounted again) or refused (the watch limit) is tried again every
``RETRY_WATCH_S``, so the rescan stands in for a second, not for good.

On Linux the spool directory's inotify descriptor is read by the event loop
itself (``loop.add_reader``): an idle sidecar has no thread and no timer
polling for changes, so nothing runs until a writer writes (inotify_simple
makes the descriptor; watchfiles keeps it in a thread of its own, polled
every 10 ms, which cost an idle sidecar three quarters of its CPU).
Elsewhere watchfiles does it, as before.

A burst of writes is one wake-up: the readers are woken at the first event,
then at most once every ``throttle_s`` while events keep coming (each
wake-up makes every sink's reader rescan the directory and read what grew;
at 100 spans/s written one by one that was ~70 wake-ups a second, most of
the daemon's CPU). The first line written after a quiet spell is read at
once; the next ones wait at most ``throttle_s``, a fraction of
``batch.max_wait_ms`` (the app passes a quarter of it, at most 0.25 s), so a
span still reaches its sink within about a batch's wait. And none at all
while every reader still holds its last wake-up: a reader with a batch
pending, or on a trickle waiting out the batch's wait its wake-up opened,
sleeps until then, then takes it (clears its event) and rescans, so a
wake-up before then would change nothing. After a take the next wake-up
waits a throttle too: the reader rescans and reads as it takes, so what the
kernel queued before the take is nearly always read by then (woken at once,
each reader woke once a batch for nothing: 10.7 -> 9.7 ms of CPU a second at
100 spans/s).
"""

from __future__ import annotations

import asyncio
import errno
import sys
from pathlib import Path

import structlog

from sidecar.clock import Clock, every
from sidecar.config.settings import SpoolSettings

log = structlog.get_logger("sidecar.spool")

THROTTLE_S = 0.25  # the longest wait between two wake-ups while writes go on
RETRY_WATCH_S = 1.0  # a lost or refused watch is tried again this often


class Inotify:
    """One non-blocking inotify descriptor watching one directory (Linux),
    through inotify_simple (a thin ctypes wrapper: the descriptor is ours to
    hand to the event loop, which watchfiles' thread does not allow)."""

    def __init__(self, path: Path) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError(errno.ENOSYS, "inotify is not available")
        try:
            from inotify_simple import INotify, flags
        except ImportError:  # an install without it: watchfiles' thread instead
            raise OSError(errno.ENOSYS, "inotify_simple is not installed") from None

        self.lost = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED  # the watch is gone
        mask = (flags.MODIFY | flags.ATTRIB | flags.CLOSE_WRITE | flags.MOVED_FROM
                | flags.MOVED_TO | flags.CREATE | flags.DELETE | flags.DELETE_SELF
                | flags.MOVE_SELF | flags.ONLYDIR)
        self._inotify = INotify(nonblocking=True)
        try:
            self._inotify.add_watch(path, mask)
        except OSError:
            self._inotify.close()
            raise
        self.fd = self._inotify.fileno()

    def read(self) -> int:
        """Consume every pending event; the OR of their masks (0: none)."""
        mask = 0
        for event in self._inotify.read(timeout=0):
            mask |= event.mask
        return mask

    def close(self) -> None:
        self._inotify.close()


class Subscription(asyncio.Event):
    """A reader's "the spool changed" event; clearing it (the reader took the
    change and rescans) tells the watcher that a wake-up counts again."""

    def __init__(self, taken: asyncio.Event) -> None:
        super().__init__()
        self._taken = taken

    def clear(self) -> None:
        super().clear()
        self._taken.set()


class SpoolWatcher:
    def __init__(self, settings: SpoolSettings, clock: Clock,
                 throttle_s: float = THROTTLE_S) -> None:
        self.settings = settings
        self.clock = clock
        self.throttle_s = throttle_s
        self._subscribers: list[asyncio.Event] = []
        self._taken = asyncio.Event()  # a subscriber cleared its event
        self.wakeups = 0  # how many times the readers were woken
        self.watches = 0  # how many times an inotify watch was set up
        self.armed = 0  # how many times the descriptor was handed to the loop to wait on

    def subscribe(self) -> asyncio.Event:
        event = Subscription(self._taken)
        self._subscribers.append(event)
        return event

    def _untaken(self) -> bool:
        """Every reader still holds its last wake-up: another changes nothing."""
        return bool(self._subscribers) and all(e.is_set() for e in self._subscribers)

    def notify(self) -> None:
        self.wakeups += 1
        for event in self._subscribers:
            event.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Set every subscriber's event on each change, until ``stop``."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._ticker(stop))
            if self.settings.watch == "inotify":
                tg.create_task(self._inotify(stop))

    async def _ticker(self, stop: asyncio.Event) -> None:
        interval = self.settings.rescan_interval_s
        if self.settings.watch == "poll":
            interval = min(interval, self.settings.poll_interval_ms / 1000)
        await every(self.clock, interval, stop, self.notify)

    async def _inotify(self, stop: asyncio.Event) -> None:
        """Watch the directory; set the watch up again when it is lost.

        A watch is lost when the directory is removed or renamed (replaced by
        an operator, a volume mounted again), and refused when inotify's
        limits are reached; without a watch only the periodic rescan wakes
        the readers, every ``rescan_interval_s`` (5 s by default, five times
        a batch's wait). So the watch is tried again on the directory's path
        every ``RETRY_WATCH_S``: the first failure is logged
        (``spool.watch.failed``), then ``spool.watch.restored``. A descriptor
        that fails to read (an I/O error) is not tried again: the rescan
        goes on alone, as a retry would only fail and log every second.
        """
        self.settings.dir.mkdir(parents=True, exist_ok=True)
        failing = False
        while True:
            try:
                inotify = Inotify(self.settings.dir)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    await self._watchfiles(stop)
                    return
                if not failing:
                    log.warning("spool.watch.failed", error=str(exc)[:200], fallback="rescan")
                failing = True
            else:
                self.watches += 1
                if failing:
                    log.info("spool.watch.restored", dir=str(self.settings.dir))
                    self.notify()  # what was written while nothing watched
                try:
                    if not await self._events(inotify, stop):
                        return
                except OSError as exc:  # reading the descriptor failed
                    log.warning("spool.watch.failed", error=str(exc)[:200], fallback="rescan")
                    return
                finally:
                    inotify.close()
                failing = True  # lost: _events said so
            if await self.clock.wait(stop, RETRY_WATCH_S):
                return

    async def _events(self, inotify: Inotify, stop: asyncio.Event) -> bool:
        """Wake the readers at the first event, then at most every ``throttle_s``;
        False at the stop, True when the watch was lost.

        While every reader still holds its last wake-up (each waits for its
        pending batch's deadline, then rescans), another would change
        nothing: the kernel queues the events (coalescing a file's repeated
        ``IN_MODIFY``) until a reader takes its wake-up. What was queued is
        read a throttle after the take (or after the last wake-up, whichever
        is later), without handing the descriptor to the loop; only an empty
        queue waits for the next event.
        """
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        waker = asyncio.ensure_future(_set_when(stop, readable))
        taker = asyncio.ensure_future(_set_when(stop, self._taken))
        last = -float("inf")  # when the readers were last woken, or one took a wake-up
        try:
            while True:
                while self._untaken():
                    self._taken.clear()
                    await self._taken.wait()
                    if stop.is_set():
                        return False
                    # A take is followed by the reader's rescan and read:
                    # what was queued before it is read now, so the next
                    # wake-up waits a throttle from the take.
                    last = self.clock.monotonic()
                early = last + self.throttle_s - self.clock.monotonic()
                if early > 0 and await self.clock.wait(stop, early):
                    return False
                mask = inotify.read()  # queued while the readers held their wake-up
                if not mask:
                    # The descriptor is level-triggered: watched only until it
                    # is readable, or the loop would spin on it.
                    self.armed += 1
                    loop.add_reader(inotify.fd, readable.set)
                    try:
                        await readable.wait()
                    finally:
                        loop.remove_reader(inotify.fd)
                    readable.clear()
                    if stop.is_set():
                        return False
                    mask = inotify.read()
                    if not mask:
                        continue
                self.notify()
                last = self.clock.monotonic()
                if mask & inotify.lost:  # the directory went away: watched again when back
                    log.warning("spool.watch.failed", error="the spool directory's watch "
                                "was removed", fallback="rescan")
                    return True
        finally:
            waker.cancel()
            taker.cancel()

    async def _watchfiles(self, stop: asyncio.Event) -> None:
        """Off Linux: watchfiles' polling thread."""
        from watchfiles import awatch

        try:
            async for _changes in awatch(self.settings.dir, stop_event=stop, debounce=100,
                                         step=10, recursive=False, ignore_permission_denied=True):
                self.notify()
        except (OSError, RuntimeError) as exc:
            log.warning("spool.watch.failed", error=str(exc)[:200], fallback="rescan")


async def _set_when(stop: asyncio.Event, event: asyncio.Event) -> None:
    await stop.wait()
    event.set()
