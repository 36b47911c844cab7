"""The read side of ``ml_observability_spans``: spans, traces and statistics.

Every query is parameterised; only identifiers of our own (the schema, the
table) are formatted into the SQL, quoted. Statistics are computed in one
pass per window from the rollups (``read/rollup_stats.py``: counts, sums,
min and max exact, quantiles within 1 % of ``percentile_cont``), or, for a
window of few rows, ``percentile_cont`` over ``duration_ms`` per agent. The daemon's own
health spans (agent ``span-sidecar``, name ``span-sidecar.health``, ~60 s
each) are left out of the all-agents statistics, as they are of
``v_agent_latency_summary`` (migration 0004): they would skew every figure.
Asking for agent ``span-sidecar`` shows them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel, ConfigDict

from sidecar.read.rollup_stats import EXACT_MAX_ROWS, backfill_done_sql, rollup_stats_sql
from sidecar.records import SpanRecord
from sidecar.store.migrate import quote_ident
from sidecar.store.table import COLUMNS, TABLE, span_row

_WINDOW = re.compile(r"([1-9][0-9]{0,5})([mhd])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400}
HEALTH_AGENT, HEALTH_SPAN = "span-sidecar", "span-sidecar.health"
# The oldest start a window may reach back to (a huge window must not overflow).
_EPOCH_MIN = datetime(1, 1, 2, tzinfo=UTC)


def parse_window(window: str) -> timedelta:
    """``"1h"``, ``"24h"``, ``"7d"`` or any ``<n>m|h|d``; ValueError otherwise."""
    m = _WINDOW.fullmatch(window)
    if m is None:
        raise ValueError(f"invalid window {window[:40]!r}: use <n>m, <n>h or <n>d "
                         "(e.g. 1h, 24h, 7d)")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


def check_window(window: str, max_window: str) -> timedelta:
    """The length of ``window``; ValueError when it is invalid or longer than
    ``max_window``."""
    length = parse_window(window)
    if length > parse_window(max_window):
        raise ValueError(f"window {window} is longer than stats.max_window ({max_window})")
    return length


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class TokenUsage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class LatencyStats(_Model):
    """Latency of one agent's spans in a window, in milliseconds (None: no durations)."""

    agent_name: str | None
    span_count: int
    error_count: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    min_ms: float | None
    max_ms: float | None
    mean_ms: float | None


class QualityMetrics(_Model):
    """Errors, tokens and cost of one agent's spans in a window."""

    agent_name: str | None
    span_count: int
    error_count: int
    error_rate: float
    tokens: TokenUsage
    total_cost: float


class AgentStats(_Model):
    agent_name: str | None
    latency: LatencyStats
    quality: QualityMetrics


class StatsReport(_Model):
    """What ``span-sidecar stats`` and ``GET /stats`` answer (and the cache holds)."""

    window: str
    since: datetime
    agent: str | None
    agents: tuple[AgentStats, ...]


class StoredSpan(_Model):
    span_id: UUID
    trace_id: UUID
    parent_span_id: UUID | None
    name: str
    type: str
    agent_name: str | None
    start_time: datetime
    end_time: datetime | None
    duration_ms: float | None
    status: str
    model: str | None
    provider: str | None
    tokens: TokenUsage
    cost: float | None
    error_info: dict[str, Any] | None


class TraceSpan(_Model):
    """A span of a trace in tree order, with its depth (0 for a root)."""

    depth: int
    span: StoredSpan


_STATS_SELECT = """
SELECT agent_name,
       count(*) AS span_count,
       count(*) FILTER (WHERE status = 'error') AS error_count,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms) AS pct,
       min(duration_ms) AS min_ms, max(duration_ms) AS max_ms, avg(duration_ms) AS mean_ms,
       coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens), 0) AS completion_tokens,
       coalesce(sum(total_tokens), 0) AS total_tokens,
       coalesce(sum(total_estimated_cost), 0) AS total_cost
  FROM {table}
 WHERE start_time >= $1 AND {agent_filter}
 GROUP BY agent_name
 ORDER BY agent_name NULLS LAST
"""
_SPAN_COLUMNS = (
    "span_id, trace_id, parent_span_id, name, type, agent_name, start_time, end_time, "
    "duration_ms, status, model, provider, prompt_tokens, completion_tokens, total_tokens, "
    "total_estimated_cost, error_info")
_INSERT = ("INSERT INTO {table} (" + ", ".join(COLUMNS) + ") VALUES ("
           + ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
           + ") ON CONFLICT (span_id, start_time) DO NOTHING")


class SpanRepository:
    """Reads (and, for tools and tests, writes) spans in one schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str, default_project: str = "",
                 exact_max_rows: int = EXACT_MAX_ROWS) -> None:
        self._pool = pool
        self.exact_max_rows = exact_max_rows
        self.schema = schema
        self.table = f"{quote_ident(schema)}.{TABLE}"
        self._default_project = default_project

    async def insert_span(self, span: SpanRecord) -> bool:
        """Store one span; False when it was stored already (same id and start time)."""
        status = await self._pool.execute(_INSERT.format(table=self.table),
                                          *span_row(span, self._default_project))
        return bool(status == "INSERT 0 1")

    async def insert_spans(self, spans: Sequence[SpanRecord]) -> None:
        """Store a batch in one transaction, skipping stored spans (the sink's COPY is faster)."""
        rows = [span_row(s, self._default_project) for s in spans]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(_INSERT.format(table=self.table), rows)

    async def spans_in_window(self, since: datetime, agent: str | None = None,
                              limit: int = 1000) -> list[StoredSpan]:
        """Spans that started at or after ``since``, newest first."""
        if agent is None:
            rows = await self._pool.fetch(
                f"SELECT {_SPAN_COLUMNS} FROM {self.table} WHERE start_time >= $1 "
                "ORDER BY start_time DESC LIMIT $2", since, limit)
        else:
            rows = await self._pool.fetch(
                f"SELECT {_SPAN_COLUMNS} FROM {self.table} WHERE start_time >= $1 "
                "AND agent_name = $2 ORDER BY start_time DESC LIMIT $3", since, agent, limit)
        return [_span(r) for r in rows]

    async def spans_by_agent(self, agent: str, limit: int = 1000) -> list[StoredSpan]:
        """An agent's most recent spans, newest first."""
        rows = await self._pool.fetch(
            f"SELECT {_SPAN_COLUMNS} FROM {self.table} WHERE agent_name = $1 "
            "ORDER BY start_time DESC LIMIT $2", agent, limit)
        return [_span(r) for r in rows]

    async def trace(self, trace_id: UUID) -> list[TraceSpan]:
        """The spans of a trace in tree order: each parent before its children."""
        rows = await self._pool.fetch(
            f"SELECT {_SPAN_COLUMNS} FROM {self.table} WHERE trace_id = $1 "
            "ORDER BY start_time, span_id", trace_id)
        return tree_order([_span(r) for r in rows])

    async def agent_stats(self, since: datetime, agent: str | None = None) -> list[AgentStats]:
        """Latency and quality per agent over spans started at or after ``since``;
        for all agents (None), without the daemon's health spans. From the
        rollups (``read/rollup_stats.py``), but exactly from the raw rows when
        the window holds at most ``exact_max_rows`` spans or the rollups of
        rows stored before migration 0005 are still being built."""
        args: tuple[Any, ...] = (since, agent) if agent else (since, HEALTH_AGENT, HEALTH_SPAN)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL jit = off")
            if await conn.fetchval(backfill_done_sql(self.schema)):
                rows = await conn.fetch(rollup_stats_sql(self.schema, agent is None), *args)
                if sum(r["span_count"] for r in rows) > self.exact_max_rows:
                    return [_agent_stats(r) for r in rows]
            if agent is None:
                sql = _STATS_SELECT.format(
                    table=self.table,
                    agent_filter="(agent_name IS DISTINCT FROM $2 OR name <> $3)")
            else:
                sql = _STATS_SELECT.format(table=self.table, agent_filter="agent_name = $2")
            rows = await conn.fetch(sql, *args)
        return [_agent_stats(r) for r in rows]

    async def latency_stats(self, since: datetime, agent: str | None = None,
                            ) -> list[LatencyStats]:
        return [s.latency for s in await self.agent_stats(since, agent)]

    async def quality_metrics(self, since: datetime, agent: str | None = None,
                              ) -> list[QualityMetrics]:
        return [s.quality for s in await self.agent_stats(since, agent)]

    async def delete_old_spans(self, cutoff: datetime, batch_rows: int = 10_000) -> int:
        """Remove spans that started before ``cutoff``: whole day partitions are
        dropped, other rows deleted in batches. Returns the rows removed.

        This does no locking of its own: ``Retention`` runs it under the fleet's lock.
        """
        from sidecar.store.partitions import expire

        async with self._pool.acquire() as conn:
            report = await expire(conn, self.schema, cutoff, batch_rows, dry_run=False)
        return report.rows


def since_for(window: str, now: float) -> datetime:
    """The start of ``window`` ending at the wall-clock time ``now`` (at the
    earliest, the year 1: a window reaching further means "every span")."""
    end = datetime.fromtimestamp(now, UTC)
    length = parse_window(window)
    return end - length if length < end - _EPOCH_MIN else _EPOCH_MIN


def tree_order(spans: Sequence[StoredSpan]) -> list[TraceSpan]:
    """Depth-first, children by start time; spans whose parent is missing are roots.

    Spans unreachable from any root (a cycle of parent ids) come last, as roots.
    """
    ids = {s.span_id for s in spans}
    children: dict[UUID | None, list[StoredSpan]] = {}
    for s in spans:
        parent = s.parent_span_id if s.parent_span_id in ids else None
        children.setdefault(parent, []).append(s)
    out: list[TraceSpan] = []
    seen: set[UUID] = set()
    roots = list(children.get(None, []))
    roots += [s for s in spans if s.parent_span_id in ids]  # only reached if in a cycle
    for root in roots:
        stack = [(0, root)]
        while stack:
            depth, span = stack.pop()
            if span.span_id in seen:
                continue
            seen.add(span.span_id)
            out.append(TraceSpan(depth=depth, span=span))
            stack.extend((depth + 1, c) for c in reversed(children.get(span.span_id, [])))
    return out


def _span(r: asyncpg.Record) -> StoredSpan:
    return StoredSpan(
        span_id=r["span_id"], trace_id=r["trace_id"], parent_span_id=r["parent_span_id"],
        name=r["name"], type=r["type"], agent_name=r["agent_name"], start_time=r["start_time"],
        end_time=r["end_time"], duration_ms=r["duration_ms"], status=r["status"],
        model=r["model"], provider=r["provider"], cost=r["total_estimated_cost"],
        tokens=TokenUsage(prompt_tokens=r["prompt_tokens"] or 0,
                          completion_tokens=r["completion_tokens"] or 0,
                          total_tokens=r["total_tokens"] or 0),
        error_info=r["error_info"])


def _agent_stats(r: asyncpg.Record) -> AgentStats:
    count, errors = int(r["span_count"]), int(r["error_count"])
    rate = errors / count if count else 0.0
    p50, p95, p99 = r["pct"] or (None, None, None)
    latency = LatencyStats(
        agent_name=r["agent_name"], span_count=count, error_count=errors, error_rate=rate,
        p50_ms=p50, p95_ms=p95, p99_ms=p99, min_ms=r["min_ms"], max_ms=r["max_ms"],
        mean_ms=r["mean_ms"])
    quality = QualityMetrics(
        agent_name=r["agent_name"], span_count=count, error_count=errors, error_rate=rate,
        tokens=TokenUsage(prompt_tokens=int(r["prompt_tokens"]),
                          completion_tokens=int(r["completion_tokens"]),
                          total_tokens=int(r["total_tokens"])),
        total_cost=float(r["total_cost"]))
    return AgentStats(agent_name=r["agent_name"], latency=latency, quality=quality)
