"""The spool record models: the one description of a valid record.

Field names follow Opik's write models so that Opik users recognise them; the
agent fields (``agent_name``, ``agent_tier``, ``events``) are ours. The JSON
Schema in ``schema/spool-record.schema.json`` is generated from these models
(``python -m sidecar.schema``) and a test fails when the two drift. The hot
path decodes with the faster structs of ``sidecar/records.py``; these models
explain why a line was refused (``explain``).
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    TypeAdapter,
    ValidationError,
)

SpanType = Literal["general", "llm", "tool", "guardrail"]


def _rfc3339_shape(value: Any) -> Any:
    # pydantic would also take unix times, as numbers or digit strings
    # ("1700000000"). Cheap on the hot path: the rest is pydantic's own check.
    if not isinstance(value, str) or value[4:5] != "-":
        raise ValueError("must be an RFC 3339 timestamp string, like 2025-01-31T12:00:00Z")
    return value


def _not_bool(value: Any) -> Any:
    # Literal[1] would take JSON true (True == 1); the schema says const 1.
    if isinstance(value, bool):
        raise ValueError("must be the integer 1")
    return value


# Timestamps must be RFC 3339 strings with an offset: the shape check refuses
# the unix times pydantic would otherwise accept, AwareDatetime the naive ones.
def _storable(value: datetime) -> datetime:
    # Every sink must be able to store it: year 1 with +14:00 is "valid" but
    # overflows as soon as anything converts it to UTC.
    offset = value.utcoffset() or timedelta(0)
    try:
        utc_year = (value - offset).year
    except OverflowError:
        utc_year = 0
    if not (1900 <= value.year <= 9999 and 1900 <= utc_year <= 9999):
        raise ValueError("must be between the years 1900 and 9999")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_shape), AfterValidator(_storable)]
# Opik stores usage and our tiers as int32; Postgres indexes agent_name.
Int32 = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]
ShortText = Annotated[str, Field(max_length=512)]
# A JSON number: strict refuses strings and booleans; NaN/Infinity are refused
# by the models' allow_inf_nan=False (they are not JSON).
Number = Annotated[float, Field(strict=True)]
Version = Annotated[Literal[1], BeforeValidator(_not_bool)]
JsonObject = dict[str, Any]


class _Model(BaseModel):
    # Unknown fields are dropped, as Opik drops them: a newer writer never
    # gets its records quarantined by an older sidecar.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class ErrorInfo(_Model):
    exception_type: str = Field(min_length=1)
    message: str | None = None
    traceback: str | None = None


class Event(_Model):
    name: str
    time: Timestamp | None = None
    attributes: JsonObject = Field(default_factory=dict)


class SpanRecord(_Model):
    kind: Literal["span"] = "span"
    v: Version = 1
    id: UUID
    trace_id: UUID
    parent_span_id: UUID | None = None
    name: str = Field(min_length=1)
    type: SpanType = "general"
    start_time: Timestamp
    end_time: Timestamp | None = None
    input: JsonObject | None = None
    output: JsonObject | None = None
    metadata: JsonObject | None = None
    tags: list[str] | None = None
    model: str | None = None
    provider: str | None = None
    usage: dict[str, Int32] | None = None
    total_estimated_cost: Number | None = Field(default=None, ge=0)
    error_info: ErrorInfo | None = None
    project_name: str | None = None
    agent_name: ShortText | None = None
    agent_tier: Int32 | None = None
    events: list[Event] | None = None
    last_updated_at: Timestamp | None = None

    @property
    def status(self) -> Literal["ok", "error"]:
        return "error" if self.error_info is not None else "ok"

    @property
    def duration_ms(self) -> float | None:
        if self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds() * 1000.0


class TraceRecord(_Model):
    kind: Literal["trace"]
    v: Version = 1
    id: UUID
    name: str = Field(min_length=1)
    start_time: Timestamp
    end_time: Timestamp | None = None
    input: JsonObject | None = None
    output: JsonObject | None = None
    metadata: JsonObject | None = None
    tags: list[str] | None = None
    error_info: ErrorInfo | None = None
    thread_id: str | None = None
    project_name: str | None = None
    last_updated_at: Timestamp | None = None


class FeedbackRecord(_Model):
    kind: Literal["feedback"]
    v: Version = 1
    target: Literal["trace", "span"]
    id: UUID
    name: str = Field(min_length=1)
    value: Number
    reason: str | None = None
    project_name: str | None = None


class SpanUpdateRecord(_Model):
    """Fields of a span written before (or after: writers are not ordered), as
    Opik's span PATCH sets them; the fields left out keep their values."""

    kind: Literal["span_update"]
    v: Version = 1
    id: UUID
    trace_id: UUID | None = None
    parent_span_id: UUID | None = None
    name: str | None = Field(default=None, min_length=1)
    type: SpanType | None = None
    end_time: Timestamp | None = None
    input: JsonObject | None = None
    output: JsonObject | None = None
    metadata: JsonObject | None = None
    tags: list[str] | None = None
    model: str | None = None
    provider: str | None = None
    usage: dict[str, Int32] | None = None
    total_estimated_cost: Number | None = Field(default=None, ge=0)
    error_info: ErrorInfo | None = None
    project_name: str | None = None
    last_updated_at: Timestamp | None = None


class TraceUpdateRecord(_Model):
    """Fields of a trace written before, as Opik's trace PATCH sets them."""

    kind: Literal["trace_update"]
    v: Version = 1
    id: UUID
    name: str | None = Field(default=None, min_length=1)
    end_time: Timestamp | None = None
    input: JsonObject | None = None
    output: JsonObject | None = None
    metadata: JsonObject | None = None
    tags: list[str] | None = None
    error_info: ErrorInfo | None = None
    thread_id: str | None = None
    project_name: str | None = None
    last_updated_at: Timestamp | None = None


Record = SpanRecord | TraceRecord | FeedbackRecord | SpanUpdateRecord | TraceUpdateRecord


def _kind_of(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind", "span")
        return kind if isinstance(kind, str) else None
    return "span"  # lets the span model report "not a JSON object"


AnyRecord = Annotated[
    Annotated[SpanRecord, Tag("span")]
    | Annotated[TraceRecord, Tag("trace")]
    | Annotated[FeedbackRecord, Tag("feedback")]
    | Annotated[SpanUpdateRecord, Tag("span_update")]
    | Annotated[TraceUpdateRecord, Tag("trace_update")],
    Discriminator(_kind_of, custom_error_type="unknown_kind",
                  custom_error_message="kind must be 'span', 'trace', 'feedback', "
                                       "'span_update' or 'trace_update'"),
]
RECORD_ADAPTER: TypeAdapter[Record] = TypeAdapter(AnyRecord)


def validate(line: bytes) -> Record:
    """The line as a model; raises pydantic's ``ValidationError``."""
    return RECORD_ADAPTER.validate_json(line)


def explain(line: bytes) -> str | bytes:
    """Why the models refuse a line, naming the fields; or, when they accept
    it, the record as strict JSON (what the fast decoder may have refused:
    ``NaN`` or ``Infinity`` in a free-form field, which become null)."""
    try:
        model = validate(line)
    except ValidationError as exc:
        return _not_utf8(line) or _describe(exc)
    except Exception as exc:  # a bug in the models must not stop the spool
        return f"unparseable: {type(exc).__name__}"
    plain = _finite(model.model_dump(mode="json", exclude_unset=True))
    return json.dumps(plain, ensure_ascii=False).encode()  # json: ints of any size


def _finite(value: Any) -> Any:
    """NaN and the infinities as null, as every JSON store keeps them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _not_utf8(line: bytes) -> str | None:
    # Checked only once parsing failed: the JSON parser's own message for bad
    # UTF-8 ("invalid unicode code point") does not say so.
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte {exc.start})"
    return None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        tagged = err["loc"][:1] in (("span",), ("trace",), ("feedback",), ("span_update",),
                                    ("trace_update",))  # the union's tag
        path = err["loc"][1:] if tagged else err["loc"]
        loc = ".".join(str(p) for p in path)
        if err["type"] in ("json_invalid", "json_type"):
            return "invalid JSON: " + err["msg"].removeprefix("Invalid JSON: ")
        if err["type"] in ("model_type", "model_attributes_type", "dict_type") and not loc:
            return "not a JSON object"
        if err["type"] == "unknown_kind":
            return "unknown kind (expected span, trace, feedback, span_update or trace_update)"
        parts.append(f"{loc or '<record>'}: {err['msg']}")
    more = exc.error_count() - len(parts)
    suffix = f" (+{more} more)" if more > 0 else ""
    return "invalid record: " + "; ".join(parts) + suffix


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spool line, as published in ``schema/``."""
    schema = RECORD_ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "span-sidecar spool record"
    schema["description"] = (
        "One line of a span-sidecar spool file (JSON Lines). 'kind' defaults to 'span'."
    )
    return schema


def main() -> int:
    """Print the published JSON Schema."""
    json.dump(json_schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
