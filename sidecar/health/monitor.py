"""The self-monitor: latency per operation and the healthy/degraded/unhealthy verdict.

One ``SelfMonitor`` is built by the app and passed to whatever times work
(pipelines, sinks, the cache); it replaces the original design's
``get_self_monitor()`` singleton. The verdict is computed from the frozen
``SinkStats`` snapshots the pipelines report, never from their insides.

Each reason of the verdict says when it clears on its own (``Finding``): an
error rate or a latency when the window no longer holds what produced it (a
wall time, at the latest: new failures or slow calls move it), a lag, a
breaker or the quota when the condition ends (said in words). A sink whose
breaker closed again after being open has recovered: its error rate and its
latencies are judged on what happened since then, so the outage that the
breaker already reported does not keep the verdict for a whole window
(README, "Health").
"""

from __future__ import annotations

import os
import resource
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import structlog

from sidecar.clock import Clock
from sidecar.config.settings import HealthSettings
from sidecar.health.latency import LatencySnapshot, LatencyWindow
from sidecar.health.verdict import STATUSES, Finding, HealthStatus, Status
from sidecar.health.verdict import check as _check
from sidecar.snapshots import QuotaStats, SinkStats

log = structlog.get_logger("sidecar.health")

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


__all__ = ["STATUSES", "DurationRecorder", "Finding", "HealthStatus", "SelfMonitor", "Status",
           "rss_bytes"]


class DurationRecorder(Protocol):
    """Where durations also go, e.g. the Prometheus histograms of ``Metrics``."""

    def observe(self, op: str, seconds: float, sink: str) -> None: ...


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
        self.breaker: tuple[str, int] = ("closed", 0)  # state, opened_total last seen

    def rebase(self, now: float, attempts: int, errors: int) -> None:
        """Judge from here on only (the sink recovered): forget earlier attempts."""
        self._samples = deque([(now, attempts, errors)])

    def clears_at(self, now: float, errors: int) -> float:
        """When the window stops holding any of the failures counted up to ``errors``
        (monotonic): when the first sample that saw them all becomes its base."""
        for at, _, seen in self._samples:
            if seen >= errors:
                return at + self._window_s
        return max(now, self._samples[-1][0] + self._step_s) + self._window_s

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
        faults: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self._settings = settings
        self._quota = quota
        self._faults = faults  # exhausted resources going on now (sidecar/spool/faults.py)
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

    def explain(self) -> dict[str, Any]:
        """The last verdict with each reason and when it clears, counted from now
        (``GET /status``, ``/readyz`` and ``span-sidecar status`` show this)."""
        return {"status": self._status.status,
                "reasons": self._status.explain(self._clock.wall())}

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
        findings: list[Finding] = []
        for stats in sinks:
            findings.extend(self._judge_sink(stats, now))
        findings.extend(self._judge_latency(now))
        findings.extend(self._judge_quota())
        findings.extend(self._judge_faults())
        worst = max((STATUSES.index(f.level) for f in findings), default=0)
        result = HealthStatus(STATUSES[worst], tuple(f.reason for f in findings),
                              tuple(findings))
        self._record(result)
        return result

    def _wall(self, monotonic: float) -> float:
        """A monotonic time of this clock as a wall time."""
        return self._clock.wall() + (monotonic - self._clock.monotonic())

    def _judge_sink(self, stats: SinkStats, now: float) -> Iterator[Finding]:
        limits = self._settings.thresholds
        yield from self._judge_errors(stats, now)
        lag = _check(f"{stats.sink}: lag", stats.lag_seconds, " s",
                     limits.lag_warning_s, limits.lag_critical_s)
        if lag is not None:
            yield Finding(*lag, clears_when=f"when the lag is under {limits.lag_warning_s:g} s")
        if stats.breaker.state != "closed":
            yield Finding("degraded", f"{stats.sink}: breaker {stats.breaker.state}",
                          clears_when="when a trial send succeeds and the breaker closes")

    def _judge_errors(self, stats: SinkStats, now: float) -> Iterator[Finding]:
        """The error rate over the window, or since the sink recovered if later."""
        limits = self._settings.thresholds
        rate = self._rates.get(stats.sink)
        if rate is None:
            rate = self._rates[stats.sink] = _ErrorRate(self._settings.window_s, self._started)
        total = stats.batches_shipped + stats.attempts_failed
        errors_total = max(0, stats.attempts_failed - stats.rate_limited_total)
        breaker = (stats.breaker.state, stats.breaker.opened_total)
        if breaker[0] == "closed" and breaker != rate.breaker:  # closed again after open
            rate.rebase(now, total, errors_total)
            self._restart_latency(stats.sink)
        rate.breaker = breaker
        attempts, errors = rate.update(now, total, errors_total)
        if attempts < MIN_ATTEMPTS:
            return
        found = _check(f"{stats.sink}: error rate", 100.0 * errors / attempts, "%",
                       100.0 * limits.error_rate_warning, 100.0 * limits.error_rate_critical)
        if found is not None:
            yield Finding(*found, clears_at=self._wall(rate.clears_at(now, errors_total)))

    def _judge_faults(self) -> Iterator[Finding]:
        """An exhausted resource (file limit, full disk, EIO) is waited out:
        degraded while it lasts, nothing is acknowledged past it."""
        for reason in self._faults() if self._faults is not None else ():
            yield Finding("degraded", f"resource fault: {reason}",
                          clears_when="when the resource is available again (retried every second)")

    def _restart_latency(self, sink: str) -> None:
        """A recovered sink's latency is judged from now: the batches that waited
        out the outage (a flush times its retries) finish just after it and
        would hold a p95 for a window. Prometheus's histograms keep them."""
        for (_, of), window in self._windows.items():
            if of == sink:
                window.reset()

    def _judge_quota(self) -> Iterator[Finding]:
        quota = self._quota() if self._quota is not None else None
        if quota is not None and quota.max_bytes:
            used = 100.0 * quota.bytes / quota.max_bytes
            found = _check("spool: quota used", used, "%", QUOTA_WARNING_PCT,
                           QUOTA_CRITICAL_PCT)
            if found is not None:
                yield Finding(*found, clears_when=f"when the spool is under "
                              f"{QUOTA_WARNING_PCT:g}% of spool.max_bytes")

    def _judge_latency(self, now: float) -> Iterator[Finding]:
        limits = self._settings.thresholds
        for (op, sink), window in self._windows.items():
            snap = window.snapshot()
            if not snap.count:
                continue
            subject = f"{sink}: {op}" if sink else op
            found = _check(f"{subject}: p95 latency", snap.p95, " ms",
                           limits.latency_p95_warning_ms, limits.latency_p95_critical_ms)
            if found is not None:
                slow_ms = limits.latency_p95_warning_ms
                clears = window.clears_at(slow_ms)
                yield Finding(*found, clears_at=self._wall(
                    now + window.window_s if clears is None else clears))

    def _record(self, result: HealthStatus) -> None:
        old = self._status
        self._status = result
        if old.status != result.status:
            emit = log.info if result.status == "healthy" else log.warning
            emit("health.status.changed", old=old.status, new=result.status,
                 reasons=list(result.reasons))


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
