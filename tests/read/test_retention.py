"""Day partitions and retention against the real Postgres."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import asyncpg
from structlog.testing import capture_logs

from sidecar.clock import FakeClock
from sidecar.store.lease import Lease
from sidecar.store.migrate import TABLE as MIGRATIONS
from sidecar.store.migrate import migrate, migrations, quote_ident
from sidecar.store.partitions import day_partitions, partition_name
from sidecar.store.pool import LazyPool
from sidecar.store.retention import Retention
from tests.read.conftest import connect, make_settings, seed
from tests.support import PG_DSN

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def retention_for(schema: str, now: datetime, **kw: object) -> tuple[Retention, LazyPool]:
    s = make_settings(schema, retention={"ttl_days": 3, "delete_batch_rows": 100, **kw})
    pool = LazyPool(s.postgres)
    return Retention(s.retention, s.postgres, FakeClock(wall=now.timestamp()), pool), pool


async def count(conn: asyncpg.Connection, schema: str, table: str = "ml_observability_spans",
                ) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {quote_ident(schema)}.{table}"))


async def test_partitions_are_created_ahead_and_old_ones_dropped(pg_schema: str) -> None:
    """A pass creates yesterday..today+3, drops days wholly past the TTL, trims the day
    the cutoff falls in row by row, and keeps everything newer."""
    conn = await connect(pg_schema)
    ret, pool = retention_for(pg_schema, NOON)
    try:
        first = await ret.apply(dry_run=True)  # a dry run creates nothing
        assert first.created == ()
        result = await ret.apply()
        days = await day_partitions(conn, pg_schema)
        for offset in range(-1, 4):
            assert NOON.date() + timedelta(days=offset) in days
        assert result.expiry is not None and result.expiry.rows == 0
        # one span an hour over the last six days, partitions for each of those days
        for back in range(2, 7):
            await ret_days(conn, pg_schema, NOON.date() - timedelta(days=back))
        await seed(conn, pg_schema, "alpha", NOON, 6 * 24, 3600.0)
        assert await count(conn, pg_schema, "ml_observability_spans_default") == 0
        cutoff = NOON - timedelta(days=3)
        expected_left = int(await conn.fetchval(
            f'SELECT count(*) FROM "{pg_schema}".ml_observability_spans WHERE start_time >= $1',
            cutoff))
        dry = await ret.apply(dry_run=True)
        assert dry.expiry is not None and dry.expiry.dry_run
        assert await count(conn, pg_schema) == 6 * 24  # nothing removed by a dry run
        done = await ret.apply()
        assert done.expiry is not None
        assert done.expiry.rows == dry.expiry.rows == 6 * 24 - expected_left
        dropped = {name for name, _ in done.expiry.dropped}
        assert dropped == {partition_name(NOON.date() - timedelta(days=d)) for d in (4, 5, 6)}
        assert [name for name, _ in done.expiry.deleted] == [
            partition_name(cutoff.date())]  # the partly expired day, in batches
        assert await count(conn, pg_schema) == expected_left
        assert not dropped & set((await day_partitions(conn, pg_schema)).values())
    finally:
        await pool.close()
        await conn.close()


async def ret_days(conn: asyncpg.Connection, schema: str, day: date) -> None:
    from sidecar.store.partitions import _create_day

    await _create_day(conn, schema, day)


async def test_default_partition_catches_out_of_range_rows_and_retention_trims_it(
        pg_schema: str) -> None:
    """A span far from any day partition is stored in the default partition; creating
    its day later moves it there; an expired one in the default partition is deleted."""
    conn = await connect(pg_schema)
    ret, pool = retention_for(pg_schema, NOON)
    try:
        await ret.apply()
        await seed(conn, pg_schema, "future", NOON + timedelta(days=30), 1, 1.0)
        await seed(conn, pg_schema, "ancient", datetime(2001, 1, 1, tzinfo=UTC), 3, 1.0)
        assert await count(conn, pg_schema, "ml_observability_spans_default") == 4
        far = (NOON + timedelta(days=30)).date()
        ret2, pool2 = retention_for(pg_schema, datetime.combine(far, NOON.timetz()))
        try:
            created = (await ret2.apply()).created
        finally:
            await pool2.close()
        assert partition_name(far) in created
        assert await count(conn, pg_schema, partition_name(far)) == 1
        assert await count(conn, pg_schema, "ml_observability_spans_default") == 0
        # ret2 ran 30 days later with a 3-day TTL: the ancient rows were deleted too
        assert await count(conn, pg_schema) == 1
    finally:
        await pool.close()
        await conn.close()


async def test_two_retention_runs_at_once_one_works_the_other_says_so(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    ret, pool = retention_for(pg_schema, NOON)
    holder = await asyncpg.connect(PG_DSN)
    try:
        await seed(conn, pg_schema, "alpha", NOON - timedelta(days=10), 10, 60.0)
        # another sidecar holds the lease: this run says so and removes nothing
        other_sidecar = Lease(pg_schema, "retention", holder="other-pod")
        assert await other_sidecar.acquire(holder)
        blocked = await ret.apply()
        assert blocked.locked_out and blocked.expiry is None
        assert await count(conn, pg_schema) == 10
        await other_sidecar.release(holder)
        # two at once, for real: exactly one of them removes the rows
        other, pool2 = retention_for(pg_schema, NOON)
        try:
            results = await asyncio.gather(ret.apply(), other.apply())
        finally:
            await pool2.close()
        worked = [r for r in results if not r.locked_out]
        assert sum(r.expiry.rows for r in worked if r.expiry) == 10
        assert await count(conn, pg_schema) == 0
    finally:
        await holder.close()
        await pool.close()
        await conn.close()


async def migrate_to_0_1(conn: asyncpg.Connection, schema: str) -> None:
    """The schema as version 0.1 left it: migrations 0001 and 0002 only."""
    q = quote_ident(schema)
    await conn.execute(f"CREATE SCHEMA {q}")
    await conn.execute(f"SET search_path TO {q}")
    await conn.execute(f"CREATE TABLE {MIGRATIONS} (version integer PRIMARY KEY, "
                       "name text NOT NULL, checksum text NOT NULL, "
                       "applied_at timestamptz NOT NULL DEFAULT now())")
    for mig in migrations()[:2]:
        await conn.execute(mig.sql)
        await conn.execute(f"INSERT INTO {MIGRATIONS} (version, name, checksum) "
                           "VALUES ($1, $2, $3)", mig.version, mig.name, mig.checksum)
    await conn.execute("RESET search_path")


async def test_0_1_table_migrates_to_partitions_keeping_every_row(pg_schema: str) -> None:
    """Rows of an unpartitioned 0.1 table, recent, ancient and future, come through
    the migration identical; the view and re-delivery keep working."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        await migrate_to_0_1(conn, pg_schema)
        now = datetime.now(UTC)
        await seed(conn, pg_schema, "alpha", now, 2000, 300.0)  # ~7 days
        await seed(conn, pg_schema, "beta", datetime(1999, 1, 1, tzinfo=UTC), 5, 1.0)
        await seed(conn, pg_schema, "gamma", now + timedelta(days=3650), 5, 1.0)
        await conn.execute(f'UPDATE "{pg_schema}".ml_observability_spans SET metadata = '
                           """'{"k": [1, 2]}', tags = '{a,b}' WHERE agent_name = 'beta'""")
        digest = (f'SELECT count(*), md5(string_agg(t::text, \',\' ORDER BY span_id)) '
                  f'FROM "{pg_schema}".ml_observability_spans t')
        before = await conn.fetchrow(digest)
        assert [m.split("_")[0] for m in await migrate(conn, pg_schema)] == [
            f"{m.version:04d}" for m in migrations() if m.version >= 3]  # 0003 on
        after = await conn.fetchrow(digest)
        assert tuple(after) == tuple(before) and after[0] == 2010
        assert await conn.fetchval(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass($1)",
            f"{pg_schema}.ml_observability_spans")
        assert len(await day_partitions(conn, pg_schema)) >= 7
        assert await count(conn, pg_schema, "ml_observability_spans_default") == 10
        view = await conn.fetch(f'SELECT agent_name, span_count FROM '
                                f'"{pg_schema}".v_agent_latency_summary ORDER BY 1')
        assert [(r[0], r[1]) for r in view] == [("alpha", 2000), ("beta", 5), ("gamma", 5)]
        span_id = await conn.fetchval(f'SELECT span_id FROM "{pg_schema}".ml_observability_spans '
                                      "WHERE agent_name = 'alpha' LIMIT 1")
        dup = await conn.execute(
            f'INSERT INTO "{pg_schema}".ml_observability_spans SELECT * FROM '
            f'"{pg_schema}".ml_observability_spans WHERE span_id = $1 '
            "ON CONFLICT (span_id, start_time) DO NOTHING", span_id)
        assert dup == "INSERT 0 0"
    finally:
        await conn.close()


async def test_retention_loop_applies_every_interval_until_stopped(pg_schema: str) -> None:
    """run(stop) makes a pass at once, and a pass that fails (Postgres unreachable)
    is logged and does not end the loop."""
    s = make_settings(pg_schema, retention={"interval_s": 3600})
    bad = make_settings(pg_schema, postgres={"dsn": "postgresql://postgres@127.0.0.1:1/test",
                                             "connect_timeout_s": 1})
    for settings, expect_partitions in ((s, True), (bad, False)):
        pool = LazyPool(settings.postgres)
        ret = Retention(settings.retention, settings.postgres, FakeClock(wall=NOON.timestamp()),
                        pool)
        stop = asyncio.Event()
        task = asyncio.create_task(ret.run(stop))
        await asyncio.wait_for(ret.passed.wait(), 20)
        stop.set()
        await asyncio.wait_for(task, 5)
        await pool.close()
        if expect_partitions:
            conn = await asyncpg.connect(PG_DSN)
            try:
                assert NOON.date() + timedelta(days=3) in await day_partitions(conn, pg_schema)
            finally:
                await conn.close()


async def test_a_lease_left_by_a_dead_sidecar_is_taken_once_it_expires(pg_schema: str) -> None:
    """A sidecar that died mid-pass never gives its lease back: it runs out after
    its TTL and the next pass takes it; a holder whose lease was taken over
    stops at its next step (``LeaseLost``)."""
    from sidecar.store.lease import LeaseLost

    conn = await connect(pg_schema)
    ret, pool = retention_for(pg_schema, NOON)
    try:
        await pool.get()  # migrated
        dead = Lease(pg_schema, "retention", holder="dead-pod", ttl_s=0)
        assert await dead.acquire(conn)  # expired by the next statement
        alive = Lease(pg_schema, "retention", holder="alive-pod")
        assert await alive.acquire(conn)
        try:
            await dead.renew(conn)
        except LeaseLost:
            pass
        else:
            raise AssertionError("a lease that ran out was renewed over its new holder")
        await alive.release(conn)
        assert await dead.acquire(conn)  # and dies again, holding it
        await seed(conn, pg_schema, "alpha", NOON - timedelta(days=10), 5, 60.0)
        done = await ret.apply()
        assert not done.locked_out and done.expiry is not None and done.expiry.rows == 5
    finally:
        await pool.close()
        await conn.close()


# -- pending span updates past the TTL ---------------------------------------

PENDING = "span_sidecar_pending_updates"


async def pend(conn: asyncpg.Connection, schema: str, received_at: datetime, n: int = 1) -> None:
    """``n`` pending updates for spans never stored, received at ``received_at``."""
    await conn.execute(
        f"INSERT INTO {quote_ident(schema)}.{PENDING} (span_id, payload, received_at) "
        """SELECT gen_random_uuid(), '{"name": "late"}', $1 FROM generate_series(1, $2)""",
        received_at, n)


async def pending_times(conn: asyncpg.Connection, schema: str) -> list[datetime]:
    return [r[0] for r in await conn.fetch(
        f"SELECT received_at FROM {quote_ident(schema)}.{PENDING} ORDER BY received_at")]


async def test_pending_updates_received_before_the_cutoff_go_with_the_pass(
        pg_schema: str) -> None:
    """A pending update received before the TTL's cutoff is removed by a pass (its span
    would be); one received after stays; a dry run only counts; no TTL keeps all."""
    conn = await connect(pg_schema)
    ret, pool = retention_for(pg_schema, NOON)
    cutoff = NOON - timedelta(days=3)
    old, new = cutoff - timedelta(hours=1), cutoff + timedelta(hours=1)
    try:
        await pend(conn, pg_schema, old)
        await pend(conn, pg_schema, new)
        keep = make_settings(pg_schema, retention={"ttl_days": None})
        kept = Retention(keep.retention, keep.postgres, FakeClock(wall=NOON.timestamp()), pool)
        assert (await kept.apply()).expiry is None
        assert await pending_times(conn, pg_schema) == [old, new]
        dry = await ret.apply(dry_run=True)
        assert dry.expiry is not None and dry.expiry.pending_updates == 1
        assert await pending_times(conn, pg_schema) == [old, new]  # a dry run removes nothing
        with capture_logs() as logs:
            done = await ret.apply()
        assert done.expiry is not None and done.expiry.pending_updates == 1
        assert done.expiry.pending_cutoff == cutoff and done.expiry.rows == 0
        assert await pending_times(conn, pg_schema) == [new]
        [completed] = [e for e in logs if e["event"] == "retention.run.completed"]
        assert completed["pending_updates_removed"] == 1
    finally:
        await pool.close()
        await conn.close()


async def test_pending_updates_of_a_day_kept_whole_are_kept_with_it(pg_schema: str) -> None:
    """Without trim_partial_day the cutoff's day is kept whole, so its span may still
    arrive: updates received that day are kept; those of earlier days go."""
    conn = await connect(pg_schema)
    ret, pool = retention_for(pg_schema, NOON, trim_partial_day=False)
    cutoff = NOON - timedelta(days=3)
    day = datetime.combine(cutoff.date(), datetime.min.time(), UTC)
    try:
        await pend(conn, pg_schema, day - timedelta(minutes=1))
        await pend(conn, pg_schema, cutoff - timedelta(hours=1))
        done = await ret.apply()
        assert done.expiry is not None and done.expiry.pending_updates == 1
        assert done.expiry.pending_cutoff == day
        assert await pending_times(conn, pg_schema) == [cutoff - timedelta(hours=1)]
    finally:
        await pool.close()
        await conn.close()


async def test_pending_updates_go_in_batches_renewing_the_lease(pg_schema: str) -> None:
    """More than delete_batch_rows old pending updates: every one goes, a batch at a
    time, the lease renewed before each."""
    from sidecar.store.partitions import expire_pending_updates

    conn = await connect(pg_schema)
    ret, pool = retention_for(pg_schema, NOON)  # delete_batch_rows=100
    old = NOON - timedelta(days=4)
    try:
        await pend(conn, pg_schema, old, 250)
        await pend(conn, pg_schema, NOON)
        done = await ret.apply()
        assert done.expiry is not None and done.expiry.pending_updates == 250
        assert await pending_times(conn, pg_schema) == [NOON]
        await pend(conn, pg_schema, old, 250)
        renewed = 0

        async def renew() -> None:
            nonlocal renewed
            renewed += 1

        assert await expire_pending_updates(conn, pg_schema, NOON - timedelta(days=3), 100,
                                            dry_run=False, renew=renew) == 250
        assert renewed == 3  # 100, 100, 50
        assert await pending_times(conn, pg_schema) == [NOON]
    finally:
        await pool.close()
        await conn.close()


async def test_a_schema_without_the_pending_table_expires_no_updates(pg_schema: str) -> None:
    """A schema migrated before 0006 has no pending table: nothing to remove, no error."""
    from sidecar.store.partitions import expire_pending_updates

    conn = await asyncpg.connect(PG_DSN)
    try:
        await migrate_to_0_1(conn, pg_schema)
        for dry_run in (True, False):
            assert await expire_pending_updates(conn, pg_schema, NOON, 100, dry_run) == 0
    finally:
        await conn.close()
