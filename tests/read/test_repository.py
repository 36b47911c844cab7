"""The span repository against the real Postgres: statistics, windows, traces, writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from msgspec.structs import replace

from sidecar.read.repository import SpanRepository, parse_window, tree_order
from sidecar.records import SpanRecord, parse_line
from sidecar.store.pool import init_connection
from tests.read.conftest import connect, seed
from tests.support import PG_DSN, line, span

NOW = datetime.now(UTC).replace(microsecond=0)


async def repo_for(schema: str) -> tuple[asyncpg.Pool, SpanRepository]:
    pool = await asyncpg.create_pool(PG_DSN, min_size=1, max_size=2, init=init_connection)
    return pool, SpanRepository(pool, schema, "Default Project")


def record(**fields: object) -> SpanRecord:
    rec = parse_line(line(span(0, **fields)).rstrip(b"\n"))
    assert isinstance(rec, SpanRecord)
    return rec


def test_windows_parse_minutes_hours_days_and_refuse_the_rest() -> None:
    assert parse_window("1h") == timedelta(hours=1)
    assert parse_window("24h") == timedelta(days=1)
    assert parse_window("7d") == timedelta(days=7)
    assert parse_window("90m") == timedelta(minutes=90)
    for bad in ("", "0h", "1w", "h", "-1h", "1.5h", "1h "):
        with pytest.raises(ValueError, match="invalid window"):
            parse_window(bad)


async def test_stats_equal_a_direct_percentile_cont_over_the_same_rows(pg_schema: str) -> None:
    """p50/p95/p99/min/max/mean, counts, error rate, tokens and cost of the 1h window
    are exactly what SQL computes over the rows started within the hour."""
    conn = await connect(pg_schema)
    pool, repo = await repo_for(pg_schema)
    try:
        await seed(conn, pg_schema, "alpha", NOW, 3000, 2.0)  # 100 min: straddles the hour
        await seed(conn, pg_schema, "beta", NOW, 500, 1.0)
        since = NOW - timedelta(hours=1)
        got = {s.agent_name: s for s in await repo.agent_stats(since)}
        expected = await conn.fetch(
            f"""SELECT agent_name, count(*) AS n, count(*) FILTER (WHERE status = 'error') AS e,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99,
                   min(duration_ms) AS lo, max(duration_ms) AS hi, avg(duration_ms) AS mean,
                   sum(total_tokens) AS tokens, sum(total_estimated_cost) AS cost
              FROM "{pg_schema}".ml_observability_spans WHERE start_time >= $1
             GROUP BY agent_name""", since)
        assert set(got) == {"alpha", "beta"}
        for row in expected:
            lat, q = got[row["agent_name"]].latency, got[row["agent_name"]].quality
            assert (lat.span_count, lat.error_count) == (row["n"], row["e"])
            assert (lat.p50_ms, lat.p95_ms, lat.p99_ms) == (row["p50"], row["p95"], row["p99"])
            assert (lat.min_ms, lat.max_ms, lat.mean_ms) == (row["lo"], row["hi"], row["mean"])
            assert lat.error_rate == row["e"] / row["n"]
            assert q.tokens.total_tokens == row["tokens"] and q.total_cost == row["cost"]
        assert got["alpha"].latency.span_count == 1800  # only the rows within the hour
        only_beta = await repo.latency_stats(since, agent="beta")
        assert only_beta == [got["beta"].latency]
    finally:
        await pool.close()
        await conn.close()


async def test_spans_by_window_and_agent_newest_first(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    pool, repo = await repo_for(pg_schema)
    try:
        await seed(conn, pg_schema, "alpha", NOW, 50, 60.0)  # one a minute
        await seed(conn, pg_schema, "beta", NOW, 10, 60.0)
        recent = await repo.spans_in_window(NOW - parse_window("30m"))
        assert len(recent) == 30 + 10  # started 1..30 (and 1..10) minutes before NOW
        assert [s.start_time for s in recent] == sorted((s.start_time for s in recent),
                                                        reverse=True)
        beta = await repo.spans_in_window(NOW - parse_window("1h"), agent="beta")
        assert {s.agent_name for s in beta} == {"beta"} and len(beta) == 10
        assert len(await repo.spans_by_agent("alpha", limit=7)) == 7
    finally:
        await pool.close()
        await conn.close()


async def test_insert_one_and_a_batch_idempotently(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    pool, repo = await repo_for(pg_schema)
    try:
        one = record(agent_name="solo")
        assert await repo.insert_span(one) is True
        assert await repo.insert_span(one) is False  # re-delivery: a no-op
        batch = [record(agent_name="many") for _ in range(20)]
        await repo.insert_spans(batch)
        await repo.insert_spans(batch[5:])
        assert await conn.fetchval(
            f'SELECT count(*) FROM "{pg_schema}".ml_observability_spans') == 21
        stored = await repo.spans_by_agent("solo")
        assert stored[0].span_id == one.id and stored[0].tokens.total_tokens == 168
    finally:
        await pool.close()
        await conn.close()


async def test_trace_is_a_tree_parent_before_child(pg_schema: str) -> None:
    """Children follow their parent depth-first by start time; an orphan is a root."""
    conn = await connect(pg_schema)
    pool, repo = await repo_for(pg_schema)
    trace = str(uuid.uuid4())
    root, child_a, child_b, grand, orphan = (str(uuid.uuid4()) for _ in range(5))
    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def at(ms: int) -> str:
        return (t0 + timedelta(milliseconds=ms)).isoformat()

    spans = [  # stored out of order on purpose
        record(id=grand, trace_id=trace, parent_span_id=child_a, name="grand",
               start_time=at(20), end_time=at(30)),
        record(id=child_b, trace_id=trace, parent_span_id=root, name="b",
               start_time=at(50), end_time=at(90),
               error_info={"exception_type": "ValueError", "message": "bad"}),
        record(id=root, trace_id=trace, name="root", start_time=at(0), end_time=at(100)),
        record(id=child_a, trace_id=trace, parent_span_id=root, name="a",
               start_time=at(10), end_time=at(40)),
        record(id=orphan, trace_id=trace, parent_span_id=str(uuid.uuid4()), name="orphan",
               start_time=at(5), end_time=at(6)),
    ]
    try:
        await repo.insert_spans(spans)
        tree = await repo.trace(uuid.UUID(trace))
        assert [(t.depth, t.span.name) for t in tree] == [
            (0, "root"), (1, "a"), (2, "grand"), (1, "b"), (0, "orphan")]
        assert tree[0].span.duration_ms == 100.0 and tree[3].span.status == "error"
        assert await repo.trace(uuid.uuid4()) == []
    finally:
        await pool.close()
        await conn.close()


def test_tree_order_survives_a_cycle_of_parents() -> None:
    """Spans whose parents form a cycle (bad input) still all appear, once."""
    a, b = record(), record()
    a = replace(a, parent_span_id=b.id)
    b = replace(b, parent_span_id=a.id)
    from sidecar.read.repository import StoredSpan, TokenUsage

    def stored(r: SpanRecord) -> StoredSpan:
        return StoredSpan(span_id=r.id, trace_id=r.trace_id, parent_span_id=r.parent_span_id,
                          name=r.name, type=r.type, agent_name=None, start_time=r.start_time,
                          end_time=None, duration_ms=None, status="ok", model=None,
                          provider=None, tokens=TokenUsage(), cost=None, error_info=None)

    order = tree_order([stored(a), stored(b)])
    assert sorted(t.span.span_id for t in order) == sorted([a.id, b.id])


async def test_delete_old_spans_removes_only_older_rows(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    pool, repo = await repo_for(pg_schema)
    try:
        await seed(conn, pg_schema, "alpha", NOW, 100, 3600.0)  # one an hour, ~4 days
        cutoff = NOW - timedelta(hours=50)
        older = await conn.fetchval(
            f'SELECT count(*) FROM "{pg_schema}".ml_observability_spans WHERE start_time < $1',
            cutoff)
        assert await repo.delete_old_spans(cutoff, batch_rows=7) == older
        assert await conn.fetchval(
            f'SELECT min(start_time) >= $1 FROM "{pg_schema}".ml_observability_spans', cutoff)
        assert await conn.fetchval(
            f'SELECT count(*) FROM "{pg_schema}".ml_observability_spans') == 100 - older
    finally:
        await pool.close()
        await conn.close()
