"""The daemon's rollup pass: merge pending deltas, backfill old rows, every few seconds.

Every sidecar runs it; the transaction-scoped advisory lock in
``store/rollups.py`` lets one of them work at a time (the others find it
taken and skip that round). Stats never wait for it (they read pending
deltas too), so its interval only bounds how many deltas pile up.

It runs only while there may be work: a round is due when this sidecar stored
spans since the last one (``poke``, from the sink's stored hook), when the
backfill is not finished, or when the last round failed or found the lock
taken. An idle sidecar runs none, so its pool can close its connection after
``postgres.idle_timeout_s`` (the connection budget). Deltas another sidecar
wrote are merged by that sidecar's own pass, or by anyone's next one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from sidecar.clock import Clock
from sidecar.config.settings import PostgresSettings, RetentionSettings
from sidecar.store.pool import LazyPool
from sidecar.store.rollups import backfill_step, merge_pending, summarize_start_index

log = structlog.get_logger("sidecar.rollups")
# A pass that failed (Postgres down) is tried again no later than this.
RETRY_AFTER_FAILURE_S = 30.0


@dataclass(frozen=True, slots=True)
class RollupResult:
    merged: int | None  # daily rows touched; None: another sidecar held the lock
    backfilled_rows: int
    backfill_done: bool


class RollupPass:
    def __init__(self, settings: RetentionSettings, postgres: PostgresSettings,
                 clock: Clock, pool: LazyPool, backfill_budget_s: float = 2.0) -> None:
        self.settings = settings
        self.schema = postgres.db_schema
        self.clock = clock
        self.pool = pool
        self.backfill_budget_s = backfill_budget_s
        self._backfill_done = False
        self.passes = 0
        self.passed = asyncio.Event()
        self._due = asyncio.Event()  # spans stored since the last round began

    def poke(self) -> None:
        """Spans were stored: a round is due (at the earliest one interval after the last)."""
        self._due.set()

    async def apply(self) -> RollupResult:
        """Backfill chunks for up to ``backfill_budget_s`` (until done), then merge."""
        pool = await self.pool.get()
        rows = 0
        async with pool.acquire() as conn:
            start = self.clock.monotonic()
            while not self._backfill_done:
                step = await backfill_step(conn, self.schema)
                rows += step.rows
                self._backfill_done = step.done
                if step.locked_out or self.clock.monotonic() - start > self.backfill_budget_s:
                    break
            if rows:
                log.info("rollups.backfill.advanced", schema=self.schema, rows=rows,
                         done=self._backfill_done)
            merged = await merge_pending(conn, self.schema)
            if merged is not None:  # this sidecar's turn: keep the window reads' index current
                await summarize_start_index(conn, self.schema)
        return RollupResult(merged, rows, self._backfill_done)

    async def run(self, stop: asyncio.Event) -> None:
        """Apply now, then every ``rollup_interval_s`` while a round is due, until ``stop``."""
        while not stop.is_set():
            wait_s = self.settings.rollup_interval_s
            self._due.clear()
            idle = False
            try:
                result = await self.apply()
                if result.backfilled_rows and not result.backfill_done:
                    wait_s = 0.0  # keep going: each chunk is its own short transaction
                idle = result.backfill_done and result.merged is not None
            except Exception as exc:  # the loop's boundary: log, retry
                log.warning("rollups.run.failed", schema=self.schema,
                            error_type=type(exc).__name__)
                wait_s = min(wait_s, RETRY_AFTER_FAILURE_S)
            self.passes += 1
            self.passed.set()
            await self.clock.wait(stop, wait_s)
            if idle and not self._due.is_set():
                await _first(stop, self._due)  # nothing to do until spans are stored


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
