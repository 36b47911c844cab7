"""Spool records as Opik write payloads, and batches as Opik requests.

Pure functions, no I/O. The payloads are msgspec structs holding only the
fields of Opik's ``SpanWrite``, ``TraceWrite`` and ``FeedbackScoreBatchItem``
that we send (the tests check each shape against the ``opik`` package's own
models), encoded by msgspec in C. Every value is a function of the record alone, so a
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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import is_
from typing import Literal
from uuid import UUID, SafeUUID

import msgspec
from msgspec import Raw, Struct

from sidecar.records import (
    ErrorInfo,
    FeedbackRecord,
    Record,
    SpanRecord,
    SpanUpdateRecord,
    TraceRecord,
    TraceUpdateRecord,
)
from sidecar.sinks.opik_ids import V7_BITS as _V7_BITS
from sidecar.sinks.opik_ids import V7_MASK as _V7_MASK
from sidecar.sinks.opik_ids import mapped_bits
from sidecar.sinks.updates import fold

Endpoint = Literal["spans", "traces", "trace_scores", "span_scores", "span_update",
                   "trace_update"]
# endpoint -> (HTTP method, path under the base URL, key of the item list)
ROUTES: dict[Endpoint, tuple[str, str, str]] = {
    "spans": ("POST", "v1/private/spans/batch", "spans"),
    "traces": ("POST", "v1/private/traces/batch", "traces"),
    "trace_scores": ("PUT", "v1/private/traces/feedback-scores", "scores"),
    "span_scores": ("PUT", "v1/private/spans/feedback-scores", "scores"),
    # one update a request, its body unwrapped (sidecar/sinks/opik_updates.py)
    "span_update": ("PATCH", "v1/private/spans/{id}", ""),
    "trace_update": ("PATCH", "v1/private/traces/{id}", ""),
}
OPIK_MAX_ITEMS = 1000
_set = object.__setattr__
_UNKNOWN = SafeUUID.unknown


# The write models, as msgspec structs: encoded in C, None fields left out
# (Opik treats absent and null alike), ids and UTC times written by msgspec
# (a canonical UUID; RFC 3339 with a Z), raw JSON embedded as it came.
# The hot path builds them positionally (an 18-field struct: 0.11 us against
# 0.67 with keywords), so the order of the fields is also the constructor's.
class _Write(Struct, omit_defaults=True):
    pass


class ErrorInfoWrite(_Write):
    exception_type: str
    traceback: str
    message: str | None = None


class EventWrite(_Write):
    name: str
    attributes: Raw
    time: datetime | None = None


class MetadataExtra(_Write):
    """Our fields, which Opik would drop: appended to the record's metadata."""

    agent_name: str | None = None
    agent_tier: int | None = None
    events: list[EventWrite] | None = None
    # The ids as written, when mapping to v7 changed them (encoded canonical).
    original_id: UUID | None = None
    original_trace_id: UUID | None = None
    original_parent_span_id: UUID | None = None


class SpanWrite(_Write):
    id: UUID
    trace_id: UUID
    project_name: str
    name: str
    type: str
    start_time: datetime
    last_updated_at: datetime
    parent_span_id: UUID | None = None
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


class TraceWrite(_Write):
    id: UUID
    project_name: str
    name: str
    start_time: datetime
    last_updated_at: datetime
    end_time: datetime | None = None
    input: Raw | None = None
    output: Raw | None = None
    metadata: Raw | None = None
    tags: list[str] | None = None
    error_info: ErrorInfoWrite | None = None
    thread_id: str | None = None


class ScoreWrite(_Write):
    id: UUID
    name: str
    value: float
    project_name: str
    source: str  # "sdk"; no default, or omit_defaults would leave it out
    reason: str | None = None


Payload = SpanWrite | TraceWrite | ScoreWrite
_ENCODER = msgspec.json.Encoder()


def _at(value: datetime) -> datetime:
    """The instant in UTC: Opik refuses timestamps without an offset, and the
    encoder writes a UTC time with a Z."""
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _opt_at(value: datetime | None) -> datetime | None:
    return None if value is None else _at(value)


def ts(value: datetime) -> str:
    """The text a timestamp has in a payload."""
    return _ENCODER.encode(_at(value))[1:-1].decode()


class IdMap:
    """Each id's v7 image and, when mapping changed it, the id as written (kept
    in metadata). One per plan: a trace id is looked up for every span of its
    trace and for the derived trace, but mapped once. Keyed by the id's
    integer: ``UUID.__hash__`` and ``__eq__`` are Python code."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[int, tuple[UUID, UUID | None]] = {}

    def __getitem__(self, key: UUID) -> tuple[UUID, UUID | None]:
        i = key.int
        known = self._known.get(i)
        if known is None:
            if i & _V7_MASK == _V7_BITS:
                known = self._known[i] = (key, None)
            else:  # uuid_of, inline: a call is a fifth of its cost
                v7 = object.__new__(UUID)
                _set(v7, "int", mapped_bits(i))
                _set(v7, "is_safe", _UNKNOWN)
                known = self._known[i] = (v7, key)
        return known


def _error_info(info: ErrorInfo | None) -> ErrorInfoWrite | None:
    """Opik needs a non-blank traceback; ours is optional, so fall back."""
    if info is None:
        return None
    fallbacks = (info.traceback, info.message, info.exception_type)
    traceback = next((text for text in fallbacks if text and text.strip()), info.exception_type)
    return ErrorInfoWrite(exception_type=info.exception_type, traceback=traceback,
                          message=info.message)


_TAIL = bytearray()  # _merged's scratch buffer (plans run on one thread)


def _opened(value: Raw | None) -> bytes | None:
    """A raw JSON object's text up to its last value (no closing brace, no
    blank after the value), or None when there is no object or it is empty."""
    if value is None:
        return None
    body = bytes(value)
    if len(body) > 2 and body[-2] > 0x20:  # not {}, no blank before the }
        return body[:-1]
    body = body[:-1].rstrip()
    return None if len(body) <= 1 else body


def _merged(value: Raw | None, extra: MetadataExtra, opened: bytes | None = None) -> Raw | None:
    """A raw JSON object with ``extra``'s keys added, without decoding it
    (``opened``: ``_opened(value)``, when the caller has it already).

    The keys are appended, so where the object has one of them too, ours
    comes last, which is the one a JSON reader keeps.
    """
    tail = _TAIL
    _ENCODER.encode_into(extra, tail)
    if len(tail) == 2:  # {}
        return value
    if opened is None and value is not None:
        opened = _opened(value)
    if opened is None:  # no object, or an empty one
        return Raw(bytes(tail))
    tail[0] = 0x2C  # the tail's { becomes the comma after the object's last value
    return Raw(b"".join((opened, tail)))


def _tags(tags: list[str] | None) -> list[str] | None:
    """Opik wants unique items; most lists have one or two, checked without a dict."""
    if tags is None or len(tags) < 2 or (len(tags) == 2 and tags[0] != tags[1]):
        return tags
    return list(dict.fromkeys(tags))


def _events(span: SpanRecord) -> list[EventWrite] | None:
    if span.events is None:
        return None
    return [EventWrite(e.name, e.attributes, None if e.time is None else _at(e.time))
            for e in span.events]


def span_write(span: SpanRecord, default_project: str, ids: IdMap,
               derive: bool) -> tuple[SpanWrite, TraceWrite | None]:
    """A ``SpanWrite`` (agent fields and original ids go into metadata) and,
    when ``derive``, the trace derived from it (see the module docstring).

    One function for both, as they share most of their values: the trace
    id's mapping, the times, tags, events and error_info, and the metadata
    object opened once for both merges (~0.6 us a root span).
    """
    span_id, original_id = ids[span.id]
    trace_id, original_trace_id = ids[span.trace_id]
    parent: UUID | None = None
    original_parent: UUID | None = None
    if span.parent_span_id is not None:
        parent, original_parent = ids[span.parent_span_id]
    events = None if span.events is None else _events(span)
    start, end, version = span.start_time, span.end_time, span.last_updated_at
    start = start if start.tzinfo is UTC else start.astimezone(UTC)
    if end is not None and end.tzinfo is not UTC:
        end = end.astimezone(UTC)
    if version is None:
        version = start if end is None else end
    elif version.tzinfo is not UTC:
        version = version.astimezone(UTC)
    project, tags, info = span.project_name or default_project, _tags(span.tags), span.error_info
    info_write = None if info is None else _error_info(info)
    metadata = span.metadata
    opened = None if metadata is None else _opened(metadata)
    extra = MetadataExtra(span.agent_name, span.agent_tier, events, original_id,
                          original_trace_id, original_parent)
    write = SpanWrite(
        span_id, trace_id, project, span.name, span.type, start, version, parent, end,
        span.input, span.output, _merged(metadata, extra, opened), span.model, span.provider,
        tags, span.usage, span.total_estimated_cost, info_write,
    )
    if not derive:
        return write, None
    extra = MetadataExtra(span.agent_name, span.agent_tier, events, original_trace_id)
    return write, TraceWrite(
        trace_id, project, span.name, start, start, end, span.input, span.output,
        _merged(metadata, extra, opened), tags, info_write,
    )


def trace_write(trace: TraceRecord, default_project: str, ids: IdMap) -> TraceWrite:
    """A ``TraceWrite`` from an explicit trace record."""
    trace_id, original_id = ids[trace.id]
    version = trace.last_updated_at or trace.end_time or trace.start_time
    return TraceWrite(
        trace_id, trace.project_name or default_project, trace.name, _at(trace.start_time),
        _at(version), _opt_at(trace.end_time), trace.input, trace.output,
        _merged(trace.metadata, MetadataExtra(original_id=original_id)),
        _tags(trace.tags), _error_info(trace.error_info), trace.thread_id,
    )


def score_write(feedback: FeedbackRecord, default_project: str, ids: IdMap) -> ScoreWrite:
    """A ``FeedbackScoreBatchItem``; the target id maps like the span's or trace's."""
    return ScoreWrite(ids[feedback.id][0], feedback.name, feedback.value,
                      feedback.project_name or default_project, "sdk", feedback.reason)


# endpoint -> what its request body has before and after the items
_AROUND: dict[Endpoint, tuple[bytes, bytes]] = {
    endpoint: (b'{"' + key.encode() + b'":[', b"]}") if key else (b"", b"")
    for endpoint, (_, _, key) in ROUTES.items()}


@dataclass(slots=True)
class Group:
    """Items bound for one endpoint; ``indices[i]`` is ``records[i]``'s batch index.

    ``items[i]`` is its encoded item followed by a comma, so that the whole
    group's body (the usual request) is one join, one copy of ~1 MB: a join
    of the items and then the envelope around it copied the megabyte twice,
    7 % of the daemon's samples with Opik alone.
    """

    endpoint: Endpoint
    target: UUID | None = None  # the id an update's PATCH names in its path
    records: list[Record] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    items: list[bytes] = field(default_factory=list)  # each with its comma
    size: int = 0  # of the items, with their commas
    # id(record) -> its position: made only when a sub-batch is asked for
    _positions: dict[int, int] | None = None

    def add(self, record: Record, index: int, item: bytes) -> None:
        """Append ``record``'s encoded item, which ends with a comma."""
        self.records.append(record)
        self.indices.append(index)
        self.items.append(item)
        self.size += len(item)

    @property
    def positions(self) -> dict[int, int]:
        if self._positions is None or len(self._positions) != len(self.records):
            self._positions = {id(r): pos for pos, r in enumerate(self.records)}
        return self._positions

    @property
    def bodies(self) -> dict[int, bytes]:
        """id(record) -> its encoded item."""
        return {key: self.items[pos][:-1] for key, pos in self.positions.items()}

    def body(self, records: Sequence[Record]) -> bytes:
        """The request body for ``records``, all of them from this group."""
        before, after = _AROUND[self.endpoint]
        if len(records) == len(self.records) and all(map(is_, records, self.records)):
            items = self.items
            return b"".join([before, *items[:-1], items[-1][:-1], after])
        return envelope(self.endpoint, bodies_of(self, records))


@dataclass(slots=True)
class Plan:
    """A batch as requests: groups of at most the item and byte limits."""

    groups: list[Group]
    rejects: dict[int, str]  # records that cannot even be encoded

    @property
    def items(self) -> int:
        return sum(len(g.records) for g in self.groups)


def _derives_trace(span: SpanRecord, explicit: set[UUID]) -> bool:
    """A root span stands for its trace unless the batch writes that trace itself."""
    return span.parent_span_id is None and (not explicit or span.trace_id not in explicit)


def _payloads(record: Record, project: str, explicit: set[UUID],
              ids: IdMap) -> list[tuple[Endpoint, Payload]]:
    """A record's items: a span's, and its derived trace's when it has one."""
    if isinstance(record, SpanRecord):
        span, trace = span_write(record, project, ids, _derives_trace(record, explicit))
        return [("spans", span)] if trace is None else [("spans", span), ("traces", trace)]
    if isinstance(record, TraceRecord):
        return [("traces", trace_write(record, project, ids))]
    if not isinstance(record, FeedbackRecord):
        raise TypeError(f"no batch item for {type(record).__name__}")
    endpoint: Endpoint = "trace_scores" if record.target == "trace" else "span_scores"
    return [(endpoint, score_write(record, project, ids))]


def _cannot_encode(exc: Exception) -> str:
    return f"cannot encode for Opik: {type(exc).__name__}: {exc}"[:500]


def plan(batch: Sequence[Record], project: str, max_items: int, max_bytes: int) -> Plan:
    """Encode a batch and cut it into requests of <= max_items and <= max_bytes.

    An item larger than ``max_bytes`` on its own still goes, alone: the
    server's limit is what decides whether it is too large.
    """
    steps = plan_in_slices(batch, project, max_items, max_bytes, len(batch) + 1)
    return next(step for step in steps if step is not None)


def plan_in_slices(batch: Sequence[Record], project: str, max_items: int, max_bytes: int,
                   slice_records: int) -> Iterator[Plan | None]:
    """``plan`` in steps: None after every ``slice_records`` records (a pause,
    so that an event loop can run other work in between), then the plan."""
    max_items = min(max_items, OPIK_MAX_ITEMS)
    open_groups: dict[Endpoint, Group] = {}
    done: list[Group] = []
    rejects: dict[int, str] = {}
    explicit: set[UUID] = set()
    has_updates = False
    for r in batch:
        kind = type(r)
        if kind is TraceRecord:
            explicit.add(r.id)
        elif kind is SpanUpdateRecord or kind is TraceUpdateRecord:
            has_updates = True
    ids = IdMap()
    encode_into = _ENCODER.encode_into
    scratch = bytearray()
    absorbed: set[int] = set()
    if has_updates:  # into their creates in the batch (fold costs ~0.4 us a record)
        batch, absorbed = fold(batch)
    for index, record in enumerate(batch):
        if index % slice_records == 0 and index:
            yield None
        if has_updates and index in absorbed:
            continue
        if has_updates and isinstance(record, SpanUpdateRecord | TraceUpdateRecord):
            from sidecar.sinks.opik_updates import update_group  # imports this module

            update = update_group(record, index, project, ids)
            if isinstance(update, str):
                rejects[index] = update
            else:
                done.append(update)
            continue
        # All or nothing: none of a record's items go if one cannot be built
        # or encoded (whatever raises makes it a reject, never the end of the
        # batch). Each item is encoded into a scratch buffer, then copied: a
        # bytes object from msgspec's encode() grows from 32 bytes, and an
        # item takes twice as long (1.0 against 0.55 us). A span (most
        # records) takes a path of its own, without the item list.
        try:
            encoded: list[tuple[Endpoint, bytes]]
            if type(record) is SpanRecord:
                span, trace = span_write(record, project, ids, _derives_trace(record, explicit))
                encode_into(span, scratch)
                scratch.append(0x2C)  # ","
                encoded = [("spans", bytes(scratch))]
                if trace is not None:
                    encode_into(trace, scratch)
                    scratch.append(0x2C)
                    encoded.append(("traces", bytes(scratch)))
            else:
                encoded = []
                for endpoint, payload in _payloads(record, project, explicit, ids):
                    encode_into(payload, scratch)
                    scratch.append(0x2C)
                    encoded.append((endpoint, bytes(scratch)))
        except Exception as exc:
            rejects[index] = _cannot_encode(exc)
            continue
        for endpoint, item in encoded:
            group = open_groups.get(endpoint)
            # The body with this item: the items, less the last comma, and the envelope.
            if group is not None and (len(group.records) >= max_items or group.size + len(item)
                                      - 1 + _OVERHEAD[endpoint] > max_bytes):
                done.append(group)
                group = None
            if group is None:
                group = open_groups[endpoint] = Group(endpoint)
            group.add(record, index, item)
    done.extend(open_groups.values())
    yield Plan([g for g in done if g.records], rejects)


def envelope(endpoint: Endpoint, bodies: Sequence[bytes]) -> bytes:
    """The request body: ``{"spans": [...]}`` from already encoded items
    (an update's, which has no list, is its one item)."""
    before, after = _AROUND[endpoint]
    return b"".join((before, b",".join(bodies), after))


_OVERHEAD = {endpoint: len(envelope(endpoint, ())) for endpoint in ROUTES}


def bodies_of(group: Group, records: Sequence[Record]) -> list[bytes]:
    """The encoded items of a sub-batch of ``group.records``."""
    items, positions = group.items, group.positions
    return [items[positions[id(r)]][:-1] for r in records]
