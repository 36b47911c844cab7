"""SelfMonitor: the verdict from thresholds, its transitions and their logging."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from sidecar.clock import FakeClock
from sidecar.config.settings import HealthSettings
from sidecar.health.monitor import MAX_OPERATIONS, SelfMonitor, rss_bytes

from .conftest import SinkFactory


def test_no_sinks_and_no_latency_is_healthy(health_settings: HealthSettings,
                                            clock: FakeClock) -> None:
    monitor = SelfMonitor(health_settings, clock)
    result = monitor.evaluate([])
    assert result.status == "healthy" and result.reasons == ()
    assert monitor.latencies() == {}  # windows appear as operations are observed


def test_transitions_healthy_degraded_unhealthy_healthy(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    assert monitor.evaluate([make_sink(batches_shipped=10)]).status == "healthy"

    clock.advance(60)
    degraded = monitor.evaluate([make_sink(batches_shipped=20, lag_seconds=90.0)])
    assert degraded.status == "degraded"
    assert degraded.reasons == ("postgres: lag 90 s >= warning 60 s",)

    clock.advance(60)  # 30 failed sends out of 50 in the window: 60% >= 50%
    unhealthy = monitor.evaluate([make_sink(batches_shipped=20, attempts_failed=30)])
    assert unhealthy.status == "unhealthy"
    assert unhealthy.reasons == ("postgres: error rate 60% >= critical 50%",)

    clock.advance(400)  # the failures leave the window; sends succeed again
    healthy = monitor.evaluate([make_sink(batches_shipped=60, attempts_failed=30)])
    assert healthy.status == "healthy" and healthy.reasons == ()
    assert monitor.status == healthy


def test_each_status_change_is_logged_once(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    with capture_logs() as logs:
        monitor.evaluate([make_sink()])
        for _ in range(3):
            monitor.evaluate([make_sink(lag_seconds=700.0)])
        monitor.evaluate([make_sink()])
    changes = [e for e in logs if e["event"] == "health.status.changed"]
    assert [(e["old"], e["new"]) for e in changes] == [
        ("healthy", "unhealthy"), ("unhealthy", "healthy")]
    assert changes[0]["reasons"] == ["postgres: lag 700 s >= critical 600 s"]
    assert changes[0]["log_level"] == "warning"


def test_open_or_half_open_breaker_is_at_least_degraded(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    result = monitor.evaluate([make_sink("opik", breaker="open"), make_sink("postgres")])
    assert result.status == "degraded"
    assert result.reasons == ("opik: breaker open",)
    assert monitor.evaluate([make_sink(breaker="half_open")]).status == "degraded"


def test_worst_finding_wins_and_all_reasons_are_kept(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    result = monitor.evaluate([make_sink("opik", breaker="open", lag_seconds=601.0)])
    assert result.status == "unhealthy"
    assert len(result.reasons) == 2


def test_rate_limits_are_not_errors(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    stats = make_sink(batches_shipped=10, attempts_failed=40, rate_limited_total=40)
    assert monitor.evaluate([stats]).status == "healthy"


def test_too_few_attempts_give_no_error_rate(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    assert monitor.evaluate([make_sink(attempts_failed=1)]).status == "healthy"
    assert monitor.evaluate([make_sink(batches_shipped=3, attempts_failed=2)]).status == "degraded"


def test_error_rate_warning_level(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    result = monitor.evaluate([make_sink(batches_shipped=80, attempts_failed=20)])
    assert result.status == "degraded"
    assert result.reasons == ("postgres: error rate 20% >= warning 10%",)


def test_error_rate_is_per_sink(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    result = monitor.evaluate([
        make_sink("postgres", batches_shipped=100),
        make_sink("opik", attempts_failed=10),
    ])
    assert result.reasons == ("opik: error rate 100% >= critical 50%",)


def test_p95_latency_thresholds(health_settings: HealthSettings, clock: FakeClock) -> None:
    monitor = SelfMonitor(health_settings, clock)
    for _ in range(100):
        monitor.observe("sink_send", 3.0, "postgres")
    result = monitor.evaluate([])
    assert result.status == "degraded"
    assert result.reasons[0].startswith("postgres: sink_send: p95 latency 3000 ms >= warning")
    for _ in range(900):
        monitor.observe("sink_send", 12.0, "opik")
    assert monitor.evaluate([]).status == "unhealthy"
    clock.advance(health_settings.window_s + 1)  # slow calls leave the window
    assert monitor.evaluate([]).status == "healthy"


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, str]] = []

    def observe(self, op: str, seconds: float, sink: str) -> None:
        self.seen.append((op, seconds, sink))


def test_observations_reach_the_recorder_and_new_ops_are_added(
    health_settings: HealthSettings, clock: FakeClock
) -> None:
    recorder = Recorder()
    monitor = SelfMonitor(health_settings, clock, recorder=recorder)
    monitor.observe("span_emit", 0.001)
    monitor.observe("sink_send", 0.5, "postgres")
    assert recorder.seen == [("span_emit", 0.001, ""), ("sink_send", 0.5, "postgres")]
    assert monitor.latency("sink_send", "postgres").count == 1
    assert monitor.latency("sink_send", "opik").count == 0  # labelled by sink
    assert monitor.latency("never_seen").count == 0


def test_timed_measures_with_the_clock_even_on_error(
    health_settings: HealthSettings, clock: FakeClock
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    with pytest.raises(RuntimeError), monitor.timed("batch_flush"):
        clock.advance(0.25)
        raise RuntimeError("flush failed")
    snap = monitor.latency("batch_flush")
    assert snap.count == 1 and snap.max == pytest.approx(250.0)


def test_operation_names_are_capped(health_settings: HealthSettings, clock: FakeClock) -> None:
    monitor = SelfMonitor(health_settings, clock)
    with capture_logs() as logs:
        for i in range(MAX_OPERATIONS + 10):
            monitor.observe(f"op{i}", 0.001)
    assert len(monitor.latencies()) == MAX_OPERATIONS
    assert any(e["event"] == "health.operation.dropped" for e in logs)


def test_rss_bytes_is_plausible() -> None:
    assert 1 << 20 < rss_bytes() < 1 << 40
