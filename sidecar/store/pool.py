"""Connections to the span store: one lazily opened pool per process, shared.

The pool opens on first use, so a caller starts (and the daemon ships to its
other sink) while Postgres is down; it migrates the schema when it is
missing or old and ``postgres.auto_migrate`` allows. jsonb travels in its
binary format: raw JSON text of a spool line passes through as it came.

A fleet puts PgBouncer (``pool_mode = transaction``) in front of one
database, so nothing here relies on a session: asyncpg's statement cache is
off (``statement_cache_size=0``: a cached, named statement lives in one
server session, and the next transaction may run on another, or on one where
another process's statement of the same name waits: PgBouncer 1.18 cannot
track them); the type introspection of ``init`` (which sets ``jit`` for the
session and restores it) runs in one transaction. Nothing may call
``Connection.prepare()`` (always a named statement).

The connection budget: the sink and the read side of one daemon hold
``LazyPool`` handles on the SAME settings object, and those share one asyncpg
pool (``postgres.pool_size`` connections, 1 by default; none kept open:
``min_size`` 0, and a connection idle for ``postgres.idle_timeout_s`` is
closed). So a shipping daemon holds at most one connection and an idle one
none. With a pool of 1 a caller must never acquire twice at once (the second
acquire would wait for the first forever): acquire, use, release.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import structlog
from msgspec import Raw

from sidecar.config.settings import PostgresSettings
from sidecar.store.migrate import is_current, migrate

log = structlog.get_logger("sidecar.pg")

CLOSE_TIMEOUT_S = 2.0
# Named statements kept in a server session break behind a transaction pooler.
STATEMENT_CACHE_SIZE = 0


def _jsonb_encode(value: Any) -> bytes:
    """jsonb's binary format: version 1, then the JSON text (raw text as it is).

    Called for every jsonb value of every row: the common type is tested
    first, and no ``bytes | Raw`` union is built per call."""
    if type(value) is Raw or isinstance(value, _TEXT_TYPES):
        return b"\x01" + value
    return b"\x01" + orjson.dumps(value)


_TEXT_TYPES = (bytes, Raw)


def _jsonb_decode(value: bytes) -> Any:
    return orjson.loads(value[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    """jsonb in binary: raw JSON text passes through, Python values are encoded.

    In a transaction: asyncpg's type introspection sets ``jit`` off for the
    session and back after; behind a pooler, one transaction keeps both on
    the same server connection."""
    async with conn.transaction():
        await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode,
                                  schema="pg_catalog", format="binary")


def _password(settings: PostgresSettings) -> str | None:
    return (settings.password.get_secret_value() if settings.password else "") or None


async def connect(settings: PostgresSettings) -> asyncpg.Connection:
    """One connection outside any pool (``migrate``), pooler-safe like the pool's."""
    return await asyncpg.connect(settings.dsn, password=_password(settings),
                                 timeout=settings.connect_timeout_s,
                                 command_timeout=settings.command_timeout_s,
                                 statement_cache_size=STATEMENT_CACHE_SIZE)


async def ensure_schema(conn: asyncpg.Connection, settings: PostgresSettings) -> None:
    """Migrate when the schema is missing or old and ``auto_migrate`` allows, else raise."""
    if await is_current(conn, settings.db_schema):
        return
    if not settings.auto_migrate:
        raise RuntimeError("schema missing or old: run `span-sidecar migrate`")
    await migrate(conn, settings.db_schema)


async def open_pool(settings: PostgresSettings, max_size: int | None = None) -> asyncpg.Pool:
    """An asyncpg pool that keeps no connection open it does not use."""
    return await asyncpg.create_pool(
        settings.dsn, password=_password(settings), min_size=0,
        max_size=max_size or settings.pool_size,
        max_inactive_connection_lifetime=settings.idle_timeout_s,
        timeout=settings.connect_timeout_s, command_timeout=settings.command_timeout_s,
        statement_cache_size=STATEMENT_CACHE_SIZE, init=init_connection)


@dataclass(eq=False, slots=True)
class _Shared:
    """One process's pool for one settings object, and the handles using it."""

    settings: PostgresSettings  # held: its id() keys this entry while it lives
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pool: asyncpg.Pool | None = None
    users: set[int] = field(default_factory=set)


# Per event loop (tests run many), per settings object.
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Shared]] = (
    weakref.WeakKeyDictionary())


class LazyPool:
    """A handle on the process's pool for ``settings``, opened (and the schema
    checked) on first use by any handle, closed when the last handle closes.

    ``purpose`` names it in ``pg.pool.opened``, logged at ``opened_level`` by
    the handle that opened it: the daemon says once, at info, that Postgres is
    reachable. ``max_size`` (default ``postgres.pool_size``) counts when this
    handle is the one that opens the pool.
    """

    def __init__(self, settings: PostgresSettings, max_size: int | None = None, *,
                 purpose: str = "sink", opened_level: int = logging.INFO) -> None:
        self.settings = settings
        self._max_size = max_size
        self._purpose = purpose
        self._opened_level = opened_level
        self._entry: _Shared | None = None

    def _shared(self) -> _Shared:
        if self._entry is None:
            entries = _SHARED.setdefault(asyncio.get_running_loop(), {})
            self._entry = entries.setdefault(id(self.settings), _Shared(self.settings))
            self._entry.users.add(id(self))
        return self._entry

    async def get(self) -> asyncpg.Pool:
        entry = self._shared()
        async with entry.lock:
            if entry.pool is None:
                s = self.settings
                pool = await open_pool(s, self._max_size)
                try:
                    async with pool.acquire() as conn:
                        await ensure_schema(conn, s)
                except BaseException:
                    await pool.close()
                    raise
                entry.pool = pool
                log.log(self._opened_level, "pg.pool.opened", schema=s.db_schema,
                        pool=self._purpose)
            return entry.pool

    def reset(self) -> None:
        """Drop the pool at once (its connections are dead); the next ``get`` reopens."""
        entry = self._entry
        if entry is not None and entry.pool is not None:
            pool, entry.pool = entry.pool, None
            pool.terminate()

    async def close(self) -> None:
        """Let go of the pool; the last handle closes it within ``CLOSE_TIMEOUT_S``
        (a COPY stuck on a dead network must not hold the exit: terminated past it)."""
        entry, self._entry = self._entry, None
        if entry is None:
            return
        entry.users.discard(id(self))
        if entry.users:
            return
        entries = _SHARED.get(asyncio.get_running_loop(), {})
        if entries.get(id(entry.settings)) is entry:
            del entries[id(entry.settings)]
        if entry.pool is not None:
            pool, entry.pool = entry.pool, None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                pool.terminate()
