"""Fixtures shared by the health tests: synthetic snapshots and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sidecar.clock import FakeClock
from sidecar.config.settings import HealthSettings, HealthThresholds
from sidecar.snapshots import BreakerStats, SinkStats

SinkFactory = Callable[..., SinkStats]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health_settings() -> HealthSettings:
    """Round thresholds so that tests read clearly."""
    return HealthSettings(
        interval_s=60.0,
        window_s=300.0,
        thresholds=HealthThresholds(
            error_rate_warning=0.10,
            error_rate_critical=0.50,
            latency_p95_warning_ms=2000.0,
            latency_p95_critical_ms=10000.0,
            lag_warning_s=60.0,
            lag_critical_s=600.0,
        ),
    )


@pytest.fixture
def make_sink() -> SinkFactory:
    """``make_sink("postgres", lag_seconds=5, breaker="open")``: a SinkStats."""

    def make(sink: str = "postgres", breaker: str = "closed", opened: int = 0,
             **fields: Any) -> SinkStats:
        values: dict[str, Any] = {
            "records_read": 0, "records_shipped": 0, "records_quarantined": 0,
            "batches_shipped": 0, "attempts_failed": 0, "rate_limited_total": 0,
            "lag_bytes": 0, "lag_records": 0, "lag_seconds": 0.0,
        }
        values.update(fields)
        state = BreakerStats(breaker, 0, opened, 2 * opened)  # type: ignore[arg-type]
        return SinkStats(sink=sink, breaker=state, **values)

    return make
