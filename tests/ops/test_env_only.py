"""A container configured by its environment alone: no YAML file, any directory."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg

from tests.opik_emulator import OpikEmulator
from tests.ops.helpers import clean_env, free_port, fresh_database
from tests.support import Daemon, span, wait_until, write_spans


async def _rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM public.ml_observability_spans"))
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


def test_a_daemon_from_an_empty_directory_ships_where_the_environment_says(
        tmp_path: Path, emu: OpikEmulator) -> None:
    """Header, key and project checked at the emulator; rows in the named database."""
    emu.require_api_key("env-key", "env-workspace")
    empty = tmp_path / "cwd"
    empty.mkdir()
    with fresh_database() as dsn:
        env = clean_env(
            SIDECAR_PG_DSN=dsn, SIDECAR_SPOOL_DIR=str(tmp_path / "spool"),
            SIDECAR_STATE_DIR=str(tmp_path / "state"),
            SIDECAR_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
            OPIK_URL_OVERRIDE=emu.base_url, OPIK_API_KEY="env-key",
            OPIK_WORKSPACE="env-workspace", OPIK_PROJECT_NAME="env-project")
        log = tmp_path / "daemon.log"
        daemon = Daemon(None, log, env, cwd=empty).start().wait_started()
        try:
            ids = write_spans(tmp_path / "spool" / "agent-h-1-0.jsonl",
                              [span(i) for i in range(5)])
            wait_until(lambda: asyncio.run(_rows(dsn)) == 5, 20, "5 rows in the named database")
            emu.wait_for(lambda: len(emu.spans()) == 5, 20, "5 spans in Opik")
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(20) == 0
        finally:
            if daemon.alive:
                daemon.kill()
    spans_requests = emu.requests("spans")
    assert spans_requests and all(r.status == 204 for r in spans_requests)
    headers = spans_requests[0].headers
    assert headers["authorization"] == "env-key"
    assert headers["comet-workspace"] == "env-workspace"
    assert {s["project_name"] for s in emu.spans().values()} == {"env-project"}
    assert len(ids) == len(emu.spans()) == 5
    started = next(e for e in daemon.events("app.started"))
    assert started["spool_dir"] == str(tmp_path / "spool") and started["logger"] == "sidecar.app"
    text = log.read_text()
    assert "env-key" not in text
