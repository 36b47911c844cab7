"""Fixtures of the read-side tests: settings on a test's own schema and Redis
key prefix, rows seeded in SQL, and a private redis-server a test may stop."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from sidecar.config.settings import Settings
from sidecar.store.migrate import migrate
from tests.support import PG_DSN

REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of this test's own on a loopback port: stop it, start it again."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            assert self.proc.poll() is None, "redis-server exited"
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not answer within 10 s")
            time.sleep(0.02)  # polling interval of a condition wait

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the shared Redis; its keys deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def make_settings(schema: str, prefix: str = "", redis_url: str = REDIS_URL,
                  **sections: dict[str, Any]) -> Settings:
    data: dict[str, Any] = {
        "postgres": {"dsn": PG_DSN, "schema": schema},
        "redis": {"url": redis_url},
        "cache": {"key_prefix": prefix},
        "opik": {"enabled": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Settings.model_validate(data)


async def connect(schema: str | None = None) -> asyncpg.Connection:
    conn = await asyncpg.connect(PG_DSN)
    if schema is not None:
        await migrate(conn, schema)
    return conn


SEED_SQL = """
INSERT INTO "{schema}".ml_observability_spans
    (span_id, trace_id, name, type, agent_name, start_time, end_time, duration_ms, status,
     prompt_tokens, completion_tokens, total_tokens, total_estimated_cost)
SELECT gen_random_uuid(), gen_random_uuid(), 'llm.call', 'llm', $1,
       $2::timestamptz - (g * $4::double precision) * interval '1 second',
       $2::timestamptz - (g * $4::double precision) * interval '1 second'
           + (((g * 7919) % 1000) + 0.5) * interval '1 millisecond',
       ((g * 7919) % 1000) + 0.5,
       CASE WHEN g % 10 = 0 THEN 'error' ELSE 'ok' END,
       100, 20, 120, 0.001
FROM generate_series(1, $3) AS g
"""


async def seed(conn: asyncpg.Connection, schema: str, agent: str, newest: Any, n: int,
               spacing_s: float) -> None:
    """``n`` spans of ``agent``, the newest at ``newest``, ``spacing_s`` apart, with
    durations spread over 0.5..999.5 ms and every tenth span an error."""
    await conn.execute(SEED_SQL.format(schema=schema), agent, newest, n, spacing_s)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
