"""Running the command line and the daemon as an operator would."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from tests.support import PG_DSN

# Variables of the operator's environment that would change what a test reads.
CONFIG_VARS = ("SIDECAR_CONFIG", "SIDECAR_ENV", "SIDECAR_SPOOL_DIR", "SIDECAR_STATE_DIR",
               "SIDECAR_PG_DSN", "SIDECAR_PG_PASSWORD", "SIDECAR_REDIS_URL",
               "SIDECAR_HTTP_LISTEN", "OPIK_URL_OVERRIDE", "OPIK_API_KEY", "OPIK_WORKSPACE",
               "OPIK_PROJECT_NAME", "OPIK_CHECK_TLS_CERTIFICATE")
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy"}


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without config or proxy variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in CONFIG_VARS and k.lower() not in PROXY_VARS}
    return {**env, **extra}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``span-sidecar ARGS`` from ``cwd`` with a clean environment plus ``env``."""
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, cwd=cwd, env=clean_env(**(env or {})), timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    """A database of this test's own; yields its DSN, drops it afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    base = PG_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
