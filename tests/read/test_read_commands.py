"""``stats``, ``trace`` and ``retention`` as operators run them, and ``GET /stats``
on the running app."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidecar.app import App
from tests.read.conftest import REDIS_URL, connect, make_settings, seed
from tests.support import PG_DSN, REPO, write_spans


def config(tmp_path: Path, schema: str, prefix: str, **sections: dict[str, Any]) -> Path:
    cfg: dict[str, Any] = {
        "postgres": {"dsn": PG_DSN, "schema": schema},
        "redis": {"url": REDIS_URL}, "cache": {"key_prefix": prefix},
        "opik": {"enabled": False}, "logging": {"format": "json"},
        "spool": {"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state")},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass
class Printed:
    out: str
    err: str


class Output:
    """What the last ``main`` printed."""

    buffered: tuple[str, str] = ("", "")

    def readouterr(self) -> Printed:
        return Printed(*self.buffered)


@pytest.fixture
def cli() -> Output:
    return Output()


def main(args: list[str], cli: Output) -> int:
    """The command line in a process of its own (the CLI configures the process's logging);
    what it printed is kept in ``cli``."""
    out = subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                         text=True, cwd=REPO, timeout=60, env=dict(os.environ))
    cli.buffered = (out.stdout, out.stderr)
    return out.returncode


def now_span(agent: str, **fields: Any) -> dict[str, Any]:
    start = datetime.now(UTC) - timedelta(seconds=5)
    rec: dict[str, Any] = {
        "id": str(uuid.uuid4()), "trace_id": str(uuid.uuid4()), "name": "llm.call",
        "type": "llm", "agent_name": agent, "start_time": start.isoformat(),
        "end_time": (start + timedelta(milliseconds=250)).isoformat(),
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "total_estimated_cost": 0.01,
    }
    rec.update(fields)
    return rec


async def seeded(schema: str) -> None:
    conn = await connect(schema)
    await seed(conn, schema, "alpha", datetime.now(UTC), 120, 1.0)
    await seed(conn, schema, "beta", datetime.now(UTC), 30, 1.0)
    await conn.close()


def test_stats_prints_a_table_and_json(tmp_path: Path, pg_schema: str, redis_prefix: str,
                                       cli: Output) -> None:
    asyncio.run(seeded(pg_schema))
    cfg = config(tmp_path, pg_schema, redis_prefix)
    assert main(["stats", "--window", "1h", "--config", str(cfg)], cli) == 0
    table = cli.readouterr().out
    header, alpha, beta = table.splitlines()[1:4]
    assert header.split()[:6] == ["agent", "spans", "errors", "err%", "p50", "ms"]
    assert alpha.split()[:4] == ["alpha", "120", "12", "10.0"]
    assert beta.split()[:2] == ["beta", "30"]


def test_stats_json_and_bad_window(tmp_path: Path, pg_schema: str, redis_prefix: str,
                                   cli: Output) -> None:
    asyncio.run(seeded(pg_schema))
    cfg = config(tmp_path, pg_schema, redis_prefix)
    assert main(["stats", "--config", str(cfg), "--window", "24h", "--agent", "beta",
                 "--json"], cli) == 0
    data = json.loads(cli.readouterr().out)
    assert data["window"] == "24h" and data["agent"] == "beta"
    (beta,) = data["agents"]
    assert beta["latency"]["span_count"] == 30 and beta["quality"]["tokens"]["total_tokens"] == 3600
    assert main(["stats", "--config", str(cfg), "--window", "1w"], cli) == 2
    assert "invalid window" in cli.readouterr().err


def test_stats_through_the_console_script(tmp_path: Path, pg_schema: str,
                                          redis_prefix: str) -> None:
    asyncio.run(seeded(pg_schema))
    cfg = config(tmp_path, pg_schema, redis_prefix)
    script = Path(sys.executable).parent / "span-sidecar"
    out = subprocess.run([str(script), "stats", "--window", "7d", "--json", "--config",
                          str(cfg)], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert [a["agent_name"] for a in json.loads(out.stdout)["agents"]] == ["alpha", "beta"]


def test_trace_prints_the_tree(tmp_path: Path, pg_schema: str,
                               cli: Output) -> None:
    settings = make_settings(pg_schema)
    trace, root, child = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())

    async def store() -> None:
        from sidecar.records import SpanRecord, parse_line
        from sidecar.sinks.postgres import PostgresSink
        from tests.support import line

        recs = [now_span("alpha", id=child, trace_id=trace, parent_span_id=root, name="tool",
                         error_info={"exception_type": "KeyError", "message": "k"}),
                now_span("alpha", id=root, trace_id=trace, name="plan",
                         start_time=(datetime.now(UTC) - timedelta(seconds=9)).isoformat())]
        parsed = [parse_line(line(r).rstrip(b"\n")) for r in recs]
        async with PostgresSink(settings.postgres, "p") as sink:
            await sink.send([r for r in parsed if isinstance(r, SpanRecord)])

    asyncio.run(store())
    cfg = config(tmp_path, pg_schema, "")
    assert main(["trace", trace, "--config", str(cfg)], cli) == 0
    lines = cli.readouterr().out.splitlines()
    assert lines[0] == f"trace {trace} (2 spans)"
    assert lines[1].startswith("plan [llm] agent=alpha") and " ok " in lines[1]
    assert lines[2].startswith("  tool [llm]") and "250.0 ms error" in lines[2]
    assert "KeyError: k" in lines[2]
    assert main(["trace", trace, "--json", "--config", str(cfg)], cli) == 0
    data = json.loads(cli.readouterr().out)
    assert [(d["depth"], d["span"]["name"]) for d in data] == [(0, "plan"), (1, "tool")]
    assert main(["trace", str(uuid.uuid4()), "--config", str(cfg)], cli) == 1
    assert "no stored spans" in cli.readouterr().err
    assert main(["trace", "not-a-uuid", "--config", str(cfg)], cli) == 2


def test_retention_dry_run_then_for_real(tmp_path: Path, pg_schema: str,
                                         cli: Output) -> None:
    async def old_rows() -> None:
        conn = await connect(pg_schema)
        await seed(conn, pg_schema, "alpha", datetime.now(UTC) - timedelta(days=9), 40, 60.0)
        await seed(conn, pg_schema, "alpha", datetime.now(UTC), 5, 60.0)
        await conn.close()

    asyncio.run(old_rows())
    cfg = config(tmp_path, pg_schema, "", retention={"ttl_days": 7})
    assert main(["retention", "--dry-run", "--config", str(cfg)], cli) == 0
    out = cli.readouterr().out
    assert "would delete 40 rows from ml_observability_spans_default" in out
    assert "would remove 40 spans in all" in out
    assert "pending span updates" not in out  # none waiting: no line
    asyncio.run(pending_updates(pg_schema, datetime.now(UTC) - timedelta(days=9), 3))
    asyncio.run(pending_updates(pg_schema, datetime.now(UTC), 1))
    assert main(["retention", "--dry-run", "--config", str(cfg)], cli) == 0
    out = cli.readouterr().out
    assert "  would delete 3 pending span updates received before the cutoff" in out
    assert main(["retention", "--config", str(cfg)], cli) == 0
    out = cli.readouterr().out
    assert "removed 40 spans in all" in out and "created partition" in out
    assert "  deleted 3 pending span updates received before the cutoff" in out
    unset = config(tmp_path, pg_schema, "")
    assert main(["retention", "--config", str(unset)], cli) == 0
    assert "retention.ttl_days is not set" in cli.readouterr().out


def test_retention_output_says_when_pending_updates_of_a_kept_day_stay() -> None:
    """Without trim_partial_day the updates of the cutoff's day are kept: the line says
    from when on."""
    from sidecar.commands.read import render_retention
    from sidecar.store.partitions import Expiry
    from sidecar.store.retention import RetentionResult

    cutoff = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    day = datetime(2026, 11, 28, tzinfo=UTC)
    out = render_retention(RetentionResult((), Expiry(cutoff, pending_updates=2,
                                                      pending_cutoff=day)))
    assert out.splitlines()[-1] == ("  deleted 2 pending span updates received before "
                                    "2026-11-28 00:00:00 UTC (partial days are kept)")


async def pending_updates(schema: str, received_at: datetime, n: int) -> None:
    """``n`` span updates waiting for spans never stored, received at ``received_at``."""
    conn = await connect(schema)
    try:
        await conn.execute(
            f'INSERT INTO "{schema}".span_sidecar_pending_updates (span_id, payload, received_at) '
            """SELECT gen_random_uuid(), '{"name": "late"}', $1 FROM generate_series(1, $2)""",
            received_at, n)
    finally:
        await conn.close()


async def until(probe: Callable[[], Awaitable[int]], want: int, deadline_s: float = 30) -> None:
    """Poll ``probe`` until it answers ``want``; fail at the deadline."""
    async with asyncio.timeout(deadline_s):
        got = await probe()
        while got != want:
            await asyncio.sleep(0.05)  # polling interval of a condition wait
            got = await probe()


async def test_the_app_serves_stats_fresh_after_a_flush_and_exports_cache_metrics(
        tmp_path: Path, pg_schema: str, redis_prefix: str) -> None:
    """GET /stats on the running daemon answers like ``stats``; spans of the agent
    stored by the daemon's own sink make the next answer include them."""
    settings = make_settings(
        pg_schema, redis_prefix,
        spool={"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state")},
        batch={"max_wait_ms": 50}, http={"enabled": True, "listen": "127.0.0.1:0"},
        health={"enabled": False})
    (tmp_path / "spool").mkdir()
    app = App(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await asyncio.wait_for(app.started.wait(), 30)
        assert app.http is not None
        base = f"http://127.0.0.1:{app.http.port}"
        async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
            async def count() -> int:
                r = await client.get("/stats", params={"window": "1h", "agent": "web"})
                assert r.status_code == 200, r.text
                agents = r.json()["agents"]
                return int(agents[0]["latency"]["span_count"]) if agents else 0

            write_spans(tmp_path / "spool" / "web-h-1-0.jsonl",
                        [now_span("web") for _ in range(5)])
            await until(count, 5)
            write_spans(tmp_path / "spool" / "web-h-1-0.jsonl",
                        [now_span("web") for _ in range(3)])
            await until(count, 8)
            bad = await client.get("/stats", params={"window": "soon"})
            assert bad.status_code == 400 and "invalid window" in bad.json()["error"]
            metrics = (await client.get("/metrics")).text
            assert 'span_sidecar_cache_requests_total{backend="redis",result="hit"}' in metrics
            assert "span_sidecar_cache_invalidations_total" in metrics
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
