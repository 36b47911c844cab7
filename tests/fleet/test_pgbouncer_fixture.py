"""The private PgBouncer fixture, and the session assumptions it breaks.

Transaction pooling hands a client a server connection per transaction. A
fresh PgBouncer opens server connections on demand and hands out an idle one
when there is one, so the sequences below are deterministic: the first
client's transaction runs on the only server connection (S1); a second
client that opens a transaction takes S1; the first client's next
transaction needs a server and gets a new one (S2). What the first client
left in S1's session (a lock, a prepared statement) now belongs to whoever
holds S1.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest

from tests.pgbouncer import PgBouncer

KEY = 0x5EED_F1EE7


async def _connect(bouncer: PgBouncer, cache: bool = False) -> asyncpg.Connection:
    size = 100 if cache else 0  # 100 is asyncpg's default statement cache
    return await asyncpg.connect(bouncer.dsn, statement_cache_size=size)


async def test_a_query_passes_through_in_transaction_mode(pgbouncer: PgBouncer) -> None:
    conn = await _connect(pgbouncer)
    try:
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE t (x int) ON COMMIT DROP")
            await conn.copy_records_to_table("t", records=[(1,), (2,)])
            assert await conn.fetchval("SELECT sum(x) FROM t") == 3
    finally:
        await conn.close()
    pool = pgbouncer.pool("test")
    assert pool["pool_mode"] == "transaction"
    assert int(pool["sv_idle"]) + int(pool["sv_used"]) >= 1


async def test_a_session_advisory_lock_does_not_survive_transaction_pooling(
        pgbouncer: PgBouncer) -> None:
    a, b = await _connect(pgbouncer), await _connect(pgbouncer)
    try:
        locked, s1 = await a.fetchrow("SELECT pg_try_advisory_lock($1), pg_backend_pid()", KEY)
        assert locked
        async with b.transaction():  # b now holds S1, and with it a's session
            assert await b.fetchval("SELECT pg_backend_pid()") == s1
            unlocked, s2 = await a.fetchrow(
                "SELECT pg_advisory_unlock($1), pg_backend_pid()", KEY)
            assert s2 != s1
            assert not unlocked  # a cannot release the lock it took...
            holder = await a.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = $1::bigint"
                " AND granted", KEY & 0xFFFFFFFF)
            assert holder == s1
            assert await b.fetchval("SELECT pg_advisory_unlock($1)", KEY)  # ...b can
    finally:
        await a.close()
        await b.close()


async def test_a_transaction_scoped_advisory_lock_works_through_it(
        pgbouncer: PgBouncer) -> None:
    a, b = await _connect(pgbouncer), await _connect(pgbouncer)
    try:
        async with a.transaction():
            assert await a.fetchval("SELECT pg_try_advisory_xact_lock($1)", KEY)
            async with b.transaction():
                assert not await b.fetchval("SELECT pg_try_advisory_xact_lock($1)", KEY)
        async with b.transaction():
            assert await b.fetchval("SELECT pg_try_advisory_xact_lock($1)", KEY)
    finally:
        await a.close()
        await b.close()


async def test_asyncpg_statement_cache_breaks_through_it(
        pgbouncer_factory: Callable[..., PgBouncer], monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncpg's cache keeps named statements (``__asyncpg_stmt_<n>__``, n counted
    per process) in the server session. Through a pool of ONE server connection
    (so both clients meet on it, deterministically) another process's statement
    of the same name collides with ours. Without the cache (unnamed statements)
    the same sequence passes. (A cached statement sent to another server fails
    too, InvalidSQLStatementNameError; which server a client gets from a larger
    pool is PgBouncer's choice, so that case is not asserted here.)"""
    bouncer = pgbouncer_factory(pool_size=1)
    for cache in (True, False):
        a, b = await _connect(bouncer, cache), await _connect(bouncer, cache)
        try:
            count_before = asyncpg.connection._uid
            assert await a.fetchval("SELECT $1::int", 1) == 1  # on S1, named if cached
            # a second process counts from where this one did
            monkeypatch.setattr(asyncpg.connection, "_uid", count_before)
            if cache:
                with pytest.raises(asyncpg.DuplicatePreparedStatementError):
                    await b.fetchval("SELECT $1::int", 2)  # on S1 again, same name
            else:
                assert await b.fetchval("SELECT $1::int", 2) == 2
        finally:
            await a.close()
            await b.close()
