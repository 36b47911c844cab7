"""An idle sidecar stays idle (issue 22): its timers wake it rarely.

In a pod the sidecar mostly waits. Every timer that fires costs a turn of
the event loop; these tests hold the loops that used to wake it every
second or more often to their idle pace, on a fake clock (no real time).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sidecar.clock import FakeClock, yield_to_loop
from sidecar.health.progress import BEHIND_AFTER_S, QUIET_SAMPLE_S, SAMPLE_S, Progress
from sidecar.snapshots import BreakerStats, SinkStats
from sidecar.spool.faults import RETRY_S, FaultTracker
from tests.clocking import drive


def _stats(shipped: int, lag_bytes: int = 0, lag_seconds: float = 0.0) -> SinkStats:
    return SinkStats(sink="postgres", records_read=shipped, records_shipped=shipped,
                     records_quarantined=0, batches_shipped=shipped, attempts_failed=0,
                     rate_limited_total=0, lag_bytes=lag_bytes, lag_records=0,
                     lag_seconds=lag_seconds, breaker=BreakerStats("closed", 0, 0, 0),
                     oldest_unacked=None, bytes_shipped=shipped * 100)


async def _run_for(clock: FakeClock, run: object, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop))  # type: ignore[operator]
    end = clock.monotonic() + seconds
    await drive(clock, lambda: clock.monotonic() >= end)
    stop.set()
    await drive(clock, task.done)
    await task


async def test_progress_samples_a_current_sidecar_every_few_seconds_one_behind_every_second(
) -> None:
    """Idle, or shipping a trickle as it comes (a batch's lag), the sidecar is
    sampled every few seconds; behind, every second, for the catch-up's pace."""
    clock = FakeClock()
    shipped = 0
    calls: list[float] = []

    def sinks() -> list[SinkStats]:
        calls.append(clock.monotonic())
        return [_stats(shipped)]

    progress = Progress(sinks, clock)
    await _run_for(clock, progress.run, 60.0)
    assert len(calls) <= 60 / QUIET_SAMPLE_S + 2  # was 61: one a second
    calls.clear()

    def shipping(lag_seconds: float) -> Callable[[], list[SinkStats]]:
        def stats() -> list[SinkStats]:  # a new figure every sample
            nonlocal shipped
            calls.append(clock.monotonic())
            shipped += 10
            return [_stats(shipped, lag_bytes=1000, lag_seconds=lag_seconds)]
        return stats

    progress._sinks = shipping(1.2)  # current: a batch's wait behind
    await _run_for(clock, progress.run, 60.0)
    assert len(calls) <= 60 / QUIET_SAMPLE_S + 2
    calls.clear()
    progress._sinks = shipping(BEHIND_AFTER_S)
    await _run_for(clock, progress.run, 10.0)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps and max(gaps) == SAMPLE_S


async def test_the_fault_retry_loop_sleeps_only_while_a_write_waits() -> None:
    clock = FakeClock()
    faults = FaultTracker(clock)
    stop = asyncio.Event()
    task = asyncio.create_task(faults.run(stop))
    for _ in range(20):
        await yield_to_loop()
    assert clock.sleepers == 0  # nothing deferred: no timer (was one every second)
    tries: list[float] = []

    def retry() -> bool:
        tries.append(clock.monotonic())
        return len(tries) == 3

    faults.failed("state", "checkpoints", OSError(errno.ENOSPC, "full"), op="write",
                  retry=retry)
    await drive(clock, lambda: len(tries) == 3)
    assert [b - a for a, b in itertools.pairwise(tries)] == [RETRY_S, RETRY_S]
    for _ in range(20):
        await yield_to_loop()
    assert clock.sleepers == 0  # done: back to waiting
    stop.set()
    async with asyncio.timeout(5):
        await task


def test_a_started_daemon_imports_neither_redis_nor_the_statistics(tmp_path: Path) -> None:
    """The redis client (~8 MB, ~50 ms of start-up) is imported at the cache's
    first use and the statistics (repository, queries) at the first request
    for them, not by the app: a daemon that stores nothing and is asked
    nothing never holds them."""
    code = (
        "import sys, asyncio\n"
        "from sidecar.app import App\n"
        "from sidecar.config.settings import Settings\n"
        "from sidecar.read.service import ReadSide\n"
        f"s = Settings.model_validate({{'spool': {{'dir': {str(tmp_path / 's')!r}, "
        f"'state_dir': {str(tmp_path / 't')!r}}}}})\n"
        "app = App(s)\n"
        "async def main():\n"
        "    async with ReadSide(s, app.clock) as read:\n"
        "        read.cache_stats()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('redis', 'sidecar.read.stats', 'sidecar.read.repository')"
        " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
