"""Wake-ups for the readers: inotify (watchfiles) plus a periodic rescan.

The rescan is the safety net for missed events and the only source in
``poll`` mode (network volumes, where inotify sees nothing).
"""

from __future__ import annotations

import asyncio

import structlog
from watchfiles import awatch

from sidecar.clock import Clock, every
from sidecar.config.settings import SpoolSettings

log = structlog.get_logger("sidecar.spool")


class SpoolWatcher:
    def __init__(self, settings: SpoolSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._subscribers: list[asyncio.Event] = []

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        self._subscribers.append(event)
        return event

    def notify(self) -> None:
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
        self.settings.dir.mkdir(parents=True, exist_ok=True)
        try:
            async for _changes in awatch(self.settings.dir, stop_event=stop, debounce=100,
                                         step=10, recursive=False, ignore_permission_denied=True):
                self.notify()
        except (OSError, RuntimeError) as exc:
            # Inotify can fail (watch limits): the periodic rescan still runs.
            log.warning("spool.watch.failed", error=str(exc)[:200], fallback="rescan")
