"""The self-health span: a valid spool record holding the documented metadata."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from sidecar.clock import FakeClock
from sidecar.config.settings import HealthSettings
from sidecar.health.monitor import SelfMonitor
from sidecar.health.report import HealthReporter
from sidecar.records import SpanRecord, parse_line
from sidecar.snapshots import SinkStats, SpoolStats
from tests.clocking import drive

from .conftest import SinkFactory

Span = dict[str, Any]


def reporter(settings: HealthSettings, clock: FakeClock, sinks: list[SinkStats],
             written: list[Span]) -> HealthReporter:
    monitor = SelfMonitor(settings, clock)
    for ms in range(1, 101):
        monitor.observe("sink_send", ms / 1000, "postgres")
    return HealthReporter(settings, monitor, sinks=lambda: sinks,
                          spool=lambda: SpoolStats(files=4, bytes=8192),
                          write=written.append, clock=clock)


def test_health_span_is_a_valid_spool_record(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    written: list[Span] = []
    sinks = [make_sink("postgres", records_read=10, records_shipped=8, records_quarantined=1,
                       lag_records=2, lag_bytes=300, lag_seconds=1.25),
             make_sink("opik", breaker="open", opened=1)]
    health = reporter(health_settings, clock, sinks, written)
    clock.advance(60)
    span = health.tick()
    assert span is not None and written == [span]
    record = parse_line(orjson.dumps(span))
    assert isinstance(record, SpanRecord), record
    assert record.id.version == 7 and record.trace_id.version == 7
    assert record.name == "span-sidecar.health" and record.type == "general"
    assert record.agent_name == "span-sidecar" and record.parent_span_id is None
    assert record.tags == ["degraded"]
    assert record.end_time == datetime.fromtimestamp(clock.wall(), tz=UTC)
    assert record.duration_ms == pytest.approx(60_000)
    assert span["start_time"].endswith("Z") and span["end_time"].endswith("Z")


def test_metadata_holds_the_documented_numbers(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    sinks = [make_sink("postgres", records_read=10, records_shipped=8, records_quarantined=1,
                       lag_records=2, lag_bytes=300, lag_seconds=1.25),
             make_sink("opik", breaker="open", opened=1)]
    span = reporter(health_settings, clock, sinks, []).build()
    meta = span["metadata"]
    assert meta["status"] == "degraded" and meta["reasons"] == ["opik: breaker open"]
    assert meta["sinks"]["postgres"] == {
        "records_read": 10, "records_shipped": 8, "records_quarantined": 1,
        "records_sampled_out": 0, "sampled_out_by_agent": {},
        "lag": {"records": 2, "bytes": 300, "seconds": 1.25},
        "breaker": "closed", "breaker_opened_total": 0,
        "latency_ms": meta["sinks"]["postgres"]["latency_ms"],
    }
    assert meta["sinks"]["opik"]["breaker"] == "open"
    latency = meta["sinks"]["postgres"]["latency_ms"]
    assert set(latency) == {"sink_send"}  # the ops observed for that sink
    assert latency["sink_send"]["count"] == 100
    assert latency["sink_send"]["p50"] == pytest.approx(50, rel=0.03)
    assert latency["sink_send"]["p99"] == pytest.approx(99, rel=0.03)
    assert meta["sinks"]["opik"]["latency_ms"] == {}
    assert meta["latency_ms"] == {}  # the sidecar's own ops (span_emit, cache) when observed
    assert meta["spool"] == {"files": 4, "bytes": 8192}
    assert meta["rss_bytes"] > 0
    assert meta["policies"] == {"redactions": {}, "truncated": {}}
    assert set(meta) == {"status", "reasons", "sinks", "latency_ms", "spool", "rss_bytes",
                         "version", "policies"}


def test_successive_spans_cover_successive_intervals(
    health_settings: HealthSettings, clock: FakeClock
) -> None:
    written: list[Span] = []
    health = reporter(health_settings, clock, [], written)
    clock.advance(60)
    health.tick()
    clock.advance(60)
    health.tick()
    assert written[1]["start_time"] == written[0]["end_time"]
    assert written[0]["id"] != written[1]["id"]


def test_a_failing_writer_is_logged_not_raised(
    health_settings: HealthSettings, clock: FakeClock
) -> None:
    def full_disk(span: Span) -> None:
        raise OSError(28, "No space left on device")

    health = HealthReporter(health_settings, SelfMonitor(health_settings, clock), sinks=list,
                            spool=lambda: SpoolStats(0, 0), write=full_disk, clock=clock)
    with capture_logs() as logs:
        assert health.tick() is None
    assert [e["error_type"] for e in logs if e["event"] == "health.span.failed"] == ["OSError"]


async def test_run_writes_every_interval_until_stopped(clock: FakeClock) -> None:
    settings = HealthSettings(interval_s=0.01)
    written: list[Span] = []
    three = asyncio.Event()

    def write(span: Span) -> None:
        written.append(span)
        if len(written) == 3:
            three.set()

    health = HealthReporter(settings, SelfMonitor(settings, clock), sinks=list,
                            spool=lambda: SpoolStats(0, 0), write=write, clock=clock)
    stop = asyncio.Event()
    started = clock.monotonic()
    task = asyncio.create_task(health.run(stop))
    await drive(clock, three.is_set)
    stop.set()
    await asyncio.wait_for(task, 1.0)
    assert len(written) == 3 and clock.monotonic() - started == pytest.approx(0.03)
    assert all(isinstance(parse_line(orjson.dumps(s)), SpanRecord) for s in written)
