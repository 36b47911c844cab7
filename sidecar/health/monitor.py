"""The self-monitor: latency per operation and the healthy/degraded/unhealthy verdict.

One ``SelfMonitor`` is built by the app and passed to whatever times work
(pipelines, sinks, the cache); it replaces the original design's
``get_self_monitor()`` singleton. The verdict is computed from the frozen
``SinkStats`` snapshots the pipelines report, never from their insides.
"""

from __future__ import annotations

import os
import resource
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from sidecar.clock import Clock
from sidecar.health.latency import LatencySnapshot, LatencyWindow
from sidecar.settings import HealthSettings
from sidecar.stats import QuotaStats, SinkStats

log = structlog.get_logger("sidecar.health")

Status = Literal["healthy", "degraded", "unhealthy"]
STATUSES: tuple[Status, ...] = ("healthy", "degraded", "unhealthy")
# (operation, sink): a pipeline's operations carry their sink's name, the
# sidecar's own ones (span_emit, cache) an empty one.
OpKey = tuple[str, str]
# Op names come from code, not input; the cap only guards against a bug
# (an op name built from data) turning the monitor into a memory leak.
MAX_OPERATIONS = 64
# An error rate over fewer attempts than this is noise (one failed send on an
# idle sidecar); persistent failure still shows through the breaker and lag.
MIN_ATTEMPTS = 5
# Counter samples per window kept for the error rate (bounds memory).
_SAMPLES_PER_WINDOW = 30
# Spool use against spool.max_bytes: degraded from here, unhealthy when full.
QUOTA_WARNING_PCT, QUOTA_CRITICAL_PCT = 90.0, 100.0


class DurationRecorder(Protocol):
    """Where durations also go, e.g. the Prometheus histograms of ``Metrics``."""

    def observe(self, op: str, seconds: float, sink: str) -> None: ...


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """The verdict and every threshold crossed (empty when healthy)."""

    status: Status
    reasons: tuple[str, ...] = ()


class _ErrorRate:
    """Failed send attempts over all attempts of one sink, over the window.

    The pipelines' counters only grow, so the rate over the window is the
    difference between now and the newest sample taken at or before the window
    start. Samples are kept at most every ``window / 30`` seconds.
    """

    def __init__(self, window_s: float, start: float) -> None:
        self._window_s = window_s
        self._step_s = window_s / _SAMPLES_PER_WINDOW
        # The counters are "since the process started", and so is the monitor.
        self._samples: deque[tuple[float, int, int]] = deque([(start, 0, 0)])

    def update(self, now: float, attempts: int, errors: int) -> tuple[int, int]:
        """Record the current counters; return (attempts, errors) within the window."""
        samples = self._samples
        if now - samples[-1][0] >= self._step_s:
            samples.append((now, attempts, errors))
        while len(samples) > 1 and samples[1][0] <= now - self._window_s:
            samples.popleft()
        _, base_attempts, base_errors = samples[0]
        return max(0, attempts - base_attempts), max(0, errors - base_errors)


class SelfMonitor:
    """Latency windows per operation plus the health verdict from thresholds."""

    def __init__(
        self, settings: HealthSettings, clock: Clock, recorder: DurationRecorder | None = None,
        quota: Callable[[], QuotaStats | None] | None = None,
    ) -> None:
        self._settings = settings
        self._quota = quota
        self._clock = clock
        self._recorder = recorder
        self._windows: dict[OpKey, LatencyWindow] = {}
        self._rates: dict[str, _ErrorRate] = {}
        self._status = HealthStatus("healthy")
        self._started = clock.monotonic()

    @property
    def status(self) -> HealthStatus:
        """The verdict of the last ``evaluate`` (healthy before the first)."""
        return self._status

    def observe(self, op: str, seconds: float, sink: str = "") -> None:
        """Record how long one ``op`` (of ``sink``) took; cheap enough for the hot path."""
        window = self._windows.get((op, sink))
        if window is None:
            window = self._add_operation((op, sink))
            if window is None:
                return
        window.observe(seconds)
        if self._recorder is not None:
            self._recorder.observe(op, seconds, sink)

    def _add_operation(self, key: OpKey) -> LatencyWindow | None:
        if len(self._windows) >= MAX_OPERATIONS:
            log.warning("health.operation.dropped", op=key[0][:64], sink=key[1][:64],
                        limit=MAX_OPERATIONS)
            return None
        window = self._windows[key] = LatencyWindow(self._settings.window_s, self._clock)
        return window

    @contextmanager
    def timed(self, op: str, sink: str = "") -> Iterator[None]:
        """Time the ``with`` block as one ``op`` (also when it raises)."""
        start = self._clock.monotonic()
        try:
            yield
        finally:
            self.observe(op, self._clock.monotonic() - start, sink)

    def latency(self, op: str, sink: str = "") -> LatencySnapshot:
        """The window of one op; zeros for an op never observed."""
        window = self._windows.get((op, sink))
        return window.snapshot() if window is not None else LatencySnapshot()

    def latencies(self) -> dict[OpKey, LatencySnapshot]:
        """The window of every op observed so far."""
        return {key: window.snapshot() for key, window in self._windows.items()}

    def evaluate(self, sinks: Sequence[SinkStats]) -> HealthStatus:
        """Judge health from the sinks' snapshots and the latency windows.

        Each threshold crossed adds a reason; the worst level wins. Error rate
        is ``failed / (failed + shipped batches)`` within the window, 429s
        excluded (they are back-pressure, as for the breaker). An open or
        half-open breaker is at least ``degraded``. A change of status is
        logged once as ``health.status.changed``.
        """
        now = self._clock.monotonic()
        findings: list[tuple[Status, str]] = []
        for stats in sinks:
            findings.extend(self._judge_sink(stats, now))
        findings.extend(self._judge_latency())
        findings.extend(self._judge_quota())
        worst = max((STATUSES.index(level) for level, _ in findings), default=0)
        result = HealthStatus(STATUSES[worst], tuple(reason for _, reason in findings))
        self._record(result)
        return result

    def _judge_sink(self, stats: SinkStats, now: float) -> Iterator[tuple[Status, str]]:
        limits = self._settings.thresholds
        rate = self._rates.get(stats.sink)
        if rate is None:
            rate = self._rates[stats.sink] = _ErrorRate(self._settings.window_s, self._started)
        errors_total = max(0, stats.attempts_failed - stats.rate_limited_total)
        attempts, errors = rate.update(
            now, stats.batches_shipped + stats.attempts_failed, errors_total
        )
        if attempts >= MIN_ATTEMPTS:
            rate_pct = 100.0 * errors / attempts
            yield from _check(f"{stats.sink}: error rate", rate_pct, "%",
                              100.0 * limits.error_rate_warning, 100.0 * limits.error_rate_critical)
        yield from _check(f"{stats.sink}: lag", stats.lag_seconds, " s",
                          limits.lag_warning_s, limits.lag_critical_s)
        if stats.breaker.state != "closed":
            yield "degraded", f"{stats.sink}: breaker {stats.breaker.state}"

    def _judge_quota(self) -> Iterator[tuple[Status, str]]:
        quota = self._quota() if self._quota is not None else None
        if quota is not None and quota.max_bytes:
            used = 100.0 * quota.bytes / quota.max_bytes
            yield from _check("spool: quota used", used, "%", QUOTA_WARNING_PCT,
                              QUOTA_CRITICAL_PCT)

    def _judge_latency(self) -> Iterator[tuple[Status, str]]:
        limits = self._settings.thresholds
        for (op, sink), window in self._windows.items():
            snap = window.snapshot()
            if snap.count:
                subject = f"{sink}: {op}" if sink else op
                yield from _check(f"{subject}: p95 latency", snap.p95, " ms",
                                  limits.latency_p95_warning_ms, limits.latency_p95_critical_ms)

    def _record(self, result: HealthStatus) -> None:
        old = self._status
        self._status = result
        if old.status != result.status:
            emit = log.info if result.status == "healthy" else log.warning
            emit("health.status.changed", old=old.status, new=result.status,
                 reasons=list(result.reasons))


def _check(
    subject: str, value: float, unit: str, warning: float, critical: float
) -> Iterator[tuple[Status, str]]:
    """One finding when ``value`` reaches a threshold, worded for an operator."""
    if value >= critical:
        yield "unhealthy", f"{subject} {value:.0f}{unit} >= critical {critical:g}{unit}"
    elif value >= warning:
        yield "degraded", f"{subject} {value:.0f}{unit} >= warning {warning:g}{unit}"


def rss_bytes() -> int:
    """This process's resident memory in bytes.

    Linux: the current RSS from ``/proc/self/statm``. Elsewhere the peak RSS
    from ``getrusage`` (the only portable number; kilobytes on Linux, bytes on
    macOS), which over-reports after memory is freed.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
