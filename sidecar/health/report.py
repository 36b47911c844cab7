"""The self-health span (README, "Self-monitoring").

Every ``health.interval_s`` the sidecar writes a ``span-sidecar.health`` span
into its own spool, so it reaches Opik and Postgres through the same pipelines
as any agent's spans and operators see the sidecar where they see agents. The
span covers the interval since the previous report (start_time to end_time).

Its metadata is built only from the snapshots listed in the contract (counts,
lag, breaker states, latency, spool, memory, verdict): never settings, so no
DSN, URL or key can leak into it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from sidecar import __version__
from sidecar.client.ids import new_id
from sidecar.clock import Clock, every
from sidecar.config.settings import HealthSettings
from sidecar.health.latency import LatencySnapshot
from sidecar.health.monitor import HealthStatus, OpKey, SelfMonitor, rss_bytes
from sidecar.snapshots import PolicyStats, QuotaStats, SinkStats, SpoolStats

log = structlog.get_logger("sidecar.health")

SPAN_NAME = "span-sidecar.health"
AGENT_NAME = "span-sidecar"

Span = dict[str, Any]


def _rfc3339(wall: float) -> str:
    """RFC 3339 in UTC with a Z, millisecond precision."""
    ts = datetime.fromtimestamp(wall, tz=UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sink_metadata(stats: SinkStats, latencies: Mapping[OpKey, LatencySnapshot]
                   ) -> dict[str, Any]:
    return {
        "records_read": stats.records_read,
        "records_shipped": stats.records_shipped,
        "records_quarantined": stats.records_quarantined,
        "records_sampled_out": stats.records_sampled_out,
        "sampled_out_by_agent": dict(stats.sampled_out_by_agent),
        "lag": {
            "records": stats.lag_records,
            "bytes": stats.lag_bytes,
            "seconds": round(stats.lag_seconds, 3),
        },
        "breaker": stats.breaker.state,
        "breaker_opened_total": stats.breaker.opened_total,
        "latency_ms": _latency(latencies, stats.sink),
    }


def _latency(latencies: Mapping[OpKey, LatencySnapshot], sink: str) -> dict[str, Any]:
    """The percentiles of every op observed for ``sink`` ("" for the sidecar's own)."""
    return {op: _percentiles(snap) for (op, of), snap in latencies.items() if of == sink}


class HealthReporter:
    """Builds the health span on a timer and hands it to ``write``."""

    def __init__(
        self,
        settings: HealthSettings,
        monitor: SelfMonitor,
        sinks: Callable[[], Sequence[SinkStats]],
        spool: Callable[[], SpoolStats],
        write: Callable[[Span], None],
        clock: Clock,
        policies: Callable[[], PolicyStats] = PolicyStats,
        quota: Callable[[], QuotaStats] | None = None,
    ) -> None:
        self._policies = policies
        self._quota = quota
        self._interval_s = settings.interval_s
        self._monitor = monitor
        self._sinks = sinks
        self._spool = spool
        self._write = write
        self._clock = clock
        self._since = clock.wall()

    def build(self) -> Span:
        """One health span covering the time since the previous one."""
        now = self._clock.wall()
        sinks = self._sinks()
        health = self._monitor.evaluate(sinks)
        span: Span = {
            "kind": "span",
            "v": 1,
            "id": str(new_id()),
            "trace_id": str(new_id()),
            "parent_span_id": None,
            "name": SPAN_NAME,
            "type": "general",
            "start_time": _rfc3339(self._since),
            "end_time": _rfc3339(now),
            "agent_name": AGENT_NAME,
            "tags": [health.status],
            "metadata": self._metadata(sinks, health),
        }
        self._since = now
        return span

    def _metadata(self, sinks: Sequence[SinkStats], health: HealthStatus) -> dict[str, Any]:
        latencies = self._monitor.latencies()
        spool = self._spool()
        return {
            "status": health.status,
            "reasons": list(health.reasons),
            "sinks": {stats.sink: _sink_metadata(stats, latencies) for stats in sinks},
            "latency_ms": _latency(latencies, ""),
            "spool": {"files": spool.files, "bytes": spool.bytes, **self._quota_metadata()},
            "policies": {"redactions": dict(self._policies().redactions),
                         "truncated": dict(self._policies().truncated)},
            "rss_bytes": rss_bytes(),
            "version": __version__,
        }

    def _quota_metadata(self) -> dict[str, Any]:
        if self._quota is None:
            return {}
        q = self._quota()
        return {"max_bytes": q.max_bytes, "on_full": q.on_full,
                "dropped_records": q.dropped_records, "dropped_files": q.dropped_files}

    def tick(self) -> Span | None:
        """Build and write one span; a failure is logged, not raised.

        The health span is best effort: a full disk or a closed spool must not
        stop the sidecar from shipping what is already spooled.
        """
        try:
            span = self.build()
            with self._monitor.timed("span_emit"):
                self._write(span)
        except Exception as exc:
            log.error("health.span.failed", error_type=type(exc).__name__, error=str(exc)[:200])
            return None
        log.debug("health.span.written", status=span["tags"][0])
        return span

    async def run(self, stop_event: asyncio.Event) -> None:
        """Write a span every ``interval_s`` until ``stop_event`` is set."""
        await every(self._clock, self._interval_s, stop_event, self.tick)


def _percentiles(snapshot: LatencySnapshot) -> dict[str, float]:
    return {
        "count": snapshot.count,
        "p50": round(snapshot.p50, 3),
        "p95": round(snapshot.p95, 3),
        "p99": round(snapshot.p99, 3),
    }
