"""Driving code that waits on a FakeClock: no real sleeps, a real deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.clock import FakeClock, yield_to_loop


async def drive(clock: FakeClock, until: Callable[[], bool], *, max_step_s: float | None = None,
                deadline_s: float = 5.0) -> None:
    """Run the loop, moving ``clock`` to each next sleeper's deadline whenever
    every task is waiting, until ``until()`` holds (or fail after ``deadline_s``
    of real time). ``max_step_s`` caps a single move of the clock."""
    async with asyncio.timeout(deadline_s):
        while not until():
            for _ in range(20):
                await yield_to_loop()
            if until():
                return
            nxt = clock.next_deadline()
            if nxt is None:
                continue
            step = nxt - clock.monotonic()
            clock.advance(max(0.0, step if max_step_s is None else min(step, max_step_s)))
