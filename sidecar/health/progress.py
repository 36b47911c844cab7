"""Catch-up progress: rates and ETAs from ``SinkStats`` snapshots over time.

A small component in the app's TaskGroup: every ``SAMPLE_S`` while a sink is
behind it samples each sink's snapshot, every ``QUIET_SAMPLE_S`` while none
is (an idle sidecar, or one keeping up with a trickle, need not wake every
second: a sample cost ~0.2 ms, 2 % of a sidecar's CPU at 100 spans/s), keeps
``WINDOW_S`` of samples, and derives

- ``records_per_s`` and ``bytes_per_s``: what the sink acknowledged per second;
- ``drain_bytes_per_s``: how fast the backlog shrinks (shipping minus what
  agents add meanwhile), and from it ``eta_s``, the time until the sink is
  current (None while the backlog does not shrink);
- ``behind_records``: the backlog in bytes over the recent bytes per record.

While a sink is behind (its oldest unshipped byte is ``BEHIND_AFTER_S`` old
or older) it logs ``sink.catchup.progressed`` at info every ``LOG_EVERY_S``;
``sink.catchup.finished`` once when it is current again; nothing otherwise.
``GET /status`` serves ``report()`` to ``span-sidecar status``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from sidecar.clock import Clock
from sidecar.snapshots import SinkStats

log = structlog.get_logger("sidecar.progress")

SAMPLE_S = 1.0
QUIET_SAMPLE_S = 5.0  # while no sink is behind (as long as BEHIND_AFTER_S)
WINDOW_S = 30.0
LOG_EVERY_S = 5.0
BEHIND_AFTER_S = 5.0


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    records: int
    bytes: int
    lag_bytes: int


@dataclass(frozen=True, slots=True)
class SinkProgress:
    """One sink's pace over the last ``WINDOW_S`` (None: not measurable yet)."""

    sink: str
    behind: bool
    records_per_s: float | None
    bytes_per_s: float | None
    drain_bytes_per_s: float | None
    behind_bytes: int
    behind_records: int | None
    eta_s: float | None
    lag_seconds: float


def _backlog_start(samples: deque[_Sample]) -> _Sample:
    """The first sample of the current backlog (after the last one with no lag).

    The drain is measured from there: a backlog that appears at once (files
    found at start, or after an outage) is not an arrival rate to subtract.
    """
    start = samples[0]
    for before, sample in zip(samples, list(samples)[1:], strict=False):
        if before.lag_bytes == 0:
            start = sample
    return start


def _pace(samples: deque[_Sample], stats: SinkStats, behind: bool) -> SinkProgress:
    first, last = samples[0], samples[-1]
    span = last.at - first.at
    if span <= 0:
        return SinkProgress(stats.sink, behind, None, None, None, stats.lag_bytes, None, None,
                            stats.lag_seconds)
    records = (last.records - first.records) / span
    shipped = (last.bytes - first.bytes) / span
    start = _backlog_start(samples)
    drain = ((start.lag_bytes - last.lag_bytes) / (last.at - start.at)
             if last.at > start.at else 0.0)
    per_record = (last.bytes - first.bytes) / max(1, last.records - first.records) + 1
    behind_records = round(stats.lag_bytes / per_record) if records > 0 else None
    eta = stats.lag_bytes / drain if drain > 0 else (0.0 if stats.lag_bytes == 0 else None)
    return SinkProgress(stats.sink, behind, round(records, 1), round(shipped, 1),
                        round(drain, 1), stats.lag_bytes, behind_records,
                        None if eta is None else round(eta, 1), round(stats.lag_seconds, 1))


class Progress:
    """Samples sink snapshots on the injected clock; logs catch-ups; reports paces."""

    def __init__(self, sinks: Callable[[], Sequence[SinkStats]], clock: Clock) -> None:
        self._sinks = sinks
        self._clock = clock
        self._samples: dict[str, deque[_Sample]] = {}
        self._behind_since: dict[str, float] = {}
        self._last_log: dict[str, float] = {}
        self._latest: dict[str, SinkProgress] = {}
        self.quiet = False  # at the last sample: no sink behind

    def tick(self) -> None:
        """Take one sample of every sink; log where a catch-up stands."""
        now = self._clock.monotonic()
        quiet = True
        for stats in self._sinks():
            samples = self._samples.setdefault(stats.sink, deque())
            samples.append(_Sample(now, stats.records_shipped, stats.bytes_shipped,
                                   stats.lag_bytes))
            while samples and now - samples[0].at > WINDOW_S:
                samples.popleft()
            behind = stats.lag_seconds >= BEHIND_AFTER_S
            quiet = quiet and not behind
            progress = self._latest[stats.sink] = _pace(samples, stats, behind)
            self._log(progress, now)
        self.quiet = quiet

    def _log(self, p: SinkProgress, now: float) -> None:
        if not p.behind:
            since = self._behind_since.pop(p.sink, None)
            if since is not None:
                log.info("sink.catchup.finished", sink=p.sink, took_s=round(now - since, 1))
            return
        self._behind_since.setdefault(p.sink, now)
        if now - self._last_log.get(p.sink, -LOG_EVERY_S) < LOG_EVERY_S:
            return
        self._last_log[p.sink] = now
        log.info("sink.catchup.progressed", sink=p.sink, records_per_s=p.records_per_s,
                 behind_bytes=p.behind_bytes, behind_records=p.behind_records,
                 oldest_s=p.lag_seconds, eta_s=p.eta_s)

    def snapshot(self) -> list[SinkProgress]:
        """The pace of each sink as of the last sample."""
        return list(self._latest.values())

    def report(self) -> dict[str, Any]:
        """What ``GET /status`` serves: each sink's snapshot plus its pace."""
        pace = {p.sink: asdict(p) for p in self.snapshot()}
        return {"sinks": [{**_stats_dict(s), **pace.get(s.sink, {})} for s in self._sinks()]}

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every ``SAMPLE_S`` (``QUIET_SAMPLE_S`` while quiet) until ``stop``."""
        self.tick()
        while not await self._clock.wait(stop, QUIET_SAMPLE_S if self.quiet else SAMPLE_S):
            self.tick()


def _stats_dict(s: SinkStats) -> dict[str, Any]:
    data = asdict(s)
    data["breaker"] = s.breaker.state
    return data
