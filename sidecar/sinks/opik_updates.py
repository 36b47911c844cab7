"""Span and trace updates as Opik's PATCH bodies (``SpanUpdate``, ``TraceUpdate``).

An update whose create was in the same batch was folded into it
(``sidecar/sinks/updates.py``) and sends nothing; the others go as one PATCH
each, to ``v1/private/spans/{id}`` or ``v1/private/traces/{id}`` with the id
mapped to version 7 like the create's, after the batch's creates. Only the
fields the update sets are sent: Opik keeps the others. A PATCH repeated
after a retry sets the same values again (idempotent).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from msgspec import Raw

from sidecar.records import SpanUpdateRecord, TraceUpdateRecord
from sidecar.sinks.opik_payloads import (
    _ENCODER,
    ErrorInfoWrite,
    Group,
    IdMap,
    _error_info,
    _opt_at,
    _tags,
    _Write,
)


class SpanUpdateWrite(_Write):
    project_name: str
    trace_id: UUID | None = None  # Opik requires it; the SDK always sends it
    parent_span_id: UUID | None = None
    name: str | None = None
    type: str | None = None
    end_time: datetime | None = None
    input: Raw | None = None
    output: Raw | None = None
    metadata: Raw | None = None
    model: str | None = None
    provider: str | None = None
    tags: list[str] | None = None
    usage: dict[str, int] | None = None
    total_estimated_cost: float | None = None
    error_info: ErrorInfoWrite | None = None


class TraceUpdateWrite(_Write):
    project_name: str
    name: str | None = None
    end_time: datetime | None = None
    input: Raw | None = None
    output: Raw | None = None
    metadata: Raw | None = None
    tags: list[str] | None = None
    error_info: ErrorInfoWrite | None = None
    thread_id: str | None = None


def span_update_write(update: SpanUpdateRecord, default_project: str,
                      ids: IdMap) -> tuple[UUID, SpanUpdateWrite]:
    """The PATCH's target id and body."""
    return ids[update.id][0], SpanUpdateWrite(
        project_name=update.project_name or default_project,
        trace_id=None if update.trace_id is None else ids[update.trace_id][0],
        parent_span_id=None if update.parent_span_id is None else ids[update.parent_span_id][0],
        name=update.name, type=update.type, end_time=_opt_at(update.end_time),
        input=update.input, output=update.output, metadata=update.metadata,
        model=update.model, provider=update.provider, tags=_tags(update.tags),
        usage=update.usage, total_estimated_cost=update.total_estimated_cost,
        error_info=_error_info(update.error_info))


def trace_update_write(update: TraceUpdateRecord, default_project: str,
                       ids: IdMap) -> tuple[UUID, TraceUpdateWrite]:
    return ids[update.id][0], TraceUpdateWrite(
        project_name=update.project_name or default_project, name=update.name,
        end_time=_opt_at(update.end_time), input=update.input, output=update.output,
        metadata=update.metadata, tags=_tags(update.tags),
        error_info=_error_info(update.error_info), thread_id=update.thread_id)


def update_group(record: SpanUpdateRecord | TraceUpdateRecord, index: int, project: str,
                  ids: IdMap) -> Group | str:
    """An update's own request (a PATCH of one id), or why it cannot be encoded."""
    try:
        if isinstance(record, SpanUpdateRecord):
            target, span_body = span_update_write(record, project, ids)
            group, body = Group("span_update", target=target), _ENCODER.encode(span_body)
        else:
            target, trace_body = trace_update_write(record, project, ids)
            group, body = Group("trace_update", target=target), _ENCODER.encode(trace_body)
        group.add(record, index, body + b",")
    except Exception as exc:
        return f"cannot encode for Opik: {type(exc).__name__}: {exc}"[:500]
    return group
