"""Fixtures shared by every test: a Postgres schema each, a spool each."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.opik_emulator import OpikEmulator
from tests.opik_fixtures import no_proxies
from tests.support import PG_DSN, SidecarEnv


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A Postgres schema of this test's own, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    asyncio.run(_drop(schema))


@pytest.fixture
def sidecar_env(tmp_path: Path, pg_schema: str) -> Iterator[SidecarEnv]:
    """A spool, a state directory, a config file and daemons to run on them."""
    env = SidecarEnv(tmp_path, pg_schema)
    yield env
    env.stop_all()


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpikEmulator]:
    """The project's Opik emulator on a loopback port, all traffic kept local."""
    no_proxies(monkeypatch)
    with OpikEmulator() as server:
        yield server
