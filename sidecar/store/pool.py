"""Connections to the span store: one lazily opened pool, for the sink and the read side.

The pool opens on first use, so a caller starts (and the daemon ships to its
other sink) while Postgres is down; it migrates the schema when it is
missing or old and ``postgres.auto_migrate`` allows. jsonb travels in its
binary format: raw JSON text of a spool line passes through as it came.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import orjson
import structlog
from msgspec import Raw

from sidecar.config.settings import PostgresSettings
from sidecar.store.migrate import is_current, migrate

log = structlog.get_logger("sidecar.pg")

CLOSE_TIMEOUT_S = 2.0


def _jsonb_encode(value: Any) -> bytes:
    """jsonb's binary format: version 1, then the JSON text (raw text as it is)."""
    if isinstance(value, bytes | Raw):
        return b"\x01" + value
    return b"\x01" + orjson.dumps(value)


def _jsonb_decode(value: bytes) -> Any:
    return orjson.loads(value[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in binary: raw JSON text passes through, Python values are encoded."""
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode,
                              schema="pg_catalog", format="binary")


async def ensure_schema(conn: asyncpg.Connection, settings: PostgresSettings) -> None:
    """Migrate when the schema is missing or old and ``auto_migrate`` allows, else raise."""
    if await is_current(conn, settings.db_schema):
        return
    if not settings.auto_migrate:
        raise RuntimeError("schema missing or old: run `span-sidecar migrate`")
    await migrate(conn, settings.db_schema)


class LazyPool:
    """An asyncpg pool opened (and the schema checked) on first use.

    ``purpose`` names it in ``pg.pool.opened``, logged at ``opened_level``: the
    daemon holds two pools (the sink's and the read side's) and says once,
    at info, that Postgres is reachable; the other is a debug line.
    """

    def __init__(self, settings: PostgresSettings, max_size: int = 2, *,
                 purpose: str = "sink", opened_level: int = logging.INFO) -> None:
        self.settings = settings
        self._max_size = max_size
        self._purpose = purpose
        self._opened_level = opened_level
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                s = self.settings
                password = s.password.get_secret_value() if s.password else ""
                pool = await asyncpg.create_pool(
                    s.dsn, password=password or None, min_size=1, max_size=self._max_size,
                    timeout=s.connect_timeout_s, command_timeout=s.command_timeout_s,
                    init=init_connection)
                try:
                    async with pool.acquire() as conn:
                        await ensure_schema(conn, s)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
                log.log(self._opened_level, "pg.pool.opened", schema=s.db_schema,
                        pool=self._purpose)
            return self._pool

    def reset(self) -> None:
        """Drop the pool at once (its connections are dead); the next ``get`` reopens."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()

    async def close(self) -> None:
        """Close within ``CLOSE_TIMEOUT_S``: a COPY stuck on a dead network must
        not hold the exit, so the pool is terminated past it."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                pool.terminate()
