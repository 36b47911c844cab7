"""Rollups (issue 19): late spans in their own hour, rollups equal to the raw
rows for any window, the exact path, the backfill, retention, concurrent writers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.clock import FakeClock
from sidecar.read.repository import AgentStats, SpanRepository
from sidecar.records import SpanRecord, parse_line
from sidecar.sinks.postgres import PostgresSink
from sidecar.store.retention import Retention
from sidecar.store.rollups import backfill_step, merge_pending
from tests.read.conftest import connect, make_settings
from tests.support import PG_DSN, line, span

RANDOM_SQL = """
INSERT INTO "{schema}".ml_observability_spans
    (span_id, trace_id, name, type, agent_name, start_time, end_time, duration_ms, status,
     prompt_tokens, completion_tokens, total_tokens, total_estimated_cost, ingested_at)
SELECT gen_random_uuid(), gen_random_uuid(), 'llm.call', 'llm', 'agent-' || (g % 3),
       $1::timestamptz - random() * $3::double precision * interval '1 second',
       NULL, exp(random() * 8) + 0.1, CASE WHEN random() < 0.05 THEN 'error' ELSE 'ok' END,
       (random() * 100)::int, (random() * 50)::int, (random() * 150)::int, random() / 1000,
       coalesce($4, now())
FROM generate_series(1, $2) AS g
"""


def records(spans: list[dict[str, Any]]) -> list[SpanRecord]:
    out = [parse_line(line(s)) for s in spans]
    assert all(isinstance(r, SpanRecord) for r in out)
    return out  # type: ignore[return-value]


async def rollup_count(conn: asyncpg.Connection, schema: str, table: str,
                       bucket: datetime) -> int:
    return int(await conn.fetchval(
        f'SELECT coalesce(sum(span_count), 0) FROM "{schema}".{table} WHERE bucket = $1',
        bucket))


async def test_late_spans_count_in_the_hour_they_started(pg_schema: str) -> None:
    now = datetime.now(UTC)
    late = (now - timedelta(days=3)).replace(minute=17, second=5, microsecond=0)
    hour = late.replace(minute=0, second=0)
    spans = [span(i, agent_name="late", start_time=(late + timedelta(seconds=i)).isoformat(),
                  end_time=(late + timedelta(seconds=i, milliseconds=250)).isoformat())
             for i in range(40)]
    s = make_settings(pg_schema)
    async with PostgresSink(s.postgres, "p") as sink:
        assert type(await sink.send(records(spans))).__name__ == "Delivered"
    conn = await connect()
    try:
        assert await rollup_count(conn, pg_schema, "span_rollup_delta", hour) == 40
        assert await merge_pending(conn, pg_schema) is not None
        assert await rollup_count(conn, pg_schema, "span_rollup_delta", hour) == 0
        assert await rollup_count(conn, pg_schema, "span_rollup_hourly", hour) == 40
        day = hour.replace(hour=0)
        assert await rollup_count(conn, pg_schema, "span_rollup_daily", day) == 40
        assert await conn.fetchval(
            f'SELECT count(*) FROM "{pg_schema}".span_rollup_hourly WHERE bucket <> $1', hour) == 0
    finally:
        await conn.close()


def assert_agree(rolled: list[AgentStats], exact: list[AgentStats]) -> None:
    assert [a.agent_name for a in rolled] == [a.agent_name for a in exact]
    for r, e in zip(rolled, exact, strict=True):
        rl, el = r.latency, e.latency
        assert (rl.span_count, rl.error_count, rl.min_ms, rl.max_ms) == (
            el.span_count, el.error_count, el.min_ms, el.max_ms)
        assert r.quality.tokens == e.quality.tokens
        assert abs(r.quality.total_cost - e.quality.total_cost) <= 1e-9 * max(
            1.0, e.quality.total_cost)
        assert rl.mean_ms is not None and el.mean_ms is not None
        assert abs(rl.mean_ms - el.mean_ms) <= 1e-9 * el.mean_ms
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            got, want = getattr(rl, q), getattr(el, q)
            assert abs(got - want) <= 0.01 * want, (q, got, want)


def test_rollups_and_raw_rows_agree_for_any_window(pg_schema: str) -> None:
    loop = asyncio.new_event_loop()
    now = datetime.now(UTC)
    span_s = 3 * 86400

    async def setup() -> tuple[asyncpg.Connection, asyncpg.Pool]:
        conn = await connect(pg_schema)
        await conn.execute(RANDOM_SQL.format(schema=pg_schema), now, 6000, span_s, None)
        await merge_pending(conn, pg_schema)  # some merged, some still pending
        await conn.execute(RANDOM_SQL.format(schema=pg_schema), now, 2000, span_s, None)
        return conn, await asyncpg.create_pool(PG_DSN, min_size=1, max_size=1)

    conn, pool = loop.run_until_complete(setup())
    rolled = SpanRepository(pool, pg_schema, exact_max_rows=0)
    exact = SpanRepository(pool, pg_schema, exact_max_rows=10**9)

    @settings(max_examples=40, deadline=None)
    @given(back_s=st.integers(min_value=60, max_value=span_s + 7200),
           agent=st.sampled_from([None, "agent-0", "agent-2"]))
    def check(back_s: int, agent: str | None) -> None:
        since = now - timedelta(seconds=back_s)
        assert_agree(loop.run_until_complete(rolled.agent_stats(since, agent)),
                     loop.run_until_complete(exact.agent_stats(since, agent)))

    try:
        check()
    finally:
        loop.run_until_complete(pool.close())
        loop.run_until_complete(conn.close())
        loop.close()


async def test_few_rows_are_answered_exactly(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    now = datetime.now(UTC)
    await conn.execute(RANDOM_SQL.format(schema=pg_schema), now, 500, 3000, None)
    pool = await asyncpg.create_pool(PG_DSN, min_size=1, max_size=1)
    try:
        want = await conn.fetchval(
            f'SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) '
            f'FROM "{pg_schema}".ml_observability_spans WHERE agent_name = $1', "agent-1")
        since = now - timedelta(hours=2)
        (small,) = await SpanRepository(pool, pg_schema).agent_stats(since, "agent-1")
        assert small.latency.p50_ms == want  # below the threshold (20,000 rows): exact
        (rolled,) = await SpanRepository(pool, pg_schema, exact_max_rows=0).agent_stats(
            since, "agent-1")
        assert rolled.latency.p50_ms != want
        assert abs(rolled.latency.p50_ms - want) <= 0.01 * want
    finally:
        await pool.close()
        await conn.close()


async def test_rows_stored_before_the_migration_are_backfilled(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    now = datetime.now(UTC)
    # As if stored before migration 0005: ingested before the cutoff, so no deltas.
    await conn.execute(f'UPDATE "{pg_schema}".span_rollup_backfill SET done = false')
    await conn.execute(RANDOM_SQL.format(schema=pg_schema), now, 3000, 2 * 86400,
                       now - timedelta(days=30))
    assert await conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".span_rollup_delta') == 0
    pool = await asyncpg.create_pool(PG_DSN, min_size=1, max_size=1)
    try:
        since = now - timedelta(days=3)
        rolled = SpanRepository(pool, pg_schema, exact_max_rows=0)
        exact = SpanRepository(pool, pg_schema, exact_max_rows=10**9)
        before = await rolled.agent_stats(since)  # not done: the raw rows answer
        assert sum(a.latency.span_count for a in before) == 3000
        steps = 0
        while not (await backfill_step(conn, pg_schema)).done:
            steps += 1
        assert steps >= 2  # in chunks
        assert await conn.fetchval(
            f'SELECT sum(span_count) FROM "{pg_schema}".span_rollup_daily') == 3000
        assert_agree(await rolled.agent_stats(since), await exact.agent_stats(since))
    finally:
        await pool.close()
        await conn.close()


async def test_retention_keeps_rollups_as_configured(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    now = datetime.now(UTC)
    old = now - timedelta(days=10)
    await conn.execute(RANDOM_SQL.format(schema=pg_schema), old, 100, 600, None)
    await conn.execute(RANDOM_SQL.format(schema=pg_schema), now, 100, 600, None)
    await merge_pending(conn, pg_schema)
    try:
        for rollup_ttl, kept in ((400, 200), (5, 100)):
            s = make_settings(pg_schema, retention={"ttl_days": 3, "rollup_ttl_days": rollup_ttl,
                                                    "rollup_hourly_ttl_days": rollup_ttl})
            from sidecar.store.pool import LazyPool
            pool = LazyPool(s.postgres)
            try:
                await Retention(s.retention, s.postgres, FakeClock(wall=now.timestamp()),
                                pool).apply()
            finally:
                await pool.close()
            assert await conn.fetchval(
                f'SELECT count(*) FROM "{pg_schema}".ml_observability_spans') == 100
            for table in ("span_rollup_hourly", "span_rollup_daily"):
                assert await conn.fetchval(
                    f'SELECT sum(span_count) FROM "{pg_schema}".{table}') == kept, (
                    rollup_ttl, table)
    finally:
        await conn.close()


async def test_two_sinks_writing_the_same_agent_hour_lose_nothing(pg_schema: str) -> None:
    s = make_settings(pg_schema)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    def batch(k: int) -> list[SpanRecord]:
        return records([span(i, agent_name="same", start_time=(
            start + timedelta(milliseconds=1000 * k + i)).isoformat(), end_time=(
            start + timedelta(milliseconds=1000 * k + i + 5 + i % 90)).isoformat())
            for i in range(300)])

    async with PostgresSink(s.postgres, "p") as a, PostgresSink(s.postgres, "p") as b:
        conn = await connect(pg_schema)

        async def writer(sink: PostgresSink, ks: range) -> None:
            for k in ks:
                assert type(await sink.send(batch(k))).__name__ == "Delivered"

        async def merger() -> None:
            for _ in range(5):
                await merge_pending(conn, pg_schema)

        await asyncio.gather(writer(a, range(0, 10)), writer(b, range(10, 20)), merger())
        await merge_pending(conn, pg_schema)
        try:
            assert await rollup_count(conn, pg_schema, "span_rollup_hourly", start) == 6000
            raw = await conn.fetchrow(
                f'SELECT count(*) AS n, sum(duration_ms) AS s, min(duration_ms) AS lo, '
                f'max(duration_ms) AS hi FROM "{pg_schema}".ml_observability_spans')
            got = await conn.fetchrow(
                f'SELECT duration_count AS n, duration_sum AS s, duration_min AS lo, '
                f'duration_max AS hi, (SELECT sum(c) FROM unnest(hist_cnt) c) AS h '
                f'FROM "{pg_schema}".span_rollup_hourly')
            assert (got["n"], got["lo"], got["hi"], got["h"]) == (
                raw["n"], raw["lo"], raw["hi"], 6000)
            assert abs(got["s"] - raw["s"]) <= 1e-9 * raw["s"]
        finally:
            await conn.close()
