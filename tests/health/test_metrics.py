"""/metrics text: every value equals the snapshot it was read from."""

from __future__ import annotations

import errno

from prometheus_client.parser import text_string_to_metric_families

from sidecar.clock import FakeClock
from sidecar.config.settings import HealthSettings
from sidecar.health.metrics import Metrics
from sidecar.health.monitor import SelfMonitor
from sidecar.snapshots import SinkStats, SpoolStats
from sidecar.spool.faults import FaultTracker
from sidecar.spool.quarantine import QuarantineStats

from .conftest import SinkFactory


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_snapshot_values_are_exported(make_sink: SinkFactory) -> None:
    sinks = [
        make_sink("postgres", records_read=100, records_shipped=90, records_quarantined=3,
                  batches_shipped=7, attempts_failed=4, rate_limited_total=1, lag_bytes=2048,
                  lag_records=7, lag_seconds=1.5, opened=2, oldest_unacked=1_700_000_000.5),
        make_sink("opik", breaker="half_open", records_read=5),
    ]
    metrics = Metrics(sinks=lambda: sinks, spool=lambda: SpoolStats(files=3, bytes=4096),
                      status=lambda: "degraded")
    got = samples(metrics)
    pg = (("sink", "postgres"),)
    expected = {
        "span_sidecar_records_read_total": 100, "span_sidecar_records_shipped_total": 90,
        "span_sidecar_records_quarantined_total": 3, "span_sidecar_batches_shipped_total": 7,
        # 4 attempts failed, one of them a 429: 3 failures and 1 back-pressure
        "span_sidecar_send_failures_total": 3, "span_sidecar_send_backpressure_total": 1,
        "span_sidecar_oldest_unshipped_timestamp_seconds": 1_700_000_000.5,
        "span_sidecar_lag_bytes": 2048, "span_sidecar_lag_records": 7,
        "span_sidecar_lag_seconds": 1.5, "span_sidecar_breaker_opened_total": 2,
    }
    for name, value in expected.items():
        assert got[(name, pg)] == value, name
    assert got[("span_sidecar_records_read_total", (("sink", "opik"),))] == 5
    for sink, current in (("postgres", "closed"), ("opik", "half_open")):
        for state in ("closed", "open", "half_open"):
            key = ("span_sidecar_breaker_state", (("sink", sink), ("state", state)))
            assert got[key] == (1.0 if state == current else 0.0)
    assert got[("span_sidecar_spool_files", ())] == 3
    assert got[("span_sidecar_spool_bytes", ())] == 4096
    # the opik sink is current: no oldest-unshipped timestamp for it
    assert ("span_sidecar_oldest_unshipped_timestamp_seconds", (("sink", "opik"),)) not in got
    for status in ("healthy", "degraded", "unhealthy"):
        assert got[("span_sidecar_health_status", (("status", status),))] == (
            1.0 if status == "degraded" else 0.0)


def test_values_are_read_at_scrape_time(make_sink: SinkFactory) -> None:
    current: list[SinkStats] = [make_sink(records_shipped=1)]
    metrics = Metrics(sinks=lambda: current, spool=lambda: SpoolStats(0, 0),
                      status=lambda: "healthy")
    assert samples(metrics)[("span_sidecar_records_shipped_total", (("sink", "postgres"),))] == 1
    current[0] = make_sink(records_shipped=42)
    assert samples(metrics)[("span_sidecar_records_shipped_total", (("sink", "postgres"),))] == 42



def test_process_and_build_info_are_exported_and_names_do_not_repeat() -> None:
    """The process collector replaces the sidecar's own memory gauge."""
    import platform

    from sidecar import __version__

    metrics = Metrics(sinks=list, spool=lambda: SpoolStats(0, 0), status=lambda: "healthy")
    got = samples(metrics)
    for name in ("process_open_fds", "process_max_fds", "process_cpu_seconds_total",
                 "process_resident_memory_bytes"):
        assert got[(name, ())] > 0, name
    assert ("span_sidecar_resident_memory_bytes", ()) not in got
    info = (("python", platform.python_version()), ("version", __version__))
    assert got[("span_sidecar_build_info", info)] == 1
    assert not any(name == "span_sidecar_rate_limited_total" for name, _ in got)


def test_monitor_observations_feed_the_duration_histogram(
    health_settings: HealthSettings, clock: FakeClock
) -> None:
    metrics = Metrics(sinks=list, spool=lambda: SpoolStats(0, 0), status=lambda: "healthy")
    monitor = SelfMonitor(health_settings, clock, recorder=metrics)
    for seconds in (0.002, 0.003, 0.7):
        monitor.observe("sink_send", seconds, "postgres")
    got = samples(metrics)
    op = (("op", "sink_send"), ("sink", "postgres"))
    assert got[("span_sidecar_operation_duration_seconds_count", op)] == 3
    assert abs(got[("span_sidecar_operation_duration_seconds_sum", op)] - 0.705) < 1e-9
    le = (("le", "0.005"), ("op", "sink_send"), ("sink", "postgres"))
    assert got[("span_sidecar_operation_duration_seconds_bucket", le)] == 2


def test_instances_use_private_registries() -> None:
    """Two apps (or tests) in one process must not collide on metric names."""
    first = Metrics(sinks=list, spool=lambda: SpoolStats(0, 0), status=lambda: "healthy")
    second = Metrics(sinks=list, spool=lambda: SpoolStats(0, 0), status=lambda: "healthy")
    first.observe("cache", 0.1)
    assert b'op="cache"' in first.render()
    assert b'op="cache"' not in second.render()


def test_resource_faults_and_the_quarantine_cap_are_exported() -> None:
    clock = FakeClock()
    faults = FaultTracker(clock)
    for _ in range(3):
        faults.failed("quarantine", "postgres", OSError(errno.ENOSPC, "full"), op="write")
    faults.failed("spool", "postgres", OSError(errno.EMFILE, "limit"), op="open")
    faults.cleared("spool", "postgres")
    metrics = Metrics(sinks=list, spool=lambda: SpoolStats(0, 0), status=lambda: "degraded")
    metrics.add_resources(faults.stats, lambda: [QuarantineStats("postgres", 7, 9000, 2)])
    got = samples(metrics)
    assert got[("span_sidecar_resource_faults_total",
                (("errno", "ENOSPC"), ("resource", "quarantine")))] == 3
    assert got[("span_sidecar_resource_faults_total",
                (("errno", "EMFILE"), ("resource", "spool")))] == 1
    active = {labels[0][1]: v for (name, labels), v in got.items()
              if name == "span_sidecar_resource_faults_active"}
    assert active == {"spool": 0, "quarantine": 1, "state": 0}
    assert got[("span_sidecar_quarantine_dropped_total", (("sink", "postgres"),))] == 7
    assert got[("span_sidecar_quarantine_held", (("sink", "postgres"),))] == 2


def test_the_content_type_is_prometheus_clients() -> None:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    from sidecar.health.metrics import CONTENT_TYPE

    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4


LAZY = """
import sys
from sidecar.app import App
from sidecar.health.http import HttpServer
from sidecar.health.metrics import Metrics
from sidecar.snapshots import SpoolStats
m = Metrics(sinks=list, spool=lambda: SpoolStats(0, 0), status=lambda: "healthy")
m.observe("batch_flush", 0.01, "postgres")
print("prometheus_client" in sys.modules)
assert b'span_sidecar_operation_duration_seconds_count{op="batch_flush"' in m.render()
print("prometheus_client" in sys.modules)
"""


def test_prometheus_client_is_loaded_by_the_first_scrape_not_before() -> None:
    """A sidecar nobody scrapes keeps prometheus-client (~1 MB) out of its memory;
    the histograms record all along."""
    import subprocess
    import sys

    from tests.support import REPO

    out = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
