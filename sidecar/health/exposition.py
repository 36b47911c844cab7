"""``/metrics`` in prometheus-client's exposition format, built at the first scrape.

The collectors read the components' frozen snapshots at scrape time (see
``sidecar/health/metrics.py``, which holds the sources and the duration
histograms); this module, and prometheus-client with it (~1 MB, with
http.server and urllib.request, which it imports), is loaded by the first
``GET /metrics``: a sidecar nobody scrapes never loads it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.health.metrics import BREAKER_STATES, PREFIX, DurationHistograms, Sources
from sidecar.health.monitor import STATUSES
from sidecar.health.resource_metrics import ResourceCollector
from sidecar.snapshots import CacheStats, PolicyStats, QuotaStats, SinkStats, SpoolStats

# (metric name without prefix, help, value) for the per-sink numbers.
_SINK_COUNTERS: tuple[tuple[str, str, Callable[[SinkStats], float]], ...] = (
    ("records_read", "Parsed records handed to the sink's batches.",
     lambda s: s.records_read),
    ("records_shipped", "Records acknowledged by the sink.", lambda s: s.records_shipped),
    ("records_quarantined", "Records quarantined (parse or sink rejects).",
     lambda s: s.records_quarantined),
    ("batches_shipped", "Batches acknowledged by the sink.", lambda s: s.batches_shipped),
    # Back-pressure is counted apart, so that an alert on failures does not
    # fire on rate limiting.
    ("send_failures", "Send attempts that failed (429 back-pressure excluded).",
     lambda s: max(0, s.attempts_failed - s.rate_limited_total)),
    ("send_backpressure", "Send attempts answered with back-pressure (HTTP 429, or the "
     "client-side rate limit).", lambda s: s.rate_limited_total),
)
_SINK_GAUGES: tuple[tuple[str, str, Callable[[SinkStats], float]], ...] = (
    ("lag_bytes", "Spool bytes not yet acknowledged by the sink.", lambda s: s.lag_bytes),
    ("lag_records", "Records read but not yet acknowledged by the sink.",
     lambda s: s.lag_records),
    ("lag_seconds", "Age of the oldest unacknowledged data (0 when current).",
     lambda s: s.lag_seconds),
)


class SnapshotCollector(Collector):
    """Turns the snapshots returned by the callables into metric families."""

    def __init__(
        self,
        sinks: Callable[[], Sequence[SinkStats]],
        spool: Callable[[], SpoolStats],
        status: Callable[[], str],
    ) -> None:
        self._sinks = sinks
        self._spool = spool
        self._status = status

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
        health = GaugeMetricFamily(
            PREFIX + "health_status", "1 for the current health status.", labels=["status"]
        )
        current = self._status()
        for status in STATUSES:
            health.add_metric([status], 1.0 if status == current else 0.0)
        yield health
        yield _build_info()


def _build_info() -> GaugeMetricFamily:
    info = GaugeMetricFamily(PREFIX + "build_info", "Always 1; the labels say what runs.",
                             labels=["version", "python"])
    info.add_metric([__version__, platform.python_version()], 1.0)
    return info


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


def _sink_families(sinks: Sequence[SinkStats]) -> Iterable[Metric]:
    for name, help_text, value in _SINK_COUNTERS:
        counter = CounterMetricFamily(PREFIX + name, help_text, labels=["sink"])
        for stats in sinks:
            counter.add_metric([stats.sink], value(stats))
        yield counter
    for name, help_text, value in _SINK_GAUGES:
        gauge = GaugeMetricFamily(PREFIX + name, help_text, labels=["sink"])
        for stats in sinks:
            gauge.add_metric([stats.sink], value(stats))
        yield gauge
    # Absent while the sink is current: 0 would read as 1970, and
    # ``time() - metric`` as a lag of 56 years.
    oldest = GaugeMetricFamily(
        PREFIX + "oldest_unshipped_timestamp_seconds",
        "Unix time the oldest byte not yet acknowledged by the sink was first seen "
        "(absent when the sink is current).", labels=["sink"])
    for stats in sinks:
        if stats.oldest_unacked is not None:
            oldest.add_metric([stats.sink], stats.oldest_unacked)
    yield oldest


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


def _duration_family(durations: DurationHistograms) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        PREFIX + "operation_duration_seconds",
        "Duration of the sidecar's own operations (sink empty for the sidecar's own).",
        labels=["op", "sink"],
    )
    labels = durations.labels
    for key, counts, total in durations.series():
        buckets = list(zip(labels, accumulate(counts), strict=True))
        family.add_metric(list(key), buckets, sum_value=total)
    return family


class _HistogramCollector(Collector):
    def __init__(self, histograms: DurationHistograms) -> None:
        self._histograms = histograms

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        yield _duration_family(self._histograms)


class CacheCollector(Collector):
    """The statistics cache's counters and its Redis breaker state."""

    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        requests = CounterMetricFamily(
            PREFIX + "cache_requests", "Statistics requests by how the cache answered them "
            "(fallback: from memory while Redis failed).", labels=["backend", "result"])
        for result, value in (("hit", s.hits), ("miss", s.misses), ("fallback", s.fallbacks)):
            requests.add_metric([s.backend, result], value)
        yield requests
        yield CounterMetricFamily(PREFIX + "cache_errors", "Failed Redis calls of the cache.",
                                  value=s.errors)
        yield CounterMetricFamily(PREFIX + "cache_invalidations",
                                  "Stored batches that invalidated cached statistics.",
                                  value=s.invalidations)
        state = GaugeMetricFamily(PREFIX + "cache_redis_breaker_state",
                                  "1 for the state of the cache's Redis breaker.",
                                  labels=["state"])
        for name in BREAKER_STATES:
            state.add_metric([name], 1.0 if s.redis == name else 0.0)
        yield state


def build_registry(sources: Sources) -> CollectorRegistry:
    """A private registry (nothing in prometheus-client's global one, so several
    instances never collide) holding every family of ``sources``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HistogramCollector(sources.durations))
    registry.register(SnapshotCollector(sources.sinks, sources.spool, sources.status))
    registry.register(PolicyCollector(sources.sinks, sources.policies, sources.quota))
    # process_open_fds, process_max_fds, process_cpu_seconds_total,
    # process_resident_memory_bytes, ... (each sink holds at most a few
    # spool files open; the rest is sockets, the quarantine, inotify).
    ProcessCollector(registry=registry)
    if sources.resources is not None:
        registry.register(ResourceCollector(*sources.resources))
    if sources.cache is not None:
        registry.register(CacheCollector(sources.cache))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
