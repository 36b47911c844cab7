"""The daemon's rollup loop (``RollupPass.run``) on a FakeClock with the real Postgres:
it merges the pending deltas every ``retention.rollup_interval_s`` and not before,
two sidecars' passes never count a delta twice (one holds the advisory lock, the
other skips its round), a failed round is logged and tried again, and ``stop``
ends it. Time moves only when a test advances the clock; the waits below are
for Postgres round trips, each with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from structlog.testing import capture_logs

from sidecar.clock import FakeClock, yield_to_loop
from sidecar.store.partitions import lock_key
from sidecar.store.pool import LazyPool
from sidecar.store.rollup_pass import RETRY_AFTER_FAILURE_S, RollupPass
from sidecar.store.rollups import summarize_start_index
from tests.read.conftest import connect, make_settings, seed

DEADLINE_S = 20.0
INTERVAL_S = 60.0  # of clock time: longer than any real wait here, so only the clock moves it


@dataclass
class Running:
    rollups: RollupPass
    clock: FakeClock
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def next_pass(self, loops: int = 1) -> None:
        """Wait (deadline) until the loop has finished a round and, with the other
        ``loops`` on this clock, sleeps on it."""
        await asyncio.wait_for(self.rollups.passed.wait(), DEADLINE_S)
        self.rollups.passed.clear()
        await until(lambda: self.clock.sleepers >= loops, "the loops sleeping on the clock")

    async def idle_for(self, seconds: float) -> None:
        """Advance the clock by less than the interval: no round may start."""
        self.clock.advance(seconds)
        for _ in range(20):
            await yield_to_loop()
        assert not self.rollups.passed.is_set()


async def until(predicate: object, what: str) -> None:
    """Poll ``predicate`` (a callable) until it holds, failing at the deadline."""
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)  # polling interval of a condition wait


@asynccontextmanager
async def running(schema: str, clock: FakeClock, interval_s: float = INTERVAL_S
                  ) -> AsyncIterator[Running]:
    """One sidecar's rollup loop (its own pool) on ``clock``; stopped on the way out."""
    settings = make_settings(schema, retention={"rollup_interval_s": interval_s})
    pool = LazyPool(settings.postgres)
    rollups = RollupPass(settings.retention, settings.postgres, clock, pool)
    stop = asyncio.Event()
    task = asyncio.create_task(rollups.run(stop))
    try:
        yield Running(rollups, clock, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
        await pool.close()


async def pending(conn: asyncpg.Connection, schema: str) -> int:
    return int(await conn.fetchval(
        f'SELECT coalesce(sum(span_count), 0) FROM "{schema}".span_rollup_delta'))


async def rolled_up(conn: asyncpg.Connection, schema: str) -> tuple[int, int]:
    """Spans counted in the hourly rows and in the daily rows."""
    return (int(await conn.fetchval(
                f'SELECT coalesce(sum(span_count), 0) FROM "{schema}".span_rollup_hourly')),
            int(await conn.fetchval(
                f'SELECT coalesce(sum(span_count), 0) FROM "{schema}".span_rollup_daily')))


async def test_merges_the_pending_deltas_every_interval_and_not_before(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    clock = FakeClock()
    try:
        async with running(pg_schema, clock) as loop:
            await loop.next_pass()  # the first round runs at once
            await seed(conn, pg_schema, "agent-a", datetime.now(UTC), 500, 1.0)
            loop.rollups.poke()  # as the sink's stored hook does
            assert await pending(conn, pg_schema) == 500
            await loop.idle_for(INTERVAL_S - 0.1)
            assert await pending(conn, pg_schema) == 500
            assert await rolled_up(conn, pg_schema) == (0, 0)
            clock.advance(0.1)
            await loop.next_pass()
            assert await pending(conn, pg_schema) == 0
            assert await rolled_up(conn, pg_schema) == (500, 500)
            await seed(conn, pg_schema, "agent-b", datetime.now(UTC), 300, 1.0)
            loop.rollups.poke()
            clock.advance(INTERVAL_S)
            await loop.next_pass()
            assert await pending(conn, pg_schema) == 0
            assert await rolled_up(conn, pg_schema) == (800, 800)
            assert loop.rollups.passes == 3
            assert clock.monotonic() == 1_000.0 + 2 * INTERVAL_S
    finally:
        await conn.close()


async def hold_rollup_lock(conn: asyncpg.Connection,
                           schema: str) -> asyncpg.transaction.Transaction:
    """Take the rollups' advisory lock in a transaction left open (another sidecar merging)."""
    tx = conn.transaction()
    await tx.start()
    assert await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", lock_key("rollups", schema))
    return tx


async def test_two_sidecars_passes_never_count_a_delta_twice(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    holder = await connect()
    clock = FakeClock()
    try:
        async with running(pg_schema, clock) as one, running(pg_schema, clock) as two:
            await one.next_pass(loops=2)
            await two.next_pass(loops=2)
            await seed(conn, pg_schema, "agent-a", datetime.now(UTC), 400, 1.0)
            one.rollups.poke()
            two.rollups.poke()
            tx = await hold_rollup_lock(holder, pg_schema)
            clock.advance(INTERVAL_S)  # both rounds start together and find the lock taken
            await one.next_pass(loops=2)
            await two.next_pass(loops=2)
            assert await pending(conn, pg_schema) == 400
            assert await rolled_up(conn, pg_schema) == (0, 0)
            await tx.rollback()
            await seed(conn, pg_schema, "agent-b", datetime.now(UTC), 250, 1.0)
            for _ in range(3):  # both at once, three times: each delta merged once
                one.rollups.poke()  # both stored spans again
                two.rollups.poke()
                clock.advance(INTERVAL_S)
                await one.next_pass(loops=2)
                await two.next_pass(loops=2)
            assert await pending(conn, pg_schema) == 0
            assert await rolled_up(conn, pg_schema) == (650, 650)
        # Apply directly too: the loser of the lock reports that it merged nothing.
        settings = make_settings(pg_schema)
        pools = [LazyPool(settings.postgres) for _ in range(2)]
        passes = [RollupPass(settings.retention, settings.postgres, clock, p) for p in pools]
        tx = await hold_rollup_lock(holder, pg_schema)
        results = await asyncio.gather(*(p.apply() for p in passes))
        assert [r.merged for r in results] == [None, None]
        await tx.rollback()
        for p in pools:
            await p.close()
    finally:
        await holder.close()
        await conn.close()


async def test_a_failed_round_is_logged_and_tried_again(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    clock = FakeClock()
    interval_s = 4 * RETRY_AFTER_FAILURE_S  # a failure retries sooner than the interval
    try:
        async with running(pg_schema, clock, interval_s=interval_s) as loop:
            await loop.next_pass()
            await seed(conn, pg_schema, "agent-a", datetime.now(UTC), 200, 1.0)
            loop.rollups.poke()
            # The round fails inside Postgres: the table it merges into is gone.
            await conn.execute(f'ALTER TABLE "{pg_schema}".span_rollup_hourly '
                               "RENAME TO span_rollup_hourly_away")
            with capture_logs() as logs:
                clock.advance(interval_s)
                await loop.next_pass()
            failed = [e for e in logs if e["event"] == "rollups.run.failed"]
            assert [(e["log_level"], e["error_type"]) for e in failed] == [
                ("warning", "UndefinedTableError")]
            assert await pending(conn, pg_schema) == 200
            await conn.execute(f'ALTER TABLE "{pg_schema}".span_rollup_hourly_away '
                               "RENAME TO span_rollup_hourly")
            await loop.idle_for(RETRY_AFTER_FAILURE_S - 0.1)
            clock.advance(0.1)
            await loop.next_pass()
            assert await pending(conn, pg_schema) == 0
            assert await rolled_up(conn, pg_schema) == (200, 200)
            assert not loop.task.done()
    finally:
        await conn.close()


async def test_stop_ends_the_loop(pg_schema: str) -> None:
    conn = await connect(pg_schema)
    clock = FakeClock()
    try:
        async with running(pg_schema, clock) as loop:
            await loop.next_pass()
            await seed(conn, pg_schema, "agent-a", datetime.now(UTC), 100, 1.0)
            loop.stop.set()
            await asyncio.wait_for(loop.task, DEADLINE_S)  # no clock time passed
            assert loop.rollups.passes == 1
            assert await pending(conn, pg_schema) == 100  # no round after stop
        stopped = asyncio.Event()
        stopped.set()
        settings = make_settings(pg_schema)
        pool = LazyPool(settings.postgres)
        rollups = RollupPass(settings.retention, settings.postgres, clock, pool)
        await asyncio.wait_for(rollups.run(stopped), DEADLINE_S)
        assert rollups.passes == 0
        await pool.close()
    finally:
        await conn.close()


async def test_an_idle_sidecar_runs_no_round_until_spans_are_stored(pg_schema: str) -> None:
    """Nothing stored, nothing pending: the loop runs no round however long the
    clock runs (so its pool can close the connection after postgres.idle_timeout_s);
    the sink's stored hook (poke) brings the next round at once."""
    conn = await connect(pg_schema)
    clock = FakeClock()
    try:
        async with running(pg_schema, clock) as loop:
            await loop.next_pass()
            await loop.idle_for(INTERVAL_S)  # the interval after the round
            for _ in range(5):
                await loop.idle_for(INTERVAL_S)  # idle: no round, no clock sleeper
            assert loop.rollups.passes == 1
            await seed(conn, pg_schema, "agent-a", datetime.now(UTC), 120, 1.0)
            loop.rollups.poke()
            await asyncio.wait_for(loop.rollups.passed.wait(), DEADLINE_S)
            assert loop.rollups.passes == 2
            assert await rolled_up(conn, pg_schema) == (120, 120)
    finally:
        await conn.close()


async def test_a_round_summarizes_the_start_time_index(pg_schema: str) -> None:
    """Ranges of the BRIN index filled since the last round are summarized by it
    (unsummarized ranges match every window read): nothing is left to summarize."""
    conn = await connect(pg_schema)
    clock = FakeClock()
    settings = make_settings(pg_schema)
    pool = LazyPool(settings.postgres)
    try:
        rollups = RollupPass(settings.retention, settings.postgres, clock, pool)
        await rollups.apply()  # migrated, backfill done
        await seed(conn, pg_schema, "agent-a", datetime.now(UTC), 3000, 1.0)
        await seed(conn, pg_schema, "agent-b", datetime.now(UTC), 3000, 1.0)
        result = await rollups.apply()
        assert result.merged is not None and result.merged > 0
        assert await summarize_start_index(conn, pg_schema) == 0  # the round did them all
        await seed(conn, pg_schema, "agent-a", datetime.now(UTC), 3000, 1.0)
        assert await summarize_start_index(conn, pg_schema) > 0  # new rows: new ranges
    finally:
        await pool.close()
        await conn.close()
