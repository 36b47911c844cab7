"""Spool records as Opik write payloads, and batches as Opik requests.

Pure functions, no I/O. The payloads are plain dicts holding only the fields
of Opik's ``SpanWrite``, ``TraceWrite`` and ``FeedbackScoreBatchItem`` that we
send (the tests check each shape against the ``opik`` package's own models),
encoded with orjson. Every value is a function of the record alone, so a
resend is byte-for-byte the same request: idempotent in Opik, which keeps the
row with the newest ``last_updated_at`` per id.

Derived traces: an agent may write spans only. For each root span (no
``parent_span_id``) whose trace has no explicit trace record in the same
batch, a trace is derived from the span. Its ``last_updated_at`` is the root
span's ``start_time`` so that an explicit trace record, whose version is its
own ``last_updated_at``, ``end_time`` or ``start_time``, normally wins in
whatever order the two arrive. Limitation: an explicit trace record in a
later batch overwrites the derived trace (that is the point), and one whose
version is older than the root span's start (a trace record with only a
``start_time`` earlier than its root span) loses to the derived trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import orjson
from msgspec import Raw

from sidecar.ids import to_v7
from sidecar.records import (
    ErrorInfo,
    FeedbackRecord,
    Record,
    SpanRecord,
    TraceRecord,
)

Payload = dict[str, Any]
Endpoint = Literal["spans", "traces", "trace_scores", "span_scores"]
# endpoint -> (HTTP method, path under the base URL, key of the item list)
ROUTES: dict[Endpoint, tuple[str, str, str]] = {
    "spans": ("POST", "v1/private/spans/batch", "spans"),
    "traces": ("POST", "v1/private/traces/batch", "traces"),
    "trace_scores": ("PUT", "v1/private/traces/feedback-scores", "scores"),
    "span_scores": ("PUT", "v1/private/spans/feedback-scores", "scores"),
}
OPIK_MAX_ITEMS = 1000
_DUMPS = orjson.OPT_UTC_Z


def _at(value: datetime) -> datetime:
    """The instant in UTC; orjson writes it as RFC 3339 with a Z (``_DUMPS``),
    the form Opik needs (it refuses timestamps without an offset)."""
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def ts(value: datetime) -> str:
    """The text a timestamp has in a payload."""
    return orjson.dumps(_at(value), option=_DUMPS)[1:-1].decode()


def _uuid(value: UUID) -> str:
    return str(to_v7(value))


def _put(out: Payload, **fields: Any) -> Payload:
    """Set the fields that are not None (Opik treats absent and null alike)."""
    out.update({key: value for key, value in fields.items() if value is not None})
    return out


def _originals(**ids: UUID | None) -> Payload:
    """The original of each id that ``to_v7`` changed, for metadata."""
    return {
        f"original_{key}": str(value)
        for key, value in ids.items()
        if value is not None and to_v7(value) != value
    }


def _error_info(info: ErrorInfo | None) -> Payload | None:
    """Opik needs a non-blank traceback; ours is optional, so fall back."""
    if info is None:
        return None
    fallbacks = (info.traceback, info.message, info.exception_type)
    traceback = next((text for text in fallbacks if text and text.strip()), info.exception_type)
    return _put({"exception_type": info.exception_type, "traceback": traceback},
                message=info.message)


def _raw(value: Raw | None) -> orjson.Fragment | None:
    """A raw JSON value of the spool line, embedded in the payload as it came."""
    return None if value is None else orjson.Fragment(bytes(value))


def _merged(value: Raw | None, extra: Payload) -> orjson.Fragment | None:
    """A raw JSON object with ``extra``'s keys added, without decoding it.

    The keys are appended, so where the object has one of them too, ours
    comes last, which is the one a JSON reader keeps.
    """
    if not extra:
        return _raw(value)
    tail = orjson.dumps(extra, option=_DUMPS)
    body = b"" if value is None else bytes(value)[:-1].rstrip()
    if len(body) <= 1:  # absent, or an empty object
        return orjson.Fragment(tail)
    return orjson.Fragment(body + b"," + tail[1:])


def _tags(tags: list[str] | None) -> list[str] | None:
    return None if tags is None else list(dict.fromkeys(tags))  # Opik: unique items


def _agent_fields(span: SpanRecord) -> Payload:
    """Our agent fields, which Opik would drop: they travel in metadata."""
    events = None if span.events is None else [
        _put({"name": e.name, "attributes": _raw(e.attributes)}, time=e.time and _at(e.time))
        for e in span.events
    ]
    return _put({}, agent_name=span.agent_name, agent_tier=span.agent_tier, events=events)


def span_write(span: SpanRecord, default_project: str) -> Payload:
    """A ``SpanWrite``: agent fields and original ids go into metadata."""
    extra = _agent_fields(span)
    extra.update(_originals(id=span.id, trace_id=span.trace_id,
                            parent_span_id=span.parent_span_id))
    meta = _merged(span.metadata, extra)
    version = span.last_updated_at or span.end_time or span.start_time
    return _put(
        {"id": _uuid(span.id), "trace_id": _uuid(span.trace_id),
         "project_name": span.project_name or default_project, "name": span.name,
         "type": span.type, "start_time": _at(span.start_time), "last_updated_at": _at(version)},
        parent_span_id=span.parent_span_id and _uuid(span.parent_span_id),
        end_time=span.end_time and _at(span.end_time), input=_raw(span.input),
        output=_raw(span.output), metadata=meta, model=span.model, provider=span.provider,
        tags=_tags(span.tags),
        usage=span.usage, total_estimated_cost=span.total_estimated_cost,
        error_info=_error_info(span.error_info),
    )


def trace_write(trace: TraceRecord, default_project: str) -> Payload:
    """A ``TraceWrite`` from an explicit trace record."""
    meta = _merged(trace.metadata, _originals(id=trace.id))
    version = trace.last_updated_at or trace.end_time or trace.start_time
    return _put(
        {"id": _uuid(trace.id), "project_name": trace.project_name or default_project,
         "name": trace.name, "start_time": _at(trace.start_time), "last_updated_at": _at(version)},
        end_time=trace.end_time and _at(trace.end_time), input=_raw(trace.input),
        output=_raw(trace.output), metadata=meta, tags=_tags(trace.tags),
        error_info=_error_info(trace.error_info),
        thread_id=trace.thread_id,
    )


def derived_trace_write(root: SpanRecord, default_project: str) -> Payload:
    """A ``TraceWrite`` derived from a root span (see the module docstring)."""
    extra = _agent_fields(root)
    extra.update(_originals(id=root.trace_id))
    meta = _merged(root.metadata, extra)
    return _put(
        {"id": _uuid(root.trace_id), "project_name": root.project_name or default_project,
         "name": root.name, "start_time": _at(root.start_time),
         "last_updated_at": _at(root.start_time)},
        end_time=root.end_time and _at(root.end_time), input=_raw(root.input),
        output=_raw(root.output), metadata=meta, tags=_tags(root.tags),
        error_info=_error_info(root.error_info),
    )


def score_write(feedback: FeedbackRecord, default_project: str) -> Payload:
    """A ``FeedbackScoreBatchItem``; the target id maps like the span's or trace's."""
    return _put(
        {"id": _uuid(feedback.id), "name": feedback.name, "value": feedback.value,
         "source": "sdk", "project_name": feedback.project_name or default_project},
        reason=feedback.reason,
    )


@dataclass(slots=True)
class Group:
    """Items bound for one endpoint; ``indices[i]`` is ``records[i]``'s batch index."""

    endpoint: Endpoint
    records: list[Record] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    # id(record) -> encoded item: what a sub-batch of ``records`` sends.
    bodies: dict[int, bytes] = field(default_factory=dict)
    size: int = 0

    def add(self, record: Record, index: int, body: bytes) -> None:
        self.records.append(record)
        self.indices.append(index)
        self.bodies[id(record)] = body
        self.size += len(body) + 1


@dataclass(slots=True)
class Plan:
    """A batch as requests: groups of at most the item and byte limits."""

    groups: list[Group]
    rejects: dict[int, str]  # records that cannot even be encoded

    @property
    def items(self) -> int:
        return sum(len(g.records) for g in self.groups)


def _payloads(batch: Sequence[Record], project: str) -> Iterator[tuple[Endpoint, int, Payload]]:
    explicit = {r.id for r in batch if isinstance(r, TraceRecord)}
    for index, record in enumerate(batch):
        if isinstance(record, SpanRecord):
            yield "spans", index, span_write(record, project)
            if record.parent_span_id is None and record.trace_id not in explicit:
                yield "traces", index, derived_trace_write(record, project)
        elif isinstance(record, TraceRecord):
            yield "traces", index, trace_write(record, project)
        else:
            endpoint: Endpoint = "trace_scores" if record.target == "trace" else "span_scores"
            yield endpoint, index, score_write(record, project)


def plan(batch: Sequence[Record], project: str, max_items: int, max_bytes: int) -> Plan:
    """Encode a batch and cut it into requests of <= max_items and <= max_bytes.

    An item larger than ``max_bytes`` on its own still goes, alone: the
    server's limit is what decides whether it is too large.
    """
    max_items = min(max_items, OPIK_MAX_ITEMS)
    open_groups: dict[Endpoint, Group] = {}
    done: list[Group] = []
    rejects: dict[int, str] = {}
    for endpoint, index, payload in _payloads(batch, project):
        try:
            # A copy at the exact size: orjson's output holds a buffer of at
            # least 4 KiB, ~4x an item's size, for as long as the batch lives.
            body = bytes(memoryview(orjson.dumps(payload, option=_DUMPS)))
        except orjson.JSONEncodeError as exc:
            rejects[index] = f"cannot encode for Opik: {exc}"
            continue
        group = open_groups.get(endpoint)
        overhead = len(envelope(endpoint, ()))
        if group is not None and (len(group.records) >= max_items
                                  or group.size + len(body) + overhead > max_bytes):
            done.append(group)
            group = None
        if group is None:
            group = open_groups[endpoint] = Group(endpoint)
        group.add(batch[index], index, body)
    done.extend(open_groups.values())
    for index in rejects:  # a record is all or nothing: drop its other items
        for group in done:
            _drop(group, batch[index])
    return Plan([g for g in done if g.records], rejects)


def _drop(group: Group, record: Record) -> None:
    keep = [i for i, r in enumerate(group.records) if r is not record]
    group.records = [group.records[i] for i in keep]
    group.indices = [group.indices[i] for i in keep]


def envelope(endpoint: Endpoint, bodies: Sequence[bytes]) -> bytes:
    """The request body: ``{"spans": [...]}`` from already encoded items."""
    key = ROUTES[endpoint][2]
    return b'{"' + key.encode() + b'":[' + b",".join(bodies) + b"]}"


def bodies_of(group: Group, records: Sequence[Record]) -> list[bytes]:
    """The encoded items of a sub-batch of ``group.records``."""
    bodies: Mapping[int, bytes] = group.bodies
    return [bodies[id(r)] for r in records]
