"""Catch-up progress: logged at info while a sink is behind, quiet when it is current."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from sidecar.clock import FakeClock
from sidecar.health.progress import BEHIND_AFTER_S, LOG_EVERY_S, Progress
from sidecar.snapshots import BreakerStats, SinkStats
from tests.clocking import drive


class Backlog:
    """A sink draining a backlog at a fixed pace on the fake clock."""

    def __init__(self, clock: FakeClock, records: int, per_s: int, line_bytes: int = 100) -> None:
        self.clock, self.t0 = clock, clock.monotonic()
        self.records, self.per_s, self.line = records, per_s, line_bytes

    def stats(self) -> list[SinkStats]:
        shipped = min(self.records, int((self.clock.monotonic() - self.t0) * self.per_s))
        left = self.records - shipped
        return [SinkStats(
            sink="postgres", records_read=shipped, records_shipped=shipped,
            records_quarantined=0, batches_shipped=shipped // 100, attempts_failed=0,
            rate_limited_total=0, lag_bytes=left * self.line, lag_records=0,
            lag_seconds=600.0 if left else 0.0, breaker=BreakerStats("closed", 0, 0, 0),
            oldest_unacked=self.clock.wall() - 600 if left else None,
            bytes_shipped=shipped * (self.line - 1))]


async def run_for(clock: FakeClock, progress: Progress, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(progress.run(stop))
    end = clock.monotonic() + seconds
    await drive(clock, lambda: clock.monotonic() >= end)
    stop.set()
    await drive(clock, task.done)
    await task


async def test_a_catch_up_logs_rate_backlog_and_eta_every_few_seconds() -> None:
    clock = FakeClock()
    backlog = Backlog(clock, records=30_000, per_s=1_000)
    progress = Progress(backlog.stats, clock)
    with capture_logs() as logs:
        await run_for(clock, progress, 20.0)
    events = [e for e in logs if e["event"] == "sink.catchup.progressed"]
    assert 3 <= len(events) <= 20 / LOG_EVERY_S + 1  # every few seconds, not every sample
    last = events[-1]
    assert last["log_level"] == "info" and last["sink"] == "postgres"
    assert last["records_per_s"] == 1000.0
    assert 0 < last["behind_bytes"] < 30_000 * 100
    assert abs(last["behind_records"] - last["behind_bytes"] / 100) <= 1  # 100-byte lines
    assert abs(last["eta_s"] - last["behind_records"] / 1000) <= 0.1
    (pace,) = progress.snapshot()
    assert pace.behind and pace.records_per_s == 1000.0


async def test_the_end_of_a_catch_up_is_logged_once_then_quiet() -> None:
    clock = FakeClock()
    backlog = Backlog(clock, records=5_000, per_s=1_000)
    progress = Progress(backlog.stats, clock)
    with capture_logs() as logs:
        await run_for(clock, progress, 60.0)
    finished = [e for e in logs if e["event"] == "sink.catchup.finished"]
    assert len(finished) == 1 and 4.0 <= finished[0]["took_s"] <= 6.0
    after = logs[logs.index(finished[0]) + 1:]
    assert after == []  # current: nothing more
    (pace,) = progress.snapshot()
    assert not pace.behind and pace.eta_s == 0.0


async def test_a_current_sink_is_quiet() -> None:
    clock = FakeClock()
    progress = Progress(Backlog(clock, records=0, per_s=1).stats, clock)
    with capture_logs() as logs:
        await run_for(clock, progress, 30.0)
    assert logs == []


async def test_a_stalled_sink_has_no_eta_and_the_report_says_so() -> None:
    clock = FakeClock()
    backlog = Backlog(clock, records=1_000, per_s=0)
    progress = Progress(backlog.stats, clock)
    with capture_logs() as logs:
        await run_for(clock, progress, 2 * BEHIND_AFTER_S)
    assert logs and all(e["eta_s"] is None and not e["records_per_s"] for e in logs)
    report: dict[str, Any] = progress.report()
    (sink,) = report["sinks"]
    assert sink["sink"] == "postgres" and sink["eta_s"] is None and sink["breaker"] == "closed"
    assert sink["lag_bytes"] == 100_000
