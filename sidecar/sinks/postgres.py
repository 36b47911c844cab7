"""The PostgreSQL sink: spans into ``ml_observability_spans``, effectively once.

The fast path is a plain ``COPY`` into the table inside a transaction. Only a
batch that hits a unique violation (a re-delivery after a crash) takes the
slow path: ``COPY`` into a temporary staging table, then ``INSERT ... SELECT
... ON CONFLICT DO NOTHING``. Either way the batch is one transaction, so a
crash leaves it all or nothing, and the span id keeps it once.

A record Postgres refuses (a data error) is found from the COPY error's
CONTEXT, which names the failing line: that row is taken out and the scan
goes on from it (``base.isolate_rejects``), about one more COPY per refused
row, where halving the batch took up to ~2n COPYs. Halving stays the
fallback for errors that name no line. A row that cannot even be built is a
reject too, never the end of its batch; U+0000, which Postgres cannot store,
is replaced before it gets there (``sidecar/store/table.py``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import asyncpg
import structlog

from sidecar.config.secrets import scrub
from sidecar.config.settings import PostgresSettings, Settings
from sidecar.records import Record, SpanRecord, SpanUpdateRecord
from sidecar.sinks.base import (
    Delivered,
    Outcome,
    PartlyRejected,
    RejectError,
    Retry,
    SinkContext,
    StoredHook,
    isolate_rejects,
)
from sidecar.sinks.postgres_updates import SpanUpdates
from sidecar.sinks.updates import fold
from sidecar.store.migrate import quote_ident
from sidecar.store.pool import LazyPool
from sidecar.store.table import COLUMNS, TABLE, Row, build_row, span_row

__all__ = ["COLUMNS", "TABLE", "PostgresSink", "Row", "build", "span_row"]

log = structlog.get_logger("sidecar.sinks.postgres")

_COLS = ", ".join(COLUMNS)
# Errors of the data itself (SQLSTATE classes 22 and 23 but unique): retrying
# cannot help, so the record is isolated and quarantined.
# A value asyncpg cannot encode (a 2**64 integer in metadata for orjson) is a
# data error too, found before anything reaches the server; so is a row too
# big for an index (ProgramLimitExceeded).
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
                asyncpg.ProgramLimitExceededError, OverflowError, ValueError, TypeError)
# Where a COPY failed, in the error's CONTEXT: "COPY ml_observability_spans,
# line 1234, column input" (1-based; jsonb errors put a "JSON data" line first).
_COPY_LINE = re.compile(r"^COPY .*, line (\d+)", re.MULTILINE)


def build(settings: Settings, context: SinkContext) -> PostgresSink:
    """The sink registry's entry point."""
    pg = settings.postgres
    if context.probe_only and pg.auto_migrate:
        pg = pg.model_copy(update={"auto_migrate": False})  # a probe migrates nothing
    return PostgresSink(pg, settings.opik.project_name, on_stored=context.on_stored)


class PostgresSink:
    """Async context manager owning an asyncpg pool, created lazily (by the
    app's ``check`` at start, else by the first batch) so that the daemon
    starts, and ships to the other sink, while Postgres is down."""

    name = "postgres"

    def __init__(self, settings: PostgresSettings, default_project: str,
                 on_stored: StoredHook | None = None) -> None:
        self.settings = settings
        self.on_stored = on_stored
        self.max_batch_records = settings.max_batch_records
        self.batches_in_flight = 1  # streamed, one COPY at a time
        self.default_project = default_project
        self.schema = settings.db_schema
        # Shared with the read side of the same settings (store/pool.py): one budget.
        self._pool = LazyPool(settings)
        self._table = f"{quote_ident(self.schema)}.{TABLE}"
        self.nul_replaced_total = 0  # U+0000 stored as U+FFFD (store/table.py)
        self.updates = SpanUpdates(quote_ident(self.schema), self._table)

    async def __aenter__(self) -> PostgresSink:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._pool.close()

    async def pool(self) -> asyncpg.Pool:
        """The pool, connecting (and migrating when allowed) on first use."""
        return await self._pool.get()

    async def send(self, batch: Sequence[Record]) -> Outcome:
        batch, absorbed = fold(batch)  # updates into their creates (sinks/updates.py)
        updates = [r for i, r in enumerate(batch)
                   if isinstance(r, SpanUpdateRecord) and i not in absorbed]
        rows, unbuilt, nuls = self._rows(batch)
        rejects: dict[int, str] = {}
        if rows or updates:
            try:
                pool = await self.pool()
                refused = await isolate_rejects([r for _, r in rows], self._attempt(pool))
                stored = [row[0] for n, (_, row) in enumerate(rows) if n not in refused]
                async with pool.acquire() as conn:
                    await self.updates.apply(conn, updates, stored)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError,
                    RuntimeError) as exc:
                await self._reset_on_connection_error(exc)
                return Retry(f"{type(exc).__name__}: {_safe(exc)}")
            rejects = {rows[i][0]: reason for i, reason in refused.items()}
            self._count_nuls(nuls)
            await self._stored(r.agent_name for r in batch if isinstance(r, SpanRecord))
        rejects.update(unbuilt)
        return PartlyRejected(dict(sorted(rejects.items()))) if rejects else Delivered()

    def _rows(self, batch: Sequence[Record]) -> tuple[list[tuple[int, Row]], dict[int, str], int]:
        """The rows of the batch's spans by batch index, the spans whose row
        could not be built (a reject each, never the batch's end), and the
        U+0000 replaced."""
        rows: list[tuple[int, Row]] = []
        unbuilt: dict[int, str] = {}
        nuls = 0
        for i, record in enumerate(batch):
            if not isinstance(record, SpanRecord):
                continue
            try:
                row, n = build_row(record, self.default_project)
            except Exception as exc:
                unbuilt[i] = f"cannot build the row: {type(exc).__name__}: {_safe(exc)}"
                continue
            rows.append((i, row))
            nuls += n
        return rows, unbuilt, nuls

    def _count_nuls(self, nuls: int) -> None:
        if nuls:
            self.nul_replaced_total += nuls
            log.info("sink.postgres.nul_replaced", sink=self.name, characters=nuls,
                     note="U+0000 stored as U+FFFD: PostgreSQL text and jsonb refuse it")

    async def send_stream(self, records: AsyncIterator[Record]) -> Outcome:
        """COPY records while the pipeline is still parsing them (one transaction).

        Only the fast path: any failure (a re-delivery's unique violation, a
        data error, a lost connection) answers Retry, and the pipeline sends
        the sealed batch through ``send`` instead. The spans are not searched
        for U+0000 here (~0.7 us a span that nearly none needs): Postgres
        refuses a NUL, and ``send``, which replaces them, stores that batch.
        """
        agents: set[str | None] = set()
        stored: list[Any] = []

        async def rows() -> AsyncIterator[Row]:
            async for record in records:
                if isinstance(record, SpanRecord):
                    agents.add(record.agent_name)
                    # raises: falls back
                    row, _ = build_row(record, self.default_project, nul_free=True)
                    stored.append(record.id)
                    yield row
                elif isinstance(record, SpanUpdateRecord):  # folded by send() instead
                    raise ValueError("a span update: the batch goes through send()")

        try:
            pool = await self.pool()
            async with pool.acquire() as conn:
                await self._copy(conn, rows())
                await self.updates.apply(conn, (), stored)
        except Exception as exc:  # every failure falls back to the ordinary path
            return Retry(f"streamed COPY: {type(exc).__name__}: {_safe(exc)}")
        if agents:
            await self._stored(agents)
        return Delivered()

    async def _stored(self, agents: Iterable[str | None]) -> None:
        """Tell ``on_stored`` which agents got rows; its failure never fails the batch."""
        if self.on_stored is None:
            return
        try:
            await self.on_stored(frozenset(a for a in agents if a is not None))
        except Exception as exc:
            log.warning("sink.stored_hook.failed", sink=self.name, error_type=type(exc).__name__)

    def _attempt(self, pool: asyncpg.Pool) -> Callable[[Sequence[Row]], Awaitable[None]]:
        async def attempt(part: Sequence[Row]) -> None:
            async with pool.acquire() as conn:
                try:
                    await self._copy(conn, part)
                except asyncpg.UniqueViolationError:
                    await self._merge(conn, part)
                except _DATA_ERRORS as exc:
                    raise _reject(exc) from None
        return attempt

    async def _copy(self, conn: asyncpg.Connection,
                    rows: Sequence[Row] | AsyncIterator[Row]) -> None:
        # One COPY is one statement, so its own transaction: all or nothing
        # without a BEGIN and a COMMIT round trip around it.
        await conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS,
                                         schema_name=self.schema)

    async def _merge(self, conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            async with conn.transaction():
                # Dropped at commit: behind a pooler the server session (and a
                # table kept in it) goes to another client next, maybe another schema.
                await conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS span_sidecar_stage "
                    f"(LIKE {self._table} INCLUDING DEFAULTS) ON COMMIT DROP")
                await conn.copy_records_to_table("span_sidecar_stage", records=rows,
                                                 columns=COLUMNS)
                await conn.execute(
                    f"INSERT INTO {self._table} ({_COLS}) SELECT {_COLS} FROM span_sidecar_stage "
                    "ON CONFLICT (span_id, start_time) DO NOTHING")
            log.info("sink.postgres.merged", rows=len(rows),
                     note="batch overlapped stored rows (a re-delivery); duplicates skipped")
        except _DATA_ERRORS as exc:
            raise _reject(exc) from None

    async def _reset_on_connection_error(self, exc: BaseException) -> None:
        if isinstance(exc, asyncpg.PostgresError) and not isinstance(
                exc, asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError):
            return
        self._pool.reset()

    async def check(self) -> bool:
        try:
            pool = await self.pool()
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
            return True
        except Exception as exc:
            log.warning("sink.postgres.unavailable", error_type=type(exc).__name__,
                        error=_safe(exc))
            return False


def _safe(exc: BaseException) -> str:
    """The error's first line, any password in it masked, at most 500 characters."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return scrub(text)[:500]


def _reject(exc: BaseException) -> RejectError:
    """A data error as a reject, naming the refused row when the COPY said
    which (its CONTEXT's line number): the rest is sent again at once."""
    context = getattr(exc, "context", None)
    lines = _COPY_LINE.findall(context) if isinstance(context, str) else []
    return RejectError(_safe(exc), int(lines[-1]) - 1 if lines else None)
