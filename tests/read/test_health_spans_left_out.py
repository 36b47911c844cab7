"""The daemon's own health spans (agent ``span-sidecar``, name ``span-sidecar.health``,
~60 s each) stay out of the user's figures: all-agents ``stats``, ``GET /stats`` and
``v_agent_latency_summary``; ``--agent span-sidecar`` / ``agent=span-sidecar`` shows
them. Also: the read side's pool says it opened at debug, once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml
from redis.asyncio import Redis
from structlog.testing import capture_logs

from sidecar.app import App
from sidecar.clock import FakeClock
from sidecar.health import report
from sidecar.read.repository import HEALTH_AGENT, HEALTH_SPAN
from sidecar.read.service import ReadSide
from tests.read.conftest import REDIS_URL, connect, make_settings, seed
from tests.read.test_read_commands import now_span, until
from tests.support import PG_DSN, REPO, write_spans


def test_the_read_side_knows_the_health_span_by_the_reporters_names() -> None:
    assert (HEALTH_AGENT, HEALTH_SPAN) == (report.AGENT_NAME, report.SPAN_NAME)


async def seed_with_health(schema: str) -> None:
    """120 spans of alpha (0.5..999.5 ms) and 30 health spans of 60 s beside them."""
    conn = await connect(schema)
    now = datetime.now(UTC)
    await seed(conn, schema, "alpha", now, 120, 1.0)
    # Inserted as health spans (not updated into them): rollups follow inserts only.
    await conn.execute(
        f'INSERT INTO "{schema}".ml_observability_spans (span_id, trace_id, name, type, '
        "agent_name, start_time, end_time, duration_ms, status) "
        "SELECT gen_random_uuid(), gen_random_uuid(), $1, 'health', $2, "
        "$3::timestamptz - g * interval '60 seconds', "
        "$3::timestamptz - g * interval '60 seconds' + interval '60 seconds', 60000, 'ok' "
        "FROM generate_series(1, 30) AS g", HEALTH_SPAN, HEALTH_AGENT, now)
    await conn.close()


async def test_all_agents_stats_and_the_view_leave_health_spans_out(
        pg_schema: str, redis_prefix: str) -> None:
    await seed_with_health(pg_schema)
    settings = make_settings(pg_schema, redis_prefix)
    async with ReadSide(settings, FakeClock(wall=datetime.now(UTC).timestamp())) as read:
        every = await read.stats.report("1h")
        assert [a.agent_name for a in every.agents] == ["alpha"]
        assert every.agents[0].latency.max_ms is not None and every.agents[0].latency.max_ms < 1000
        health = await read.stats.report("1h", HEALTH_AGENT)
        (row,) = health.agents
        assert (row.agent_name, row.latency.span_count, row.latency.p50_ms) == (
            HEALTH_AGENT, 30, 60000.0)
        body = await read.stats_http({"window": "1h", "agent": HEALTH_AGENT})
        assert [a["agent_name"] for a in body["agents"]] == [HEALTH_AGENT]
        body = await read.stats_http({"window": "1h"})
        assert [a["agent_name"] for a in body["agents"]] == ["alpha"]
    conn = await connect()
    try:
        view = await conn.fetch(f'SELECT agent_name, span_count, p99_ms FROM "{pg_schema}".'
                                "v_agent_latency_summary ORDER BY agent_name")
        assert [tuple(r) for r in view] == [("alpha", 120, view[0]["p99_ms"])]
        assert view[0]["p99_ms"] < 1000
        note = await conn.fetchval("SELECT obj_description($1::regclass)",
                                   f'"{pg_schema}".v_agent_latency_summary')
        assert "health spans" in note
    finally:
        await conn.close()


async def add_health_span(schema: str) -> None:
    """One more health span, inserted now (the rollups' delta follows inserts)."""
    conn = await connect()
    try:
        await conn.execute(
            f'INSERT INTO "{schema}".ml_observability_spans (span_id, trace_id, name, type, '
            "agent_name, start_time, end_time, duration_ms, status) VALUES (gen_random_uuid(), "
            "gen_random_uuid(), $1, 'health', $2, now() - interval '61 seconds', "
            "now() - interval '1 second', 60000, 'ok')", HEALTH_SPAN, HEALTH_AGENT)
    finally:
        await conn.close()


async def test_health_spans_alone_make_nothing_stale_and_leave_redis_alone(
        pg_schema: str, redis_prefix: str) -> None:
    """The daemon's own agent is never cached, so a batch of health spans alone
    invalidates nothing (no Redis round trip) and every answer stays right: the
    all-agents entry (they are not in it) is still served, ``span-sidecar``'s
    answer counts the new span. Any other agent's spans, or spans without an
    agent, still invalidate ``*``."""
    await seed_with_health(pg_schema)
    settings = make_settings(pg_schema, redis_prefix)
    redis = Redis.from_url(REDIS_URL)

    async def keys() -> list[str]:
        return sorted([k.decode() async for k in redis.scan_iter(match=f"{redis_prefix}*")])

    async def health_count(read: ReadSide) -> int:
        (row,) = (await read.stats.report("1h", HEALTH_AGENT)).agents
        return row.latency.span_count

    clock = FakeClock(wall=datetime.now(UTC).timestamp())
    async with ReadSide(settings, clock) as read:
        await read.on_stored(frozenset({HEALTH_AGENT}))
        assert read.cache._client is None  # not even connected
        every = await read.stats.report("1h")
        assert await health_count(read) == 30
        assert await keys() == [f"{redis_prefix}obs_metrics:1h:*"]
        await add_health_span(pg_schema)
        await read.on_stored(frozenset({HEALTH_AGENT}))
        assert read.cache_stats().invalidations == 0
        assert await keys() == [f"{redis_prefix}obs_metrics:1h:*"]
        assert await read.stats.report("1h") == every  # from the cache, and still right
        assert read.cache_stats().hits == 1
        assert await health_count(read) == 31  # computed, never a stale entry
        await read.on_stored(frozenset({HEALTH_AGENT, "alpha"}))
        assert await keys() == []
        await read.stats.report("1h")
        assert await keys() == [f"{redis_prefix}obs_metrics:1h:*"]
        await read.on_stored(frozenset())  # spans without an agent name
        assert await keys() == []
        assert read.cache_stats().invalidations == 2
    await redis.aclose()


# Run in a process of its own: nothing may have imported redis before the daemon.
# It says which cached entries exist (redis-cli) and whether redis is loaded:
# after health spans alone, then after an agent's span.
DAEMON = """
import asyncio, subprocess, sys
from pathlib import Path
import asyncpg
from sidecar.app import App
from sidecar.config.settings import Settings
from tests.support import PG_DSN, span, write_spans

async def count(schema, agent):
    conn = await asyncpg.connect(PG_DSN)
    try:
        return await conn.fetchval(f'SELECT count(*) FROM "{schema}".ml_observability_spans '
                                   "WHERE agent_name = $1", agent)
    except asyncpg.UndefinedTableError:  # not migrated yet
        return 0
    finally:
        await conn.close()

async def until_stored(schema, agent, n):
    async with asyncio.timeout(30):
        while await count(schema, agent) < n:
            await asyncio.sleep(0.05)  # polling interval of a condition wait

def say(what, prefix):
    keys = subprocess.run(["redis-cli", "-p", "6379", "--scan", "--pattern", prefix + "*"],
                          capture_output=True, text=True, check=True).stdout.split()
    print(what, "redis" in sys.modules, *sorted(k[len(prefix):] for k in keys), flush=True)

async def main(schema, prefix, redis_url, tmp):
    spool = Path(tmp) / "spool"
    spool.mkdir()
    settings = Settings.model_validate({
        "postgres": {"dsn": PG_DSN, "schema": schema}, "redis": {"url": redis_url},
        "cache": {"key_prefix": prefix}, "opik": {"enabled": False},
        "spool": {"dir": str(spool), "state_dir": str(Path(tmp) / "state")},
        "batch": {"max_wait_ms": 50}, "http": {"enabled": False},
        "health": {"enabled": True, "interval_s": 0.2}})
    say("start", prefix)
    app, stop = App(settings), asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await until_stored(schema, "span-sidecar", 3)
    say("health", prefix)
    write_spans(spool / "web-h-1-0.jsonl", [span(0, agent_name="web")])
    await until_stored(schema, "web", 1)
    say("agent", prefix)
    stop.set()
    await task

asyncio.run(main(*sys.argv[1:]))
"""


async def test_the_daemon_invalidates_what_its_spans_make_stale_without_loading_redis(
        tmp_path: Path, pg_schema: str, redis_prefix: str) -> None:
    """The running daemon (real sink, real hook, real Redis) stores health spans
    without a Redis round trip (every entry stays), and an agent's span deletes
    that agent's and the all-agents entries (not another agent's), without ever
    loading the redis package (the DEL is ``read/resp.py``'s)."""
    redis = Redis.from_url(REDIS_URL)
    for agent in ("*", "web", "other"):
        await redis.set(f"{redis_prefix}obs_metrics:1h:{agent}", b"{}", px=60_000)
    await redis.aclose()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DAEMON, pg_schema, redis_prefix, REDIS_URL, str(tmp_path),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-3000:]
    said = [row for row in out.decode().splitlines()
            if row.startswith(("start ", "health ", "agent "))]
    every = "obs_metrics:1h:* obs_metrics:1h:other obs_metrics:1h:web"
    assert said == [f"start False {every}", f"health False {every}",
                    "agent False obs_metrics:1h:other"], out.decode()[-3000:]


def test_stats_command_leaves_health_spans_out_unless_asked_and_is_quiet(
        tmp_path: Path, pg_schema: str, redis_prefix: str) -> None:
    """Also: with ``-v`` (info) a command prints no ``pg.pool.opened`` line."""
    asyncio.run(seed_with_health(pg_schema))
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(yaml.safe_dump({
        "postgres": {"dsn": PG_DSN, "schema": pg_schema}, "redis": {"url": REDIS_URL},
        "cache": {"key_prefix": redis_prefix}, "opik": {"enabled": False},
        "spool": {"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state")}}))

    def stats(*args: str) -> tuple[list[str | None], str]:
        out = subprocess.run([sys.executable, "-m", "sidecar", "stats", "--json", "--config",
                              str(cfg), *args], capture_output=True, text=True, cwd=REPO,
                             timeout=60, env=dict(os.environ))
        assert out.returncode == 0, out.stderr
        return [a["agent_name"] for a in json.loads(out.stdout)["agents"]], out.stderr

    assert stats()[0] == ["alpha"]
    assert stats("--agent", HEALTH_AGENT)[0] == [HEALTH_AGENT]
    agents, err = stats("-v", "--window", "24h")
    assert agents == ["alpha"] and "pg.pool.opened" not in err


async def test_the_daemon_leaves_its_health_spans_out_and_says_its_pool_opened_once(
        tmp_path: Path, pg_schema: str, redis_prefix: str) -> None:
    """The running daemon's own health spans reach Postgres, are out of the
    all-agents ``/stats`` and in ``agent=span-sidecar``; ``pg.pool.opened`` is one
    info line (the sink's), the read side's a debug one."""
    settings = make_settings(
        pg_schema, redis_prefix,
        spool={"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state")},
        batch={"max_wait_ms": 50}, http={"enabled": True, "listen": "127.0.0.1:0"},
        health={"enabled": True, "interval_s": 0.2})
    (tmp_path / "spool").mkdir()
    app = App(settings)
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(app.run(stop))
        try:
            await asyncio.wait_for(app.started.wait(), 30)
            assert app.http is not None
            write_spans(tmp_path / "spool" / "web-h-1-0.jsonl", [now_span("web")])
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http.port}",
                                         trust_env=False) as client:
                async def health_rows() -> int:
                    r = await client.get("/stats", params={"agent": HEALTH_AGENT})
                    agents = r.json()["agents"]
                    return min(int(agents[0]["latency"]["span_count"]), 2) if agents else 0

                async def agents() -> int:
                    r = await client.get("/stats", params={"window": "24h"})
                    return len(r.json()["agents"])

                await until(health_rows, 2)
                await until(agents, 1)
                r = await client.get("/stats", params={"window": "24h"})
                assert [a["agent_name"] for a in r.json()["agents"]] == ["web"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    opened = [(e["log_level"], e.get("pool")) for e in logs if e["event"] == "pg.pool.opened"]
    # one pool for the sink and the read side (store/pool.py), opened by either
    assert opened in ([("info", "sink")], [("debug", "read")])
