"""Time, injected: every wait and every reading of time goes through a Clock.

The pipeline, the breaker waits, the tailer, the quarantine, the janitor, the
health reporter and the watchdog all take one, so a ``FakeClock`` drives them
in tests without a single real sleep.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    async def wait(self, event: asyncio.Event, limit_s: float | None) -> bool:
        """Wait for ``event`` up to ``limit_s`` seconds (None: for ever); True when set."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, limit_s: float | None) -> bool:
        if event.is_set():
            return True
        try:
            async with asyncio.timeout(limit_s):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True


class FakeClock:
    """A clock that moves only when a test says so (``advance``, ``jump``).

    Sleepers wake when the clock passes their deadline; nothing waits in
    real time.
    """

    def __init__(self, start: float = 1_000.0, wall: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._wall = wall
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    @property
    def sleepers(self) -> int:
        """How many tasks wait on this clock right now."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_deadline(self) -> float | None:
        live = [d for d, _, fut in self._sleepers if not fut.done()]
        return min(live, default=None)

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def jump(self) -> bool:
        """Advance to the next sleeper's deadline; False when nobody sleeps."""
        deadline = self.next_deadline()
        if deadline is None:
            return False
        self.advance(max(0.0, deadline - self._mono))
        return True

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await yield_to_loop()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    async def wait(self, event: asyncio.Event, limit_s: float | None) -> bool:
        if event.is_set() or limit_s is None:
            await event.wait()
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self.sleep(limit_s))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        return event.is_set()


async def yield_to_loop() -> None:
    """Let every ready task run once; no time passes (not a wait)."""
    await asyncio.sleep(0)


async def every(clock: Clock, interval_s: float, stop: asyncio.Event,
                tick: Callable[[], object]) -> None:
    """Call ``tick`` every ``interval_s`` until ``stop`` is set (not after it)."""
    while not await clock.wait(stop, interval_s):
        tick()
