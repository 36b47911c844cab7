"""Read-side benchmark: ``stats`` cold vs cached on 1M rows, ingest with retention
running vs not, and the 0.1 -> partitioned migration.

Run on demand (not part of the test suite):

    .venv/bin/python tests/bench/bench_stats.py --rows 1000000

1. 1M spans of 10 agents over the last 7 days (``INSERT ... SELECT
   generate_series``, ~600 bytes of jsonb each) in a partitioned schema;
   ``stats`` for 1h, 24h and 7d, all agents and one agent: cold (cache
   emptied before each call) and cached (Redis hit), median and p95 of runs;
2. ingest: the Postgres sink's ``send`` of 5000-span batches for a fixed time,
   alone, then during a retention pass that drops 10 day partitions of 50k
   rows and deletes 200k rows of the default partition in batches;
3. migration: the same rows in an unpartitioned 0.1 table, then ``migrate``.

``--only-rollups`` (issue 19) runs ``bench_rollups`` instead: ``--rows`` spans
of 20 agents over 7 days, stats from rollups, ingest with the rollup trigger on
vs off (``--skip stats ingest`` leaves those out; ``--http`` adds GET /stats):

    .venv/bin/python tests/bench/bench_stats.py --only-rollups --rows 10000000
    .venv/bin/python tests/bench/bench_stats.py --only-rollups --rows 1000000 --http \\
        --skip stats ingest
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.clock import SystemClock
from sidecar.read.service import ReadSide
from sidecar.records import SpanRecord, parse_line
from sidecar.sinks.postgres import PostgresSink
from sidecar.store.migrate import migrate
from sidecar.store.partitions import ensure_partitions
from sidecar.store.pool import LazyPool
from sidecar.store.retention import Retention
from tests.bench import bench_rollups
from tests.read.conftest import REDIS_URL, make_settings
from tests.read.test_retention import migrate_to_0_1
from tests.support import PG_DSN, line, span

FILL = """
INSERT INTO "{schema}".ml_observability_spans
    (span_id, trace_id, name, type, agent_name, start_time, end_time, duration_ms, status,
     model, provider, prompt_tokens, completion_tokens, total_tokens, total_estimated_cost,
     input, output, metadata, tags)
SELECT gen_random_uuid(), gen_random_uuid(), 'llm.call', 'llm', 'agent-' || (g % 10),
       $1::timestamptz - g * $2::double precision * interval '1 second',
       $1::timestamptz - g * $2::double precision * interval '1 second'
           + ((g * 7919) % 2000) * interval '1 millisecond',
       ((g * 7919) % 2000)::double precision,
       CASE WHEN g % 20 = 0 THEN 'error' ELSE 'ok' END, 'gpt-4o-mini', 'openai',
       120, 48, 168, 0.00042,
       jsonb_build_object('prompt', repeat('Summarise the customer tickets. ', 8)),
       jsonb_build_object('text', repeat('The customer reported login failures. ', 6)),
       jsonb_build_object('run', g, 'region', 'eu-west-1'), ARRAY['bench', 'llm']
FROM generate_series($3::bigint, $4::bigint) AS g
"""


async def fill(conn: asyncpg.Connection, schema: str, rows: int, newest: datetime,
               days: float = 7.0) -> float:
    spacing = days * 86400 / rows
    t0 = time.perf_counter()
    step = 200_000
    for lo in range(1, rows + 1, step):
        await conn.execute(FILL.format(schema=schema), newest, spacing, lo,
                           min(rows, lo + step - 1))
    await conn.execute(f'ANALYZE "{schema}".ml_observability_spans')
    return time.perf_counter() - t0


ms = bench_rollups.ms


async def bench_stats(schema: str, runs: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    settings = make_settings(schema, prefix)
    redis = Redis.from_url(REDIS_URL)
    async with ReadSide(settings, SystemClock()) as read:
        await read.stats.report("1h")  # connect and warm the plan cache
        for window in ("1h", "24h", "7d"):
            for agent in (None, "agent-3"):
                cold, warm, n = await bench_rollups.cold_and_cached(read, redis, window, agent,
                                                                    runs)
                print(f"stats {window:>3} {agent or 'all agents':<10} ({n:>7} spans): "
                      f"cold {ms(cold)}; cached {ms(warm)}")
        await redis.delete(*[k async for k in redis.scan_iter(match=f"{prefix}*")])
    await redis.aclose()


def batches(n_batches: int, size: int) -> list[list[SpanRecord]]:
    now = datetime.now(UTC)
    out = []
    for b in range(n_batches):
        batch = []
        for i in range(size):
            start = now - timedelta(seconds=(b * size + i) % 3600)
            rec = parse_line(line(span(i, start_time=start.isoformat(),
                                       end_time=(start + timedelta(milliseconds=150)
                                                 ).isoformat())).rstrip(b"\n"))
            assert isinstance(rec, SpanRecord)
            batch.append(rec)
        out.append(batch)
    return out


async def expired_rows(conn: asyncpg.Connection, schema: str, days: int, per_day: int,
                       default_rows: int) -> None:
    """Work for retention: ``days`` day partitions past a 30-day TTL, and rows in the
    default partition (too old for any day partition) to delete in batches."""
    for back in range(40, 40 + days):
        old = datetime.now(UTC) - timedelta(days=back)
        await ensure_partitions(conn, schema, old.date(), 0)
        await fill(conn, schema, per_day, old.replace(hour=23), days=0.9)
    await fill(conn, schema, default_rows, datetime(2001, 1, 2, tzinfo=UTC), days=0.9)


async def ingest(schema: str, seconds: float, with_retention: bool) -> tuple[float, str]:
    """Spans/s through the sink for ``seconds`` (and as long as the retention pass takes)."""
    settings = make_settings(schema, retention={"ttl_days": 30, "delete_batch_rows": 10_000})
    work = batches(8, 5000)
    note = ""
    if with_retention:
        conn = await asyncpg.connect(PG_DSN)
        await expired_rows(conn, schema, 10, 50_000, 200_000)
        await conn.close()
    pool = LazyPool(settings.postgres)
    ret = Retention(settings.retention, settings.postgres, SystemClock(), pool)

    async def retention_pass() -> str:
        t0 = time.perf_counter()
        result = await ret.apply()
        assert result.expiry is not None
        return (f"retention pass: {len(result.expiry.dropped)} partitions dropped, "
                f"{result.expiry.rows} rows removed in {time.perf_counter() - t0:.1f} s")

    stored = 0
    async with PostgresSink(settings.postgres, "p") as sink:
        await sink.pool()
        task = asyncio.create_task(retention_pass()) if with_retention else None
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < seconds or (task is not None and not task.done()):
            fresh = [msgspec.structs.replace(r, id=uuid.uuid4()) for r in work[i % len(work)]]
            await sink.send(fresh)
            stored += len(fresh)
            i += 1
        elapsed = time.perf_counter() - t0
        if task is not None:
            note = await task
    await pool.close()
    return stored / elapsed, note


async def bench_migration(rows: int) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await migrate_to_0_1(conn, schema)
        await fill(conn, schema, rows, datetime.now(UTC))
        t0 = time.perf_counter()
        await migrate(conn, schema)
        took = time.perf_counter() - t0
        n = await conn.fetchval(f'SELECT count(*) FROM "{schema}".ml_observability_spans')
        print(f"migration 0.1 -> partitioned: {n} rows in {took:.1f} s "
              f"({n / took:,.0f} rows/s)")
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def fleet(rows: int, runs: int, ingest_s: float, skip: list[str], http: bool) -> None:
    """Issue 19: stats from rollups over ``rows`` spans (``--http``: also GET /stats
    through the HTTP server), and ingest with the rollup trigger on vs off
    (alternating, 3 runs each)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await migrate(conn, schema)
        await ensure_partitions(conn, schema, datetime.now(UTC).date() - timedelta(days=8), 9)
        await bench_rollups.generate(conn, schema, rows, datetime.now(UTC))
        if http:
            await bench_rollups.bench_http(schema, runs)
        if "stats" not in skip:
            await bench_rollups.bench(schema, runs)
        if "ingest" in skip:
            return
        rates: dict[bool, list[float]] = {True: [], False: []}
        for enabled in (True, False) * 3:
            await conn.execute(f'ALTER TABLE "{schema}".ml_observability_spans '
                               f"{'ENABLE' if enabled else 'DISABLE'} TRIGGER span_rollup_capture")
            rates[enabled].append((await ingest(schema, ingest_s, False))[0])
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        print(f"ingest with rollups {on:,.0f} spans/s, without {off:,.0f} spans/s "
              f"({100 * (on / off - 1):+.1f} %); runs on {rates[True]}, off {rates[False]}")
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--ingest-s", type=float, default=20.0)
    p.add_argument("--skip", nargs="*", default=[], choices=("stats", "ingest", "migration"))
    p.add_argument("--only-rollups", action="store_true",
                   help="the fleet bench: --rows spans of 20 agents, stats from rollups")
    p.add_argument("--http", action="store_true",
                   help="with --only-rollups: also GET /stats?window=7d through the HTTP "
                        "server on a loopback port, cold = right after a stored span")
    args = p.parse_args()
    if args.only_rollups:
        await fleet(args.rows, args.runs, args.ingest_s, args.skip, args.http)
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await migrate(conn, schema)
        await ensure_partitions(conn, schema, datetime.now(UTC).date() - timedelta(days=7), 8)
        if "stats" not in args.skip:
            took = await fill(conn, schema, args.rows, datetime.now(UTC))
            print(f"filled {args.rows} rows in {took:.1f} s")
            await bench_stats(schema, args.runs)
        if "ingest" not in args.skip:
            for with_retention in (False, True, False, True):
                rate, note = await ingest(schema, args.ingest_s, with_retention)
                print(f"ingest {'with' if with_retention else 'without'} retention: "
                      f"{rate:,.0f} spans/s" + (f" ({note})" if note else ""))
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    if "migration" not in args.skip:
        await bench_migration(args.rows)


if __name__ == "__main__":
    asyncio.run(main())
