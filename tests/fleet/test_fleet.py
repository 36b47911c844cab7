"""A fleet on one store: real daemons, all at once, through one PgBouncer.

Eight ``span-sidecar run`` processes, each with its own spool and state
directory, start at the same moment against one schema nobody migrated,
through a private PgBouncer in ``pool_mode = transaction`` with a pool of 4
server connections. On the code before issue 19 this stored 38,500 of 44,000
spans in 120 s (asyncpg's named statements met each other on the shared server
connections: DuplicatePreparedStatementError, breakers opening) and every read
command after the first failed the same way.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sidecar.store.migrate import migrations
from tests.pgbouncer import PgBouncer
from tests.support import REPO, Daemon, SidecarEnv, query, span, wait_until, write_spans

SIDECARS = 8
SPANS_EACH = 5_500
# What asyncpg's statement cache (or a session lock) raises behind transaction pooling.
SESSION_ERRORS = (b"DuplicatePreparedStatement", b"InvalidSQLStatementName",
                  b"ProtocolViolation", b"InvalidBinaryRepresentation", b"BufferError")


def recent_spans(sidecar: int, n: int) -> list[dict[str, Any]]:
    """``n`` spans that started within the last hour (so stats windows see them)."""
    base = datetime.now(UTC) - timedelta(minutes=30)
    out = []
    for i in range(n):
        start = base + timedelta(milliseconds=i)
        out.append(span(i, agent_name=f"agent-{sidecar}", start_time=start.isoformat(),
                        end_time=(start + timedelta(milliseconds=100 + i % 50)).isoformat()))
    return out


def fleet_env(tmp: Path, schema: str, dsn: str, i: int) -> SidecarEnv:
    (tmp / f"sidecar-{i}").mkdir()
    env = SidecarEnv(tmp / f"sidecar-{i}", schema)
    env.configure(postgres={"dsn": dsn},
                  retention={"ttl_days": 365, "interval_s": 1})
    return env


def client_connections(bouncer: PgBouncer) -> int:
    """Clients of the test database on PgBouncer (the console's own is not one)."""
    return sum(1 for c in bouncer.show("CLIENTS") if c["database"] == "test")


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_eight_sidecars_at_once_through_pgbouncer(
        tmp_path: Path, pg_schema: str, pgbouncer_factory: Callable[..., PgBouncer]) -> None:
    bouncer = pgbouncer_factory(pool_size=4)
    envs = [fleet_env(tmp_path, pg_schema, bouncer.dsn, i) for i in range(SIDECARS)]
    traces = []
    for i, env in enumerate(envs):
        recs = recent_spans(i, SPANS_EACH)
        traces.append(recs[0]["trace_id"])
        write_spans(env.spool / f"agent-{i}-h-1-0.jsonl", recs)
    daemons: list[Daemon] = []
    try:
        daemons = [env.daemon() for env in envs]  # all at once, nobody migrated
        most_clients = 0

        def stored_all() -> bool:
            nonlocal most_clients
            most_clients = max(most_clients, client_connections(bouncer))
            return envs[0].rows() == SIDECARS * SPANS_EACH

        wait_until(stored_all, 60, "every span stored")
        for d in daemons:
            d.wait_started()
        wait_until(lambda: any(d.events("retention.run.completed") for d in daemons), 20,
                   "a daemon's retention pass through PgBouncer")
        assert all(d.events("sink.check.finished")[0]["reachable"] for d in daemons)
        # exactly once, every span
        distinct = query(
            f'SELECT count(DISTINCT span_id) FROM "{pg_schema}".ml_observability_spans')
        assert distinct[0][0] == SIDECARS * SPANS_EACH
        # one sidecar migrated, each version once
        applied = [e["migration"] for d in daemons for e in d.events("migrate.migration.applied")]
        shipped = [f"{m.version:04d}_{m.name}" for m in migrations()]
        assert sorted(applied) == shipped
        recorded = query(f'SELECT version FROM "{pg_schema}".span_sidecar_migrations')
        assert sorted(r[0] for r in recorded) == [m.version for m in migrations()]
        # at most one client connection per sidecar while shipping
        assert 0 < most_clients <= SIDECARS
        for d in daemons:
            text = d.log.read_bytes()
            assert not [e for e in SESSION_ERRORS if e in text], text[-3000:]
            assert not d.events("retention.run.failed")
        for d in daemons:
            d.signal(15)
            assert d.wait(30) == 0
    finally:
        for env in envs:
            env.stop_all()
    read_commands_answer(envs[0].config, pg_schema, traces[0])


def read_commands_answer(config: Path, schema: str, trace_id: str) -> None:
    """Every read command, one process after another (each left its server session
    to the next when statements were cached), through the same PgBouncer."""
    old = datetime.now(UTC) - timedelta(days=400)
    query(f'INSERT INTO "{schema}".ml_observability_spans (span_id, trace_id, name, type, '
          "agent_name, start_time, end_time, duration_ms, status) "
          "SELECT gen_random_uuid(), gen_random_uuid(), 'old', 'llm', 'agent-0', "
          "$1::timestamptz, $1::timestamptz, 1, 'ok' FROM generate_series(1, 10)", old)
    for args, expect in [
            (("migrate",), "schema is up to date"),
            (("stats", "--window", "24h"), "agent-7"),
            (("stats", "--window", "7d", "--agent", "agent-3", "--json"), '"agent-3"'),
            (("trace", trace_id), "llm.call"),
            (("retention", "--dry-run"), "would remove 10 spans"),
            (("retention",), "removed 10 spans"),
            (("stats", "--window", "1h"), "agent-0"),
            (("status",), "spool")]:
        out = cli(config, *args)
        assert out.returncode == 0 and expect in out.stdout, (args, out.stdout, out.stderr)
    assert uuid.UUID(trace_id)
