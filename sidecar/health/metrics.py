"""Prometheus exposition for ``/metrics``, in a private registry.

The counters and gauges are not kept here: a collector reads the components'
frozen snapshots at scrape time, so the numbers in
``/metrics``, the health span and ``span-sidecar status`` are the same ones.
Only the operation latency histograms hold state, fed through
``SelfMonitor(recorder=metrics)``; they are plain lists exported by the same
collector rather than prometheus-client ``Histogram`` objects, whose lock and
bookkeeping cost ~10x more per observation (the sidecar is single-threaded:
observations and scrapes both run on the event loop). Nothing is registered in prometheus-client's
global registry, so several instances (tests, one per app) never collide.

This module only holds the sources and the histograms; the collectors and
prometheus-client are loaded at the first scrape (``health/exposition.py``):
a sidecar nobody scrapes keeps them (~1 MB) out of its memory.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar.snapshots import (
    BreakerState,
    CacheStats,
    PolicyStats,
    QuotaStats,
    SinkStats,
    SpoolStats,
)
from sidecar.spool.faults import FaultStats
from sidecar.spool.quarantine import QuarantineStats

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# prometheus-client's CONTENT_TYPE_PLAIN_0_0_4 (checked by a test).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "span_sidecar_"
BREAKER_STATES: tuple[BreakerState, ...] = ("closed", "open", "half_open")
# From a cache hit (sub-millisecond) to a slow Opik request (tens of seconds).
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)


class DurationHistograms:
    """Cumulative duration histograms per op, exported as one metric family."""

    def __init__(self, bounds: Sequence[float] = DURATION_BUCKETS) -> None:
        self._bounds = tuple(bounds)
        self.labels = [repr(float(b)) for b in self._bounds] + ["+Inf"]
        # per (op, sink): one count per bucket, +Inf last
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def observe(self, op: str, seconds: float, sink: str = "") -> None:
        """Count one duration in its bucket (``le`` semantics: bound >= value)."""
        key = (op, sink)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * len(self.labels)
            self._sums[key] = 0.0
        seconds = seconds if seconds > 0.0 else 0.0
        counts[bisect_left(self._bounds, seconds)] += 1
        self._sums[key] += seconds

    def series(self) -> Iterator[tuple[tuple[str, str], list[int], float]]:
        """Per (op, sink): the count of each bucket (not cumulative) and the sum."""
        for key, counts in self._counts.items():
            yield key, counts, self._sums[key]


@dataclass(slots=True)
class Sources:
    """What ``/metrics`` reads at scrape time."""

    durations: DurationHistograms
    sinks: Callable[[], Sequence[SinkStats]]
    spool: Callable[[], SpoolStats]
    status: Callable[[], str]
    policies: Callable[[], PolicyStats]
    quota: Callable[[], QuotaStats]
    resources: tuple[Callable[[], FaultStats],
                     Callable[[], Sequence[QuarantineStats]]] | None = None
    cache: Callable[[], CacheStats] | None = None


class Metrics:
    """The ``/metrics`` document: snapshot metrics plus operation histograms.

    Pass it as ``recorder`` to ``SelfMonitor`` so that every observed duration
    also lands in ``span_sidecar_operation_duration_seconds{op}``.
    """

    def __init__(
        self,
        sinks: Callable[[], Sequence[SinkStats]],
        spool: Callable[[], SpoolStats],
        status: Callable[[], str],
        policies: Callable[[], PolicyStats] = PolicyStats,
        quota: Callable[[], QuotaStats] = lambda: QuotaStats(None, 0, "keep"),
    ) -> None:
        self.durations = DurationHistograms()
        # The bound method is the DurationRecorder's observe: one call, no wrapper.
        self.observe: Callable[[str, float, str], None] = self.durations.observe
        self._sources = Sources(self.durations, sinks, spool, status, policies, quota)
        self._registry: CollectorRegistry | None = None  # built at the first render

    def add_resources(self, faults: Callable[[], FaultStats],
                      quarantines: Callable[[], Sequence[QuarantineStats]]) -> None:
        """Export resource faults and the quarantine cap (``span_sidecar_resource_*``,
        ``span_sidecar_quarantine_*``)."""
        self._sources.resources = (faults, quarantines)
        self._registry = None

    def add_cache(self, stats: Callable[[], CacheStats]) -> None:
        """Export the statistics cache's counters (``span_sidecar_cache_*``)."""
        self._sources.cache = stats
        self._registry = None

    def render(self) -> bytes:
        """The exposition text (``CONTENT_TYPE``); calls the snapshot callables."""
        from sidecar.health import exposition

        if self._registry is None:
            self._registry = exposition.build_registry(self._sources)
        return exposition.render(self._registry)
