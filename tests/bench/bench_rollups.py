"""Fleet-scale stats from rollups (issue 19), run by ``bench_stats.py --only rollups``.

N spans over 7 days across 20 agents generated in SQL (the capture trigger
writes their deltas, as for the sink's COPY), merged by ``merge_pending`` as
the daemon's pass would; then ``stats`` cold (cache key deleted first) and
cached for 1h / 24h / 7d, one agent and all; the worst percentile error
against ``percentile_cont``; ingest through the sink with the trigger on and off.
``bench_http``: ``GET /stats`` through the daemon's HTTP server on a loopback
port, cold = the first call after the sink stored a span (the hook invalidated
the cache, as in the daemon), then cached.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from redis.asyncio import Redis

from sidecar.clock import SystemClock
from sidecar.health.http import HttpServer
from sidecar.read.repository import SpanRepository
from sidecar.read.service import ReadSide
from sidecar.records import SpanRecord, parse_line
from sidecar.sinks.postgres import PostgresSink
from sidecar.store.rollups import merge_pending
from tests.read.conftest import REDIS_URL, make_settings
from tests.support import PG_DSN, line, span

FLEET = """
INSERT INTO "{schema}".ml_observability_spans
    (span_id, trace_id, name, type, agent_name, start_time, end_time, duration_ms, status,
     prompt_tokens, completion_tokens, total_tokens, total_estimated_cost)
SELECT gen_random_uuid(), gen_random_uuid(), 'llm.call', 'llm',
       'agent-' || lpad((g % 20)::text, 2, '0'),
       $1::timestamptz - g * $2::double precision * interval '1 second', NULL,
       (200 + 40 * (g % 20)) * exp(0.9 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))
           * CASE WHEN random() < 0.01 THEN 20 ELSE 1 END,
       CASE WHEN random() < 0.02 THEN 'error' ELSE 'ok' END,
       (random() * 500)::int, (random() * 200)::int, (random() * 700)::int, random() / 100
FROM generate_series($3::bigint, $4::bigint) AS g
"""


async def generate(conn: asyncpg.Connection, schema: str, rows: int, newest: datetime) -> None:
    spacing = 7 * 86400 / rows
    t0 = time.perf_counter()
    for lo in range(rows, 0, -500_000):  # oldest first: rows arrive in start_time order
        await conn.execute(FLEET.format(schema=schema), newest, spacing, max(1, lo - 499_999), lo)
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    await merge_pending(conn, schema)
    merge = time.perf_counter() - t0
    await conn.execute(f'ANALYZE "{schema}".ml_observability_spans')
    hourly = await conn.fetchval(f'SELECT count(*) FROM "{schema}".span_rollup_hourly')
    print(f"generated {rows:,} spans (trigger writing deltas) in {gen:.1f} s; "
          f"merge pass {merge:.1f} s; {hourly} hourly rows")


def ms(samples: list[float]) -> str:
    s = sorted(samples)
    return f"median {1000 * statistics.median(s):.2f} ms, p95 {1000 * s[int(0.95 * len(s))]:.2f} ms"


async def cold_and_cached(read: ReadSide, redis: Redis, window: str, agent: str | None,
                          runs: int) -> tuple[list[float], list[float], int]:
    """Seconds of each cold call (its cache entry deleted first) and of the
    cached call after it, and the spans the answer covered."""
    cold, warm = [], []
    key = read.cache.key(window, agent)
    for _ in range(runs):
        await redis.delete(key)
        t0 = time.perf_counter()
        report = await read.stats.report(window, agent)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await read.stats.report(window, agent)
        warm.append(time.perf_counter() - t0)
    return cold, warm, sum(a.latency.span_count for a in report.agents)


def pct_error(rolled: list[float | None], exact: list[float | None]) -> float:
    return max(abs(r - e) / e for r, e in zip(rolled, exact, strict=True)
               if r is not None and e)


async def bench(schema: str, runs: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    redis = Redis.from_url(REDIS_URL)
    async with ReadSide(make_settings(schema, prefix), SystemClock()) as read:
        await read.stats.report("1h")
        for window in ("1h", "24h", "7d"):
            for agent in (None, "agent-03"):
                cold, warm, n = await cold_and_cached(read, redis, window, agent, runs)
                print(f"rollup stats {window:>3} {agent or 'all agents':<10} ({n:>8} spans): "
                      f"cold {ms(cold)}; cached {ms(warm)}")
    await redis.aclose()
    pool = await asyncpg.create_pool(PG_DSN, min_size=1, max_size=1)
    worst = 0.0
    now = datetime.now(UTC)
    for back in (timedelta(days=7), timedelta(hours=24), timedelta(hours=3, minutes=17)):
        rolled = await SpanRepository(pool, schema, exact_max_rows=0).agent_stats(now - back)
        exact = await SpanRepository(pool, schema, exact_max_rows=10**12).agent_stats(now - back)
        for r, e in zip(rolled, exact, strict=True):
            assert r.latency.span_count == e.latency.span_count
            worst = max(worst, pct_error(
                [r.latency.p50_ms, r.latency.p95_ms, r.latency.p99_ms],
                [e.latency.p50_ms, e.latency.p95_ms, e.latency.p99_ms]))
    await pool.close()
    print(f"worst relative p50/p95/p99 error vs percentile_cont: {100 * worst:.3f} %")


def one_span(agent: str) -> SpanRecord:
    start = datetime.now(UTC) - timedelta(seconds=1)
    rec = parse_line(line(span(0, agent_name=agent, start_time=start.isoformat(),
                               end_time=(start + timedelta(milliseconds=150)).isoformat())
                          ).rstrip(b"\n"))
    assert isinstance(rec, SpanRecord)
    return rec


async def bench_http(schema: str, runs: int, window: str = "7d") -> None:
    """``GET /stats?window=`` all agents: cold right after a stored span, then cached."""
    settings = make_settings(schema, f"bench-{uuid.uuid4().hex[:8]}:",
                             http={"listen": "127.0.0.1:0"})
    async with ReadSide(settings, SystemClock()) as read, \
            HttpServer(settings.http, lambda: b"", lambda: (True, [])) as server, \
            PostgresSink(settings.postgres, "p", on_stored=read.on_stored) as sink, \
            aiohttp.ClientSession() as client:
        server.set_stats_handler(read.stats_http)
        url = f"http://127.0.0.1:{server.port}/stats?window={window}"

        async def get() -> tuple[float, int]:
            t0 = time.perf_counter()
            async with client.get(url) as resp:
                assert resp.status == 200, resp.status
                body = await resp.json()
            return time.perf_counter() - t0, sum(a["latency"]["span_count"]
                                                 for a in body["agents"])

        await get()  # connect the pool and the client, warm the plan cache
        cold, warm, spans = [], [], 0
        misses = read.cache.stats().misses
        for _ in range(runs):
            await sink.send([one_span("agent-03")])  # invalidates, as the daemon's sink does
            took, spans = await get()
            cold.append(took)
            warm.append((await get())[0])
        assert read.cache.stats().misses - misses == runs, "a cold call was served cached"
    print(f"GET /stats?window={window} all agents ({spans:>8} spans) over HTTP: "
          f"cold (after a stored span) {ms(cold)}; cached {ms(warm)}")
