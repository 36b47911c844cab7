"""The PostgreSQL sink: spans into ``ml_observability_spans``, effectively once.

The fast path is a plain ``COPY`` into the table inside a transaction. Only a
batch that hits a unique violation (a re-delivery after a crash) takes the
slow path: ``COPY`` into a temporary staging table, then ``INSERT ... SELECT
... ON CONFLICT DO NOTHING``. Either way the batch is one transaction, so a
crash leaves it all or nothing, and the span id keeps it once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import asyncpg
import structlog

from sidecar.migrate import quote_ident
from sidecar.pg import LazyPool
from sidecar.records import Record, SpanRecord, encode_json
from sidecar.settings import PostgresSettings, Settings, scrub
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

log = structlog.get_logger("sidecar.sinks.postgres")

TABLE = "ml_observability_spans"
# Called after a commit with the agent names of the batch's spans (spans
# without one add nothing; the hook is called even when the set is empty).
Row = tuple[Any, ...]
COLUMNS = (
    "span_id", "trace_id", "parent_span_id", "name", "type", "agent_name", "agent_tier",
    "project_name", "start_time", "end_time", "duration_ms", "status", "model", "provider",
    "prompt_tokens", "completion_tokens", "total_tokens", "total_estimated_cost",
    "error_info", "input", "output", "metadata", "events", "tags", "last_updated_at",
)
_COLS = ", ".join(COLUMNS)
# Errors of the data itself (SQLSTATE classes 22 and 23 but unique): retrying
# cannot help, so the record is isolated and quarantined.
# A value asyncpg cannot encode (a 2**64 integer in metadata for orjson) is a
# data error too, found before anything reaches the server; so is a row too
# big for an index (ProgramLimitExceeded).
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
                asyncpg.ProgramLimitExceededError, OverflowError, ValueError, TypeError)


def span_row(span: SpanRecord, default_project: str) -> tuple[Any, ...]:
    """The table row of a span; the free-form jsonb values are the raw JSON
    text of the line, which the jsonb codec passes through as it came."""
    usage = span.usage or {}
    return (
        span.id, span.trace_id, span.parent_span_id, span.name, span.type, span.agent_name,
        span.agent_tier, span.project_name or default_project, span.start_time, span.end_time,
        span.duration_ms, span.status, span.model, span.provider, usage.get("prompt_tokens"),
        usage.get("completion_tokens"), usage.get("total_tokens"), span.total_estimated_cost,
        None if span.error_info is None else encode_json(span.error_info),
        span.input, span.output, span.metadata,
        None if span.events is None else encode_json(span.events),
        span.tags, span.last_updated_at,
    )


def build(settings: Settings, context: SinkContext) -> PostgresSink:
    """The sink registry's entry point."""
    return PostgresSink(settings.postgres, settings.opik.project_name,
                        on_stored=context.on_stored)


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
        self._pool = LazyPool(settings, max_size=settings.pool_size)
        self._table = f"{quote_ident(self.schema)}.{TABLE}"

    async def __aenter__(self) -> PostgresSink:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._pool.close()

    async def pool(self) -> asyncpg.Pool:
        """The pool, connecting (and migrating when allowed) on first use."""
        return await self._pool.get()

    async def send(self, batch: Sequence[Record]) -> Outcome:
        rows = [(i, span_row(r, self.default_project)) for i, r in enumerate(batch)
                if isinstance(r, SpanRecord)]
        if not rows:
            return Delivered()
        try:
            pool = await self.pool()
            rejects = await isolate_rejects([r for _, r in rows], self._attempt(pool))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError,
                RuntimeError) as exc:
            await self._reset_on_connection_error(exc)
            return Retry(f"{type(exc).__name__}: {_safe(exc)}")
        await self._stored(r.agent_name for r in batch if isinstance(r, SpanRecord))
        if not rejects:
            return Delivered()
        return PartlyRejected({rows[i][0]: reason for i, reason in rejects.items()})

    async def send_stream(self, records: AsyncIterator[Record]) -> Outcome:
        """COPY records while the pipeline is still parsing them (one transaction).

        Only the fast path: any failure (a re-delivery's unique violation, a
        data error, a lost connection) answers Retry, and the pipeline sends
        the sealed batch through ``send`` instead.
        """
        agents: set[str | None] = set()

        async def rows() -> AsyncIterator[Row]:
            async for record in records:
                if isinstance(record, SpanRecord):
                    agents.add(record.agent_name)
                    yield span_row(record, self.default_project)

        try:
            pool = await self.pool()
            async with pool.acquire() as conn:
                await self._copy(conn, rows())
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
                    raise RejectError(_safe(exc)) from None
        return attempt

    async def _copy(self, conn: asyncpg.Connection,
                    rows: Sequence[Row] | AsyncIterator[Row]) -> None:
        async with conn.transaction():
            await conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS,
                                             schema_name=self.schema)

    async def _merge(self, conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            async with conn.transaction():
                await conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS span_sidecar_stage "
                    f"(LIKE {self._table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
                await conn.copy_records_to_table("span_sidecar_stage", records=rows,
                                                 columns=COLUMNS)
                await conn.execute(
                    f"INSERT INTO {self._table} ({_COLS}) SELECT {_COLS} FROM span_sidecar_stage "
                    "ON CONFLICT (span_id, start_time) DO NOTHING")
            log.info("sink.postgres.merged", rows=len(rows),
                     note="batch overlapped stored rows (a re-delivery); duplicates skipped")
        except _DATA_ERRORS as exc:
            raise RejectError(_safe(exc)) from None

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
