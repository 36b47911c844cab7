"""Updates (``span_update``, ``trace_update``) folded into the creates of the same batch.

The Opik SDK sends ``span.update()``, ``span.end()`` and ``trace.end()`` as
one PATCH each, at once, while creates wait for its next batch: in the
receiver's spool file an update usually comes *before* its create. Within a
batch the order does not matter: every update of an id whose create is in
the batch is applied to that create (in spool order, a field an update sets
replaces the create's, a field it leaves out is kept), and the update itself
sends nothing. Updates whose create is not in the batch are left to each
sink: Postgres updates the stored row or keeps the update until the row
comes (``sidecar/sinks/postgres_updates.py``), Opik gets a PATCH.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from sidecar.records import (
    Record,
    SpanRecord,
    SpanUpdateRecord,
    TraceRecord,
    TraceUpdateRecord,
)

_SPAN_FIELDS = tuple(f for f in SpanUpdateRecord.__struct_fields__ if f not in ("kind", "v", "id"))
_TRACE_FIELDS = tuple(f for f in TraceUpdateRecord.__struct_fields__
                      if f not in ("kind", "v", "id"))


def changes(update: SpanUpdateRecord | TraceUpdateRecord) -> dict[str, Any]:
    """The fields an update sets (a JSON null in a raw field sets nothing)."""
    names = _SPAN_FIELDS if isinstance(update, SpanUpdateRecord) else _TRACE_FIELDS
    return {n: v for n in names if (v := getattr(update, n)) is not None}


def apply(create: SpanRecord | TraceRecord,
          updates: Sequence[SpanUpdateRecord | TraceUpdateRecord]) -> SpanRecord | TraceRecord:
    """The create with each update's fields in turn; the newest version time."""
    merged: dict[str, Any] = {}
    for update in updates:
        merged.update(changes(update))
    versions = [t for t in (create.last_updated_at, merged.get("last_updated_at")) if t]
    if versions:
        merged["last_updated_at"] = max(versions)
    return msgspec.structs.replace(create, **merged) if merged else create


def fold(batch: Sequence[Record]) -> tuple[list[Record], set[int]]:
    """The batch with updates applied to their creates in it, and the
    indices of the updates so absorbed (they send nothing themselves)."""
    creates: dict[tuple[str, object], int] = {}
    for i, record in enumerate(batch):
        if isinstance(record, SpanRecord):
            creates[("span", record.id)] = i
        elif isinstance(record, TraceRecord):
            creates[("trace", record.id)] = i
    pending: dict[int, list[SpanUpdateRecord | TraceUpdateRecord]] = {}
    absorbed: set[int] = set()
    for i, record in enumerate(batch):
        if isinstance(record, SpanUpdateRecord | TraceUpdateRecord):
            kind = "span" if isinstance(record, SpanUpdateRecord) else "trace"
            target = creates.get((kind, record.id))
            if target is not None:
                pending.setdefault(target, []).append(record)
                absorbed.add(i)
    if not pending:
        return list(batch), absorbed
    out = list(batch)
    for target, updates in pending.items():
        create = batch[target]
        assert isinstance(create, SpanRecord | TraceRecord)
        out[target] = apply(create, updates)
    return out, absorbed
