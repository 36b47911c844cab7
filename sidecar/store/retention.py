"""Retention: day partitions kept ahead, and spans older than ``retention.ttl_days`` removed,
with the pending span updates received before the same cutoff (their spans would be too).

One sidecar of a fleet applies the TTL at a time: the pass holds the
``retention`` lease (``store/lease.py``: a row, taken, renewed before each
drop and delete batch, and given back, each its own short transaction; no
session state, so it works behind PgBouncer in transaction mode), so a second
sidecar (or a ``span-sidecar retention`` run) finds it taken and says so
instead of waiting. Creating partitions ahead needs no lease: each day is
created under a transaction advisory lock (``store/partitions.py``).
The running daemon calls ``Retention.run`` every ``retention.interval_s``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial

import asyncpg
import structlog

from sidecar.clock import Clock
from sidecar.config.settings import PostgresSettings, RetentionSettings
from sidecar.store.lease import Lease
from sidecar.store.partitions import (
    Expiry,
    ensure_partitions,
    expire,
    expire_pending_updates,
    is_partitioned,
    pending_updates_cutoff,
)
from sidecar.store.pool import LazyPool
from sidecar.store.rollups import expire_rollups, rollup_cutoffs

log = structlog.get_logger("sidecar.retention")
# A pass that failed (Postgres down) is tried again this soon, not an interval later.
RETRY_AFTER_FAILURE_S = 60.0


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """One pass: partitions created, and what the TTL removed (None: TTL not applied)."""

    created: tuple[str, ...]
    expiry: Expiry | None
    locked_out: bool = False  # another sidecar held the retention lock


class Retention:
    def __init__(self, settings: RetentionSettings, postgres: PostgresSettings,
                 clock: Clock, pool: LazyPool) -> None:
        self.settings = settings
        self.schema = postgres.db_schema
        self.clock = clock
        self.pool = pool
        self.lease = Lease(self.schema, "retention")
        self.passes = 0
        self.passed = asyncio.Event()  # set after each pass of ``run``, failed or not

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.wall(), UTC)

    def cutoff(self) -> datetime | None:
        ttl = self.settings.ttl_days
        return None if ttl is None else self.now() - timedelta(days=ttl)

    async def apply(self, dry_run: bool = False) -> RetentionResult:
        """Create partitions ahead (unless dry) and apply the TTL once, if one is set."""
        pool = await self.pool.get()
        async with pool.acquire() as conn:
            created: list[str] = []
            if not dry_run and await is_partitioned(conn, self.schema):
                created = await ensure_partitions(conn, self.schema, self.now().date(),
                                                  self.settings.partitions_ahead_days)
            cutoff = self.cutoff()
            if cutoff is None:
                return RetentionResult(tuple(created), None)
            return await self._expire_locked(conn, cutoff, tuple(created), dry_run)

    async def _expire_locked(self, conn: asyncpg.Connection, cutoff: datetime,
                             created: tuple[str, ...], dry_run: bool) -> RetentionResult:
        if not await self.lease.acquire(conn):
            log.info("retention.run.skipped", schema=self.schema,
                     reason="another sidecar is applying retention")
            return RetentionResult(created, None, locked_out=True)
        try:
            renew = partial(self.lease.renew, conn)
            expiry = await expire(conn, self.schema, cutoff, self.settings.delete_batch_rows,
                                  dry_run, self.settings.trim_partial_day, renew=renew)
            before = pending_updates_cutoff(cutoff, self.settings.trim_partial_day)
            pending = await expire_pending_updates(conn, self.schema, before,
                                                   self.settings.delete_batch_rows, dry_run,
                                                   renew=renew)
            expiry = replace(expiry, pending_updates=pending, pending_cutoff=before)
            if not dry_run:  # rollups outlive the raw rows (store/rollups.py)
                await expire_rollups(conn, self.schema, *rollup_cutoffs(self.settings, self.now()))
        finally:
            await self.lease.release(conn)
        if not dry_run:
            log.info("retention.run.completed", schema=self.schema, cutoff=cutoff.isoformat(),
                     partitions_dropped=len(expiry.dropped), rows_removed=expiry.rows,
                     pending_updates_removed=expiry.pending_updates)
        return RetentionResult(created, expiry)

    async def run(self, stop: asyncio.Event) -> None:
        """Apply now and every ``interval_s`` until ``stop``; a failed pass is retried next time."""
        while not stop.is_set():
            wait_s = self.settings.interval_s
            try:
                await self.apply()
            except Exception as exc:  # the loop's boundary: log, retry sooner
                log.warning("retention.run.failed", schema=self.schema,
                            error_type=type(exc).__name__)
                wait_s = min(wait_s, RETRY_AFTER_FAILURE_S)
            self.passes += 1
            self.passed.set()
            try:
                await asyncio.wait_for(stop.wait(), wait_s)
            except TimeoutError:
                pass
