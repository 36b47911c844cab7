"""The verdict says why and until when (issue 21): reasons with their clearing
time in the monitor, ``/readyz``, ``/status`` and ``span-sidecar status``; a
recovered sink clears its verdict at once."""

from __future__ import annotations

from typing import Any

import aiohttp

from sidecar.clock import FakeClock
from sidecar.commands.status import render
from sidecar.config.settings import HealthSettings, HttpSettings, SpoolSettings
from sidecar.health.http import HttpServer, readiness_check
from sidecar.health.monitor import SelfMonitor
from sidecar.health.verdict import describe

from .conftest import SinkFactory

WALL0 = 1_700_000_000.0  # FakeClock's wall time at monotonic 1000


def test_an_error_rate_says_when_its_window_clears(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    """Failures without the breaker opening stay for the window (300 s) from the
    sample that saw them, and the reason says exactly when that is."""
    monitor = SelfMonitor(health_settings, clock)
    clock.advance(30)
    monitor.evaluate([make_sink(batches_shipped=10)])
    clock.advance(20)  # t = 50 s: 5 failed of 15
    result = monitor.evaluate([make_sink(batches_shipped=10, attempts_failed=5)])
    (finding,) = result.findings
    assert finding.reason == "postgres: error rate 33% >= warning 10%"
    assert finding.clears_at == WALL0 + 50 + 300
    (explained,) = monitor.explain()["reasons"]
    assert explained == {"level": "degraded", "reason": "postgres: error rate 33% >= warning 10%",
                         "clears_at": "2023-11-14T22:19:10Z", "clears_in_s": 300.0,
                         "clears_when": None}
    assert describe(explained) == ("postgres: error rate 33% >= warning 10%; clears by "
                                   "2023-11-14T22:19:10Z (in 300 s) unless it happens again")
    clock.advance(299)
    assert monitor.evaluate([make_sink(batches_shipped=10, attempts_failed=5)]).reasons
    assert monitor.explain()["reasons"][0]["clears_in_s"] == 1.0
    clock.advance(1)
    assert monitor.evaluate([make_sink(batches_shipped=10, attempts_failed=5)]).reasons == ()


def test_a_recovered_sink_clears_its_verdict_at_once(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    """The issue's case: a 20-s outage opens the breaker (5 failed of 9: 56%);
    once the breaker closes again the sink's verdict clears at the next
    evaluation, its error rate and its latencies judged from then on, not a
    window later (before: unhealthy for up to 300 s, no reason shown)."""
    monitor = SelfMonitor(health_settings, clock)
    clock.advance(30)
    monitor.evaluate([make_sink(batches_shipped=4)])
    clock.advance(20)
    down = monitor.evaluate([make_sink(batches_shipped=4, attempts_failed=5, breaker="open",
                                       opened=1)])
    assert down.status == "unhealthy"
    assert down.reasons == ("postgres: error rate 56% >= critical 50%", "postgres: breaker open")
    assert down.findings[1].clears_when == "when a trial send succeeds and the breaker closes"
    clock.advance(35)  # the half-open trial succeeded; the batch that waited it out
    monitor.observe("batch_flush", 30.0, "postgres")  # finished just after, 30 s late
    monitor.observe("sink_send", 3.0, "opik")  # another sink's latency is its own
    up = monitor.evaluate([make_sink(batches_shipped=5, attempts_failed=5, opened=1)])
    assert up.reasons == ("opik: sink_send: p95 latency 3000 ms >= warning 2000 ms",)
    clock.advance(5)  # failures after the recovery count again
    again = monitor.evaluate([make_sink(batches_shipped=7, attempts_failed=9, opened=1)])
    assert again.reasons[0] == "postgres: error rate 67% >= critical 50%"


def test_an_outage_between_two_evaluations_is_a_recovery_too(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    """The breaker opened and closed between two looks: ``opened_total`` tells."""
    monitor = SelfMonitor(health_settings, clock)
    monitor.evaluate([make_sink(batches_shipped=4)])
    clock.advance(40)
    result = monitor.evaluate([make_sink(batches_shipped=5, attempts_failed=5, opened=1)])
    assert result.status == "healthy"


def test_lag_and_slow_calls_say_how_they_clear(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory
) -> None:
    monitor = SelfMonitor(health_settings, clock)
    for _ in range(20):
        monitor.observe("sink_send", 3.0, "postgres")
    result = monitor.evaluate([make_sink(lag_seconds=90.0)])
    lag, slow = result.findings
    assert lag.clears_when == "when the lag is under 60 s" and lag.clears_at is None
    # the slow calls are in the window's 30-s slice [990, 1020): gone at 1290
    assert slow.reason.startswith("postgres: sink_send: p95 latency 3000 ms")
    assert slow.clears_at == WALL0 + 290
    clock.advance(289.9)
    assert len(monitor.evaluate([make_sink()]).findings) == 1
    clock.advance(0.1)
    assert monitor.evaluate([make_sink()]).findings == ()


def _verdict() -> dict[str, Any]:
    return {"status": "unhealthy", "reasons": [
        {"level": "unhealthy", "reason": "postgres: error rate 56% >= critical 50%",
         "clears_at": "2026-12-07T07:31:02Z", "clears_in_s": 250.0, "clears_when": None},
        {"level": "degraded", "reason": "postgres: lag 75 s >= warning 60 s",
         "clears_at": None, "clears_in_s": None, "clears_when": "when the lag is under 60 s"}]}


def test_readiness_lists_the_health_reasons_as_information(tmp_path: Any) -> None:
    spool = SpoolSettings(dir=tmp_path, state_dir=tmp_path)
    ok, notes = readiness_check(spool, list, health=_verdict)()
    assert ok  # a verdict is information, not unreadiness
    assert notes[1:] == [
        "information: health unhealthy: postgres: error rate 56% >= critical 50%; clears by "
        "2026-12-07T07:31:02Z (in 250 s) unless it happens again",
        "information: health unhealthy: postgres: lag 75 s >= warning 60 s; clears when the "
        "lag is under 60 s"]
    healthy = readiness_check(spool, list, health=lambda: {"status": "healthy", "reasons": []})
    assert healthy()[1] == ["information: no sink is enabled; records stay in the spool"]


async def test_readyz_and_status_pages_carry_the_reasons(
    health_settings: HealthSettings, clock: FakeClock, make_sink: SinkFactory, tmp_path: Any
) -> None:
    """On a real port: /readyz names the reason and its clearing time; /status
    serves what the app's status report holds. (Failures not sampled yet count
    from the next sample, one window step of 10 s later: 310 s.)"""
    monitor = SelfMonitor(health_settings, clock)
    monitor.evaluate([make_sink(attempts_failed=6, breaker="open", opened=1)])
    spool = SpoolSettings(dir=tmp_path, state_dir=tmp_path)
    ready = readiness_check(spool, list, health=monitor.explain)
    server = HttpServer(HttpSettings(listen="127.0.0.1:0"), metrics=bytes, readiness=ready,
                        status=lambda: {"health": monitor.status.status,
                                        "health_reasons": monitor.explain()["reasons"]})
    async with server, aiohttp.ClientSession() as client:
        base = f"http://127.0.0.1:{server.port}"
        async with client.get(f"{base}/readyz") as resp:
            body = await resp.json()
        async with client.get(f"{base}/status") as resp:
            status = await resp.json()
    assert body["ready"] is True
    assert ("information: health unhealthy: postgres: error rate 100% >= critical 50%; "
            "clears by 2023-11-14T22:18:30Z (in 310 s) unless it happens again") in body["reasons"]
    assert [r["reason"] for r in status["health_reasons"]] == [
        "postgres: error rate 100% >= critical 50%", "postgres: breaker open"]


def test_status_prints_each_reason_and_when_it_clears() -> None:
    verdict = _verdict()
    report = {"spool_dir": "/s", "spool_files": 0, "spool_bytes": 0, "sinks": [],
              "daemon": {"running": True, "pid": 7, "address": "127.0.0.1:9464",
                         "health": verdict["status"], "health_reasons": verdict["reasons"]}}
    assert render(report).splitlines()[1:] == [
        "daemon: running (pid 7, 127.0.0.1:9464, health unhealthy)",
        "  health unhealthy: postgres: error rate 56% >= critical 50%; clears by "
        "2026-12-07T07:31:02Z (in 4m 10s) unless it happens again",
        "  health degraded: postgres: lag 75 s >= warning 60 s; clears when the lag is under 60 s"]
