"""Spool records as the sinks use them, and the total line parser.

The hot path decodes each line once, typed, with msgspec: the free-form
fields (``input``, ``output``, ``metadata``, an event's ``attributes``) stay
raw JSON text (``msgspec.Raw``) that the sinks pass through untouched (the
jsonb binary format is a version byte and the JSON text; Opik gets it as an
``orjson.Fragment``), so they are never decoded and encoded again. Only what
a sink needs is checked: ids, times, types, int32 ranges, objects where
objects are required.

The pydantic models in ``sidecar/schema.py`` stay the one description of a
valid record: the published JSON Schema is generated from them, and a line
the fast decoder refuses is explained by them (the quarantine's reason names
the fields). A differential test keeps the two in agreement.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta, Raw, Struct

SpanType = Literal["general", "llm", "tool", "guardrail"]
Int32 = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
NonEmpty = Annotated[str, Meta(min_length=1)]
ShortText = Annotated[str, Meta(max_length=512)]
Cost = Annotated[float, Meta(ge=0)]
_NULL = b"null"
if TYPE_CHECKING:
    OptRaw = Raw | None
else:  # msgspec takes no union with Raw: a JSON null arrives as Raw(b"null")
    OptRaw = Raw
_EMPTY = Raw(b"{}")


class _Invalid(ValueError):
    """A check msgspec's types cannot say (raised in ``__post_init__``)."""


def _time(value: datetime | None, field: str) -> None:
    """Aware, and storable by every sink once converted to UTC."""
    if value is None:
        return
    if value.tzinfo is None:
        raise _Invalid(f"{field}: a timestamp needs an offset")
    if 1901 <= value.year <= 9998:  # an offset of under a day cannot leave 1900-9999
        return
    offset = value.utcoffset() or timedelta(0)
    try:
        utc_year = (value - offset).year
    except OverflowError:
        utc_year = 0
    if not (1900 <= value.year <= 9999 and 1900 <= utc_year <= 9999):
        raise _Invalid(f"{field}: must be between the years 1900 and 9999")


def _object(value: Raw | None, field: str) -> Raw | None:
    """A JSON object, or None for an absent or null value."""
    if value is None:
        return None
    if memoryview(value)[0] == 0x7B:  # "{"
        return value
    if bytes(value) == _NULL:
        return None
    raise _Invalid(f"{field}: must be a JSON object")


def _check(record: SpanRecord | TraceRecord) -> None:
    """What a span's and a trace's types cannot say: aware, storable times;
    objects (or nothing) where objects are required.

    The common case (aware times in 1901-9998, objects or nothing) is decided
    inline; ``_time`` and ``_object`` see only the rest (a tenth of the
    parse, on every line).
    """
    start, end, updated = record.start_time, record.end_time, record.last_updated_at
    if start.tzinfo is None or not 1901 <= start.year <= 9998:
        _time(start, "start_time")
    if end is not None and (end.tzinfo is None or not 1901 <= end.year <= 9998):
        _time(end, "end_time")
    if updated is not None and (updated.tzinfo is None or not 1901 <= updated.year <= 9998):
        _time(updated, "last_updated_at")
    if record.input is not None and memoryview(record.input)[0] != 0x7B:  # "{"
        record.input = _object(record.input, "input")
    if record.output is not None and memoryview(record.output)[0] != 0x7B:
        record.output = _object(record.output, "output")
    if record.metadata is not None and memoryview(record.metadata)[0] != 0x7B:
        record.metadata = _object(record.metadata, "metadata")


class ErrorInfo(Struct, kw_only=True, gc=False):
    exception_type: NonEmpty
    message: str | None = None
    traceback: str | None = None


class Event(Struct, kw_only=True, gc=False):
    """A span's event. Checked by its span (``_check_events``): one Python
    call a span rather than one an event, on every line."""

    name: str
    time: datetime | None = None
    attributes: Raw = _EMPTY


def _check_events(events: list[Event]) -> None:
    """Aware, storable times; attributes an object (a null ones: ``{}``)."""
    for event in events:
        at = event.time
        if at is not None and (at.tzinfo is None or not 1901 <= at.year <= 9998):
            _time(at, "events.time")
        if memoryview(event.attributes)[0] != 0x7B:  # "{"
            event.attributes = _object(event.attributes, "events.attributes") or _EMPTY


class SpanRecord(Struct, kw_only=True, gc=False):
    kind: Literal["span"] = "span"
    v: Literal[1] = 1
    id: UUID
    trace_id: UUID
    parent_span_id: UUID | None = None
    name: NonEmpty
    type: SpanType = "general"
    start_time: datetime
    end_time: datetime | None = None
    input: OptRaw = None
    output: OptRaw = None
    metadata: OptRaw = None
    tags: list[str] | None = None
    model: str | None = None
    provider: str | None = None
    usage: dict[str, Int32] | None = None
    total_estimated_cost: Cost | None = None
    error_info: ErrorInfo | None = None
    project_name: str | None = None
    agent_name: ShortText | None = None
    agent_tier: Int32 | None = None
    events: list[Event] | None = None
    last_updated_at: datetime | None = None

    def __post_init__(self) -> None:
        _check(self)
        if self.events:
            _check_events(self.events)

    @property
    def status(self) -> Literal["ok", "error"]:
        return "error" if self.error_info is not None else "ok"

    @property
    def duration_ms(self) -> float | None:
        if self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds() * 1000.0


class TraceRecord(Struct, kw_only=True, gc=False):
    kind: Literal["trace"]
    v: Literal[1] = 1
    id: UUID
    name: NonEmpty
    start_time: datetime
    end_time: datetime | None = None
    input: OptRaw = None
    output: OptRaw = None
    metadata: OptRaw = None
    tags: list[str] | None = None
    error_info: ErrorInfo | None = None
    thread_id: str | None = None
    project_name: str | None = None
    last_updated_at: datetime | None = None

    def __post_init__(self) -> None:
        _check(self)


class FeedbackRecord(Struct, kw_only=True, gc=False):
    kind: Literal["feedback"]
    v: Literal[1] = 1
    target: Literal["trace", "span"]
    id: UUID
    name: NonEmpty
    value: float
    reason: str | None = None
    project_name: str | None = None


def _check_update(record: SpanUpdateRecord | TraceUpdateRecord) -> None:
    _time(record.end_time, "end_time")
    _time(record.last_updated_at, "last_updated_at")
    record.input = _object(record.input, "input")
    record.output = _object(record.output, "output")
    record.metadata = _object(record.metadata, "metadata")


class SpanUpdateRecord(Struct, kw_only=True, gc=False):
    """Fields of a span written earlier (or later: the spool keeps no order
    between writers), as Opik's span PATCH sets them; absent fields are kept."""

    kind: Literal["span_update"]
    v: Literal[1] = 1
    id: UUID
    trace_id: UUID | None = None
    parent_span_id: UUID | None = None
    name: NonEmpty | None = None
    type: SpanType | None = None
    end_time: datetime | None = None
    input: OptRaw = None
    output: OptRaw = None
    metadata: OptRaw = None
    tags: list[str] | None = None
    model: str | None = None
    provider: str | None = None
    usage: dict[str, Int32] | None = None
    total_estimated_cost: Cost | None = None
    error_info: ErrorInfo | None = None
    project_name: str | None = None
    last_updated_at: datetime | None = None

    def __post_init__(self) -> None:
        _check_update(self)


class TraceUpdateRecord(Struct, kw_only=True, gc=False):
    """Fields of a trace written earlier, as Opik's trace PATCH sets them."""

    kind: Literal["trace_update"]
    v: Literal[1] = 1
    id: UUID
    name: NonEmpty | None = None
    end_time: datetime | None = None
    input: OptRaw = None
    output: OptRaw = None
    metadata: OptRaw = None
    tags: list[str] | None = None
    error_info: ErrorInfo | None = None
    thread_id: str | None = None
    project_name: str | None = None
    last_updated_at: datetime | None = None

    def __post_init__(self) -> None:
        _check_update(self)


Record = SpanRecord | TraceRecord | FeedbackRecord | SpanUpdateRecord | TraceUpdateRecord
UpdateRecord = SpanUpdateRecord | TraceUpdateRecord


class _Kind(Struct):
    kind: object = "span"


_SPAN = msgspec.json.Decoder(SpanRecord)
_KIND = msgspec.json.Decoder(_Kind)
_BY_KIND: dict[object, msgspec.json.Decoder[SpanRecord] | msgspec.json.Decoder[TraceRecord]
               | msgspec.json.Decoder[FeedbackRecord] | msgspec.json.Decoder[SpanUpdateRecord]
               | msgspec.json.Decoder[TraceUpdateRecord]] = {
    "span": _SPAN,
    "trace": msgspec.json.Decoder(TraceRecord),
    "feedback": msgspec.json.Decoder(FeedbackRecord),
    "span_update": msgspec.json.Decoder(SpanUpdateRecord),
    "trace_update": msgspec.json.Decoder(TraceUpdateRecord),
}
_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that will never ship, and why (the quarantine's reason field)."""

    reason: str


def parse_line(line: bytes) -> Record | Rejected:
    """Parse one complete spool line (without its newline); never raises.

    Every failure (bad UTF-8, bad JSON, not an object, missing or mistyped
    fields) comes back as ``Rejected`` with a short reason naming the fields.
    """
    try:
        return _decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
        return _slow(line, exc)
    except Exception as exc:  # a parser bug must not stop the spool
        return Rejected(f"unparseable: {type(exc).__name__}")


def _decode(line: bytes) -> Record:
    if not line.isascii():
        line.decode("utf-8")  # raw fields are not decoded: check the text here
    try:  # most lines are spans; a span's kind, when it has one, is checked as "span"
        return _SPAN.decode(line)
    except msgspec.ValidationError:
        if b'"kind"' not in line:
            raise
    decoder = _BY_KIND.get(_KIND.decode(line).kind)
    if decoder is None or decoder is _SPAN:
        raise ValueError("unknown kind, or an invalid span")
    return decoder.decode(line)


def _slow(line: bytes, exc: Exception) -> Record | Rejected:
    """The error path: the schema models name what is wrong, or accept the line
    (then it is decoded again as the strict JSON they make of it)."""
    from sidecar.schema import explain

    try:
        verdict = explain(line)
        if isinstance(verdict, str):
            return Rejected(verdict)
        return _decode(verdict)
    except Exception:
        return Rejected(f"invalid record: {exc}")


def encode_json(value: object) -> bytes:
    """JSON text of a record's part (a struct, a list of them), raw fields as they came."""
    return _ENCODER.encode(value)


def utc_iso(ts: datetime) -> str:
    """RFC 3339 in UTC with a Z, the form Opik and Postgres both accept."""
    return ts.isoformat().replace("+00:00", "Z")


if __name__ == "__main__":
    from sidecar.schema import main

    sys.exit(main())
