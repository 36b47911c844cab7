"""Span updates into the stored rows: one row per span, whatever the order.

An update (spool kind ``span_update``) sets some columns of a span's row and
keeps the rest. Updates whose create was in the same batch were already
folded into it (``sidecar/sinks/updates.py``); the rest are applied here,
after the batch's COPY, in one transaction:

1. each span's updates are merged in spool order and applied with one
   ``UPDATE ... FROM jsonb_to_recordset(...)`` (``end_time`` also sets
   ``duration_ms``, ``error_info`` the ``status``);
2. an update whose row is not stored yet (the Opik SDK sends ``span.end()``
   before the batch holding the create) waits in
   ``span_sidecar_pending_updates`` (migration 0006), never as a row of its own
   (one whose span never arrives is removed by retention past ``ttl_days``);
3. pending updates of the spans this batch stored are applied and deleted.

A re-delivery repeats the same statements to the same values (idempotent);
a crash between the COPY and this transaction leaves the pending updates in
place for the re-delivered batch. Whether the pending table holds anything
is known from this sink's own inserts and deletes, and checked again at
most every ``PENDING_RECHECK_S`` while it seems empty: another sidecar of a
fleet may have written an update for a span stored meanwhile. A check that
finds rows applies every pending update whose span is stored by then (by
this sidecar or another), so such an update is merged within about
``PENDING_RECHECK_S`` of the next batch any sidecar of the fleet ships. A
daemon that never sees an update pays one small query every few seconds of
shipping.

Limits: rollups count a row as it was inserted (spans are append-only to
them: ``0005_rollups.sql``), so a duration set by a later update is in raw
``stats`` but not in the rollups; a pending update older than an update
folded into the create in the same batch is applied after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from sidecar.records import SpanUpdateRecord, utc_iso
from sidecar.sinks.updates import changes
from sidecar.store.partitions import PENDING_UPDATES  # retention expires them there too

# While the pending table seems empty, how long that is trusted before it is
# looked at again (another sidecar of the fleet may have written to it).
PENDING_RECHECK_S = 5.0
# column -> its SQL type in jsonb_to_recordset's column list
_TYPES = {"span_id": "uuid", "trace_id": "uuid", "parent_span_id": "uuid", "name": "text",
          "type": "text", "end_time": "timestamptz", "model": "text", "provider": "text",
          "prompt_tokens": "bigint", "completion_tokens": "bigint", "total_tokens": "bigint",
          "total_estimated_cost": "double precision", "error_info": "jsonb", "input": "jsonb",
          "output": "jsonb", "metadata": "jsonb", "tags": "text[]", "project_name": "text",
          "last_updated_at": "timestamptz"}
_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")
_KEPT = [c for c in _TYPES if c not in ("span_id", "end_time", "last_updated_at")]


def payload(update: SpanUpdateRecord) -> dict[str, Any]:
    """The columns an update sets, as JSON values (raw JSON fields as they came)."""
    out: dict[str, Any] = {}
    for name, value in changes(update).items():
        if name == "usage":
            out.update({k: value[k] for k in _USAGE if k in value})
        elif name in ("input", "output", "metadata"):
            out[name] = orjson.Fragment(bytes(value))
        elif name == "error_info":
            out[name] = {k: getattr(value, k) for k in ("exception_type", "message",
                                                         "traceback")}
        elif name in ("end_time", "last_updated_at"):
            out[name] = utc_iso(value)
        elif name in ("trace_id", "parent_span_id"):
            out[name] = str(value)
        else:
            out[name] = value
    return out


def _merged(items: Iterable[tuple[UUID, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One payload per span: later updates' columns replace earlier ones'."""
    by_span: dict[UUID, dict[str, Any]] = {}
    for span_id, cols in items:
        by_span.setdefault(span_id, {"span_id": str(span_id)}).update(cols)
    return list(by_span.values())


def _json(rows: Sequence[dict[str, Any]]) -> bytes:
    """jsonb parameters go as raw JSON text (store/pool.py's codec). U+0000
    cannot be stored in text or jsonb: as U+FFFD, like a create's (store/table.py)."""
    return orjson.dumps(rows).replace(b"\\u0000", b"\\ufffd")


class SpanUpdates:
    """Applies a batch's span updates; one per sink (it knows the table)."""

    def __init__(self, schema: str, table: str,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._pending = f"{schema}.{PENDING_UPDATES}"
        self._table = table
        cols = ", ".join(f"{c} {t}" for c, t in _TYPES.items())
        sets = ", ".join(f"{c} = COALESCE(u.{c}, t.{c})" for c in _KEPT)
        self._update = (
            f"UPDATE {table} AS t SET {sets}, end_time = COALESCE(u.end_time, t.end_time), "
            "duration_ms = EXTRACT(EPOCH FROM COALESCE(u.end_time, t.end_time) - t.start_time)"
            " * 1000, status = CASE WHEN COALESCE(u.error_info, t.error_info) IS NULL "
            "THEN 'ok' ELSE 'error' END, last_updated_at = GREATEST(u.last_updated_at, "
            f"t.last_updated_at) FROM jsonb_to_recordset($1::jsonb) AS u({cols}) "
            "WHERE t.span_id = u.span_id RETURNING t.span_id")
        self.maybe_pending: bool | None = None  # None: not checked yet
        self._monotonic = monotonic
        self._checked_at = 0.0  # when the table was last seen empty

    async def apply(self, conn: asyncpg.Connection, updates: Sequence[SpanUpdateRecord],
                    stored: Sequence[UUID]) -> None:
        """Apply ``updates`` and the pending updates of the ``stored`` spans."""
        if not updates and (not stored or self._known_empty()):
            return  # nothing to apply: no transaction (two round trips a batch)
        async with conn.transaction():
            if updates:
                await self._apply_new(conn, updates)
            if stored:
                await self._apply_waiting(conn, stored)

    async def _apply_new(self, conn: asyncpg.Connection,
                         updates: Sequence[SpanUpdateRecord]) -> None:
        rows = _merged((u.id, payload(u)) for u in updates)
        done = {str(r["span_id"]) for r in await conn.fetch(self._update, _json(rows))}
        waiting = [r for r in rows if r["span_id"] not in done]
        if waiting:
            await conn.execute(
                f"INSERT INTO {self._pending} (span_id, payload) "
                "SELECT (p->>'span_id')::uuid, p FROM jsonb_array_elements($1::jsonb) "
                "WITH ORDINALITY AS x(p, n) ORDER BY n", _json(waiting))
            self.maybe_pending = True

    def _known_empty(self) -> bool:
        return self.maybe_pending is False and (
            self._monotonic() - self._checked_at < PENDING_RECHECK_S)

    async def _apply_waiting(self, conn: asyncpg.Connection, stored: Sequence[UUID]) -> None:
        """The pending updates of the ``stored`` spans while the table is known
        to hold some. When it is looked at anew (not checked yet, or trusted
        empty for long enough), what was written meanwhile may be for spans
        stored meanwhile, here or by another sidecar: every pending update
        whose row exists is applied, ``stored``'s included, in one statement."""
        if self.maybe_pending:
            await self._apply_pending(conn, stored)
        elif not self._known_empty():
            await self._check_pending(conn)
            if self.maybe_pending:
                await self._apply_pending(conn, None)

    async def _check_pending(self, conn: asyncpg.Connection) -> None:
        self.maybe_pending = bool(await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {self._pending})"))
        self._checked_at = self._monotonic()

    async def _apply_pending(self, conn: asyncpg.Connection,
                             stored: Sequence[UUID] | None) -> None:
        """The pending updates of the ``stored`` spans, or (None) of every
        span whose row exists."""
        if stored is None:
            found = await conn.fetch(
                f"DELETE FROM {self._pending} AS p USING {self._table} AS t "
                "WHERE p.span_id = t.span_id RETURNING p.seq, p.span_id, p.payload")
        else:
            found = await conn.fetch(
                f"DELETE FROM {self._pending} WHERE span_id = ANY($1::uuid[]) "
                "RETURNING seq, span_id, payload", list(stored))
        if found:
            ordered = sorted(found, key=lambda r: r["seq"])
            rows = _merged((r["span_id"], _cols(r["payload"])) for r in ordered)
            await conn.fetch(self._update, _json(rows))
        await self._check_pending(conn)


def _cols(value: Any) -> dict[str, Any]:
    cols = orjson.loads(value) if isinstance(value, str | bytes) else dict(value)
    cols.pop("span_id", None)
    return dict(cols)
