"""``/metrics`` families of exhausted resources and of the quarantine's cap.

Read from the fault tracker's and the quarantines' snapshots at scrape time,
like every other family (``sidecar/health/metrics.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.health.metrics import PREFIX
from sidecar.spool.faults import RESOURCES, FaultStats
from sidecar.spool.quarantine import QuarantineStats


class ResourceCollector(Collector):
    """Exhausted resources (``sidecar/spool/faults.py``) and the quarantine cap.

    Labels are bounded: three resources, six errno names, the enabled sinks.
    """

    def __init__(self, faults: Callable[[], FaultStats],
                 quarantines: Callable[[], Sequence[QuarantineStats]]) -> None:
        self._faults, self._quarantines = faults, quarantines

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        faults = self._faults()
        tries = CounterMetricFamily(
            PREFIX + "resource_faults", "Operations that failed for want of a resource "
            "(file limit, full disk, EIO), each retried later.", labels=["resource", "errno"])
        for resource, name, count in faults.failures:
            tries.add_metric([resource, name], count)
        yield tries
        active = GaugeMetricFamily(
            PREFIX + "resource_faults_active", "Resource fault episodes going on now "
            "(degraded while above 0).", labels=["resource"])
        for resource in RESOURCES:
            active.add_metric([resource], sum(1 for e in faults.active if e.resource == resource))
        yield active
        quarantines = self._quarantines()
        dropped = CounterMetricFamily(
            PREFIX + "quarantine_dropped", "Oldest quarantine entries dropped by "
            "quarantine.max_bytes.", labels=["sink"])
        held = GaugeMetricFamily(
            PREFIX + "quarantine_held", "Quarantine entries waiting for a resource fault "
            "to end (their lines are not acknowledged).", labels=["sink"])
        for q in quarantines:
            dropped.add_metric([q.sink], q.dropped_entries)
            held.add_metric([q.sink], q.held)
        yield dropped
        yield held
