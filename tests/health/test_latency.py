"""LatencyWindow: exact aggregates, percentiles within the bin resolution, expiry."""

from __future__ import annotations

import math

import pytest

from sidecar.clock import FakeClock
from sidecar.health.latency import LatencySnapshot, LatencyWindow


def close(actual: float, expected: float, rel: float = 0.03) -> bool:
    return math.isclose(actual, expected, rel_tol=rel)


def test_empty_window_reports_zeros(clock: FakeClock) -> None:
    assert LatencyWindow(60, clock).snapshot() == LatencySnapshot()


def test_aggregates_are_exact_and_percentiles_within_bin_resolution(clock: FakeClock) -> None:
    window = LatencyWindow(60, clock)
    for ms in range(100, 0, -1):  # 1..100 ms, out of order
        window.observe(ms / 1000)
    snap = window.snapshot()
    assert snap.count == 100
    assert snap.min == pytest.approx(1.0)
    assert snap.max == pytest.approx(100.0)
    assert snap.mean == pytest.approx(50.5)
    assert close(snap.p50, 50) and close(snap.p95, 95) and close(snap.p99, 99)


def test_single_sample_percentiles_are_that_sample(clock: FakeClock) -> None:
    window = LatencyWindow(60, clock)
    window.observe(0.2345)
    snap = window.snapshot()
    assert snap.p50 == snap.p95 == snap.p99 == pytest.approx(234.5)


def test_percentiles_span_microseconds_to_minutes(clock: FakeClock) -> None:
    window = LatencyWindow(60, clock)
    for seconds in (0.00005, 0.003, 2.0, 45.0):
        for _ in range(25):
            window.observe(seconds)
    snap = window.snapshot()
    assert close(snap.p50, 3.0)
    assert close(snap.p95, 45_000) and snap.max == pytest.approx(45_000)
    assert snap.min == pytest.approx(0.05)


def test_huge_negative_and_nan_durations_are_bounded(clock: FakeClock) -> None:
    window = LatencyWindow(60, clock)
    window.observe(-1.0)
    window.observe(float("nan"))
    window.observe(1e9)  # beyond the last bin: counted there, max stays exact
    snap = window.snapshot()
    assert snap.count == 3
    assert snap.min == 0.0
    assert snap.max == pytest.approx(1e12)
    assert snap.p99 == pytest.approx(1e12)


def test_samples_older_than_the_window_expire(clock: FakeClock) -> None:
    window = LatencyWindow(100, clock)
    window.observe(1.0)
    clock.advance(85)  # younger than window * (1 - 1/slices): still counted
    window.observe(0.001)
    assert window.snapshot().count == 2
    clock.advance(16)  # the first sample is now 101 s old
    snap = window.snapshot()
    assert snap.count == 1
    assert snap.max == pytest.approx(1.0)
    clock.advance(100)
    assert window.snapshot() == LatencySnapshot()


def test_slices_are_reused_so_memory_stays_bounded(clock: FakeClock) -> None:
    window = LatencyWindow(10, clock, slices=5)
    for _ in range(1000):  # 100 windows' worth of time
        window.observe(0.010)
        clock.advance(1)
    assert len(window._ring) == 5
    # only the samples of the last window (10 s, slice-aligned) are counted
    assert 8 <= window.snapshot().count <= 10


def test_rejects_a_non_positive_window(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        LatencyWindow(0, clock)
