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
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from sidecar.health.monitor import STATUSES, rss_bytes
from sidecar.stats import BreakerState, PolicyStats, QuotaStats, SinkStats, SpoolStats

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PREFIX = "span_sidecar_"
BREAKER_STATES: tuple[BreakerState, ...] = ("closed", "open", "half_open")
# From a cache hit (sub-millisecond) to a slow Opik request (tens of seconds).
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)

# (metric name without prefix, help, SinkStats field) for the per-sink numbers.
_SINK_COUNTERS = (
    ("records_read", "Parsed records handed to the sink's batches.", "records_read"),
    ("records_shipped", "Records acknowledged by the sink.", "records_shipped"),
    ("records_quarantined", "Records quarantined (parse or sink rejects).",
     "records_quarantined"),
    ("batches_shipped", "Batches acknowledged by the sink.", "batches_shipped"),
    ("send_failures", "Send attempts answered with retry (429 included).", "attempts_failed"),
    ("rate_limited", "Send attempts answered with 429.", "rate_limited_total"),
)
_SINK_GAUGES = (
    ("lag_bytes", "Spool bytes not yet acknowledged by the sink.", "lag_bytes"),
    ("lag_records", "Records read but not yet acknowledged by the sink.", "lag_records"),
    ("lag_seconds", "Age of the oldest unacknowledged data (0 when current).", "lag_seconds"),
)


class SnapshotCollector(Collector):
    """Turns the snapshots returned by the callables into metric families."""

    def __init__(
        self,
        sinks: Callable[[], Sequence[SinkStats]],
        spool: Callable[[], SpoolStats],
        status: Callable[[], str],
        rss: Callable[[], int] = rss_bytes,
    ) -> None:
        self._sinks = sinks
        self._spool = spool
        self._status = status
        self._rss = rss

    def describe(self) -> Iterable[Metric]:
        # Registration must not call the snapshot callables (the components
        # may not exist yet); names are unique by construction.
        return ()

    def collect(self) -> Iterable[Metric]:
        sinks = self._sinks()
        yield from _sink_families(sinks)
        yield from _breaker_families(sinks)
        spool = self._spool()
        yield _gauge("spool_files", "Spool files being tracked.", spool.files)
        yield _gauge("spool_bytes", "Bytes in the spool files being tracked.", spool.bytes)
        yield _gauge("resident_memory_bytes", "Resident memory of the sidecar.", self._rss())
        health = GaugeMetricFamily(
            PREFIX + "health_status", "1 for the current health status.", labels=["status"]
        )
        current = self._status()
        for status in STATUSES:
            health.add_metric([status], 1.0 if status == current else 0.0)
        yield health


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


def _sink_families(sinks: Sequence[SinkStats]) -> Iterable[Metric]:
    for name, help_text, field in _SINK_COUNTERS:
        counter = CounterMetricFamily(PREFIX + name, help_text, labels=["sink"])
        for stats in sinks:
            counter.add_metric([stats.sink], getattr(stats, field))
        yield counter
    for name, help_text, field in _SINK_GAUGES:
        gauge = GaugeMetricFamily(PREFIX + name, help_text, labels=["sink"])
        for stats in sinks:
            gauge.add_metric([stats.sink], getattr(stats, field))
        yield gauge


def _breaker_families(sinks: Sequence[SinkStats]) -> Iterable[Metric]:
    state = GaugeMetricFamily(
        PREFIX + "breaker_state", "1 for the breaker's current state.", labels=["sink", "state"]
    )
    opened = CounterMetricFamily(
        PREFIX + "breaker_opened", "Times the sink's breaker opened.", labels=["sink"]
    )
    for stats in sinks:
        for name in BREAKER_STATES:
            state.add_metric([stats.sink, name], 1.0 if stats.breaker.state == name else 0.0)
        opened.add_metric([stats.sink], stats.breaker.opened_total)
    yield state
    yield opened


class PolicyCollector(Collector):
    """Sampling, redaction, truncation and spool-quota figures from snapshots.

    Labels are bounded: agents (50 + "other", see the pipeline), pattern names
    from code and config, the five field names, one drop reason.
    """

    def __init__(self, sinks: Callable[[], Sequence[SinkStats]],
                 policies: Callable[[], PolicyStats], quota: Callable[[], QuotaStats]) -> None:
        self._sinks, self._policies, self._quota = sinks, policies, quota

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        sampled = CounterMetricFamily(
            PREFIX + "records_sampled_out", "Records dropped by sampling (acknowledged).",
            labels=["sink", "agent"])
        for stats in self._sinks():
            for agent, n in stats.sampled_out_by_agent:
                sampled.add_metric([stats.sink, agent], n)
        yield sampled
        policies = self._policies()
        yield _labelled("redactions", "Values masked by redaction, per pattern.", "pattern",
                        policies.redactions)
        yield _labelled("fields_truncated", "Fields cut to spans.max_field_bytes.", "field",
                        policies.truncated)
        quota = self._quota()
        yield _labelled("records_dropped", "Records deleted unshipped from the spool.",
                        "reason", (("spool_full", quota.dropped_records),))
        if quota.max_bytes is not None:
            yield _gauge("spool_quota_bytes", "spool.max_bytes.", quota.max_bytes)


def _labelled(name: str, help_text: str, label: str,
              values: Iterable[tuple[str, int]]) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, help_text, labels=[label])
    for value, n in values:
        family.add_metric([value], n)
    return family


class DurationHistograms:
    """Cumulative duration histograms per op, exported as one metric family."""

    def __init__(self, bounds: Sequence[float] = DURATION_BUCKETS) -> None:
        self._bounds = tuple(bounds)
        self._labels = [repr(float(b)) for b in self._bounds] + ["+Inf"]
        # per (op, sink): one count per bucket, +Inf last
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def observe(self, op: str, seconds: float, sink: str = "") -> None:
        """Count one duration in its bucket (``le`` semantics: bound >= value)."""
        key = (op, sink)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * len(self._labels)
            self._sums[key] = 0.0
        seconds = seconds if seconds > 0.0 else 0.0
        counts[bisect_left(self._bounds, seconds)] += 1
        self._sums[key] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            PREFIX + "operation_duration_seconds",
            "Duration of the sidecar's own operations (sink empty for the sidecar's own).",
            labels=["op", "sink"],
        )
        for key, counts in self._counts.items():
            buckets = list(zip(self._labels, accumulate(counts), strict=True))
            family.add_metric(list(key), buckets, sum_value=self._sums[key])
        return family


class _HistogramCollector(Collector):
    def __init__(self, histograms: DurationHistograms) -> None:
        self._histograms = histograms

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        yield self._histograms.family()


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
        rss: Callable[[], int] = rss_bytes,
        policies: Callable[[], PolicyStats] = PolicyStats,
        quota: Callable[[], QuotaStats] = lambda: QuotaStats(None, 0, "keep"),
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.durations = DurationHistograms()
        # The bound method is the DurationRecorder's observe: one call, no wrapper.
        self.observe: Callable[[str, float, str], None] = self.durations.observe
        self.registry.register(_HistogramCollector(self.durations))
        self.registry.register(SnapshotCollector(sinks, spool, status, rss))
        self.registry.register(PolicyCollector(sinks, policies, quota))

    def render(self) -> bytes:
        """The exposition text (``CONTENT_TYPE``); calls the snapshot callables."""
        return generate_latest(self.registry)
