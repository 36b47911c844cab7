"""parse_line is total and names what is wrong; the published schema matches the models."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from sidecar.records import (
    FeedbackRecord,
    Rejected,
    SpanRecord,
    TraceRecord,
    parse_line,
)
from sidecar.schema import json_schema
from tests.core.helpers import dumps, feedback, span, trace

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema" / "spool-record.schema.json"
REGENERATE = ".venv/bin/python -m sidecar.schema > schema/spool-record.schema.json"
VALIDATOR = Draft202012Validator(json_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)
PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def reason_of(line: bytes) -> str:
    result = parse_line(line)
    assert isinstance(result, Rejected), f"accepted {line[:200]!r}"
    return result.reason


# -- bad input: each kind of bad input (docs/spool.md) gives a reason naming it ----------

@pytest.mark.parametrize("line", [
    b"\xff\xfe{}",
    b'{"id": "\xc3\x28", "name": "x"}',  # valid JSON shape, invalid UTF-8 inside a string
    dumps(span()).replace(b'"step-0"', b'"step-\xed\xa0\x80"'),  # an encoded surrogate
], ids=["bad-start-bytes", "bad-bytes-in-string", "encoded-surrogate"])
def test_invalid_utf8_is_rejected_as_not_utf8(line: bytes) -> None:
    assert "UTF-8" in reason_of(line)


@pytest.mark.parametrize("line", [b'{"id": ', b"{'id': 1}", b"", b"   ", b"{} {}"])
def test_text_that_is_not_json_is_rejected_as_invalid_json(line: bytes) -> None:
    assert reason_of(line).startswith("invalid JSON")


@pytest.mark.parametrize("line", [b"[]", b"[1, 2]", b'"span"', b"42", b"1.5", b"null", b"true"])
def test_json_that_is_not_an_object_is_rejected_as_such(line: bytes) -> None:
    assert reason_of(line) == "not a JSON object"


def test_an_empty_object_is_rejected_naming_every_required_span_field() -> None:
    reason = reason_of(b"{}")
    for field in ("id", "trace_id", "name", "start_time"):
        assert f"{field}: Field required" in reason


@pytest.mark.parametrize(("record", "field"), [
    ({k: v for k, v in span().items() if k != "trace_id"}, "trace_id"),
    ({k: v for k, v in span().items() if k != "start_time"}, "start_time"),
    ({k: v for k, v in trace().items() if k != "name"}, "name"),
    ({k: v for k, v in feedback().items() if k != "value"}, "value"),
    ({k: v for k, v in feedback().items() if k != "target"}, "target"),
    (span(error_info={"message": "boom"}), "error_info.exception_type"),
    (span(events=[{"attributes": {}}]), "events.0.name"),
])
def test_a_missing_required_field_is_named(record: dict[str, Any], field: str) -> None:
    assert f"{field}: Field required" in reason_of(dumps(record))


@pytest.mark.parametrize(("record", "field"), [
    (span(name=5), "name"),
    (span(name=""), "name"),
    (span(id="not-a-uuid"), "id"),
    (span(parent_span_id=17), "parent_span_id"),
    (span(type="chain"), "type"),
    (span(tags=["ok", 1]), "tags.1"),
    (span(tags="one"), "tags"),
    (span(input="just text"), "input"),
    (span(metadata=[1]), "metadata"),
    (span(agent_tier="1"), "agent_tier"),
    (span(agent_tier=True), "agent_tier"),
    (span(agent_tier=1.5), "agent_tier"),
    (span(usage={"prompt_tokens": 1.5}), "usage.prompt_tokens"),
    (span(usage={"prompt_tokens": "12"}), "usage.prompt_tokens"),
    (span(usage={"trace": "x"}), "usage.trace"),  # a key spelt like a record kind
    (span(total_estimated_cost="0.01"), "total_estimated_cost"),
    (span(total_estimated_cost=True), "total_estimated_cost"),
    (span(total_estimated_cost=-1), "total_estimated_cost"),
    (span(v=2), "v"),
    (span(v=True), "v"),
    (span(v="1"), "v"),
    (span(events=[{"name": "e", "time": "noon"}]), "events.0.time"),
    (trace(thread_id=7), "thread_id"),
    (feedback(value="0.5"), "value"),
    (feedback(value=True), "value"),
    (feedback(target="run"), "target"),
])
def test_a_field_of_the_wrong_type_is_named(record: dict[str, Any], field: str) -> None:
    assert f"{field}: " in reason_of(dumps(record))


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_rejected_in_number_fields(literal: bytes) -> None:
    line = dumps(feedback(value=0.5)).replace(b'"value":0.5', b'"value":' + literal)
    assert "value: " in reason_of(line)


@pytest.mark.parametrize("value", ["2025-03-01T12:00:00", "2025-03-01 12:00:00", "2025-03-01"])
def test_a_timestamp_without_offset_is_rejected(value: str) -> None:
    assert "start_time: " in reason_of(dumps(span(start_time=value)))


@pytest.mark.parametrize("value", [1740830400, 1740830400.5, "1740830400", "1740830400.5", -5])
def test_a_unix_time_is_rejected_as_a_timestamp(value: Any) -> None:
    reason = reason_of(dumps(span(end_time=value)))
    assert "end_time: " in reason and "RFC 3339" in reason


@pytest.mark.parametrize("kind", ["metric", "Span", "", 3, None, ["span"]])
def test_an_unknown_kind_is_rejected(kind: Any) -> None:
    assert reason_of(dumps(span(kind=kind))).startswith("unknown kind")


def test_a_reason_lists_at_most_five_problems_and_counts_the_rest() -> None:
    bad = {"name": 1, "id": 1, "trace_id": 1, "start_time": 1, "tags": 1, "model": 1, "usage": 1}
    reason = reason_of(dumps(bad))
    assert reason.count(": ") == 1 + 5 and reason.endswith("(+2 more)")


# -- valid input -----------------------------------------------------------------------

def test_a_record_without_kind_is_a_span() -> None:
    rec = span()
    parsed = parse_line(dumps(rec))
    assert isinstance(parsed, SpanRecord)
    assert parsed.kind == "span" and str(parsed.id) == rec["id"] and parsed.type == "general"


def test_a_full_span_keeps_every_field() -> None:
    rec = span(kind="span", v=1, parent_span_id=None, type="llm", input={"q": "hi"},
               output={"a": "yo"}, metadata={"k": [1, {"x": None}]}, tags=["a", "b"],
               model="m", provider="p", usage={"prompt_tokens": 3, "completion_tokens": 4,
                                                "total_tokens": 7},
               total_estimated_cost=0, error_info={"exception_type": "ValueError",
                                                   "message": "m", "traceback": "t"},
               project_name="proj", agent_name="agent", agent_tier=2,
               events=[{"name": "retry", "time": "2025-03-01T12:00:00.5+01:00",
                        "attributes": {"n": 1}}],
               last_updated_at="2025-03-01T12:00:02Z", unknown_future_field={"x": 1})
    parsed = parse_line(dumps(rec))
    assert isinstance(parsed, SpanRecord)
    assert parsed.usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    # free-form fields stay the line's own JSON text, passed through to the sinks
    assert parsed.metadata is not None and parsed.agent_tier == 2
    assert json.loads(bytes(parsed.metadata)) == {"k": [1, {"x": None}]}
    assert parsed.input is not None and bytes(parsed.input) == b'{"q":"hi"}'
    assert parsed.status == "error" and parsed.duration_ms == 1000.0
    assert parsed.events is not None and parsed.events[0].time is not None
    assert parsed.events[0].time.utcoffset() == timedelta(hours=1)
    assert not hasattr(parsed, "unknown_future_field")


def test_a_span_without_error_info_is_ok_and_without_end_has_no_duration() -> None:
    parsed = parse_line(dumps(span(end_time=None)))
    assert isinstance(parsed, SpanRecord)
    assert parsed.status == "ok" and parsed.duration_ms is None


@pytest.mark.parametrize("stamp", ["2025-03-01T12:00:00Z", "2025-03-01t12:00:00z",
                                   "2025-03-01T12:00:00.123456+05:30",
                                   "2025-03-01 12:00:00-08:00"])
def test_rfc3339_timestamps_with_an_offset_are_accepted(stamp: str) -> None:
    assert isinstance(parse_line(dumps(span(start_time=stamp))), SpanRecord)


def test_trace_and_feedback_records_parse_to_their_models() -> None:
    t = parse_line(dumps(trace(thread_id="th-1", error_info={"exception_type": "E"})))
    f = parse_line(dumps(feedback(value=1, reason="good", target="trace")))
    assert isinstance(t, TraceRecord) and t.thread_id == "th-1"
    assert isinstance(f, FeedbackRecord) and f.value == 1.0 and f.target == "trace"


def test_surrounding_whitespace_and_a_carriage_return_are_tolerated() -> None:
    assert isinstance(parse_line(b"  " + dumps(span()) + b"\r"), SpanRecord)


# -- totality (hypothesis) ---------------------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["kind", "v", "id", "trace_id", "parent_span_id", "name", "type", "start_time",
          "end_time", "input", "output", "metadata", "tags", "usage", "total_estimated_cost",
          "error_info", "agent_tier", "events", "target", "value", "last_updated_at"]
# Objects with the records' own keys, so that the validators (not only the JSON
# parser) see arbitrary values.
RECORDISH = st.dictionaries(
    st.sampled_from(FIELDS),
    JSONISH | st.sampled_from(["span", "trace", "feedback", "2025-03-01T12:00:00Z",
                               "5f0c6a4e-54d1-4b1e-9a53-6b2f1a0c2d11"]),
    max_size=len(FIELDS),
)


@PROPERTY
@given(st.binary(max_size=512))
def test_parse_line_never_raises_on_arbitrary_bytes(line: bytes) -> None:
    result = parse_line(line)
    assert isinstance(result, SpanRecord | TraceRecord | FeedbackRecord | Rejected)
    if isinstance(result, Rejected):
        assert result.reason


@PROPERTY
@given(JSONISH | RECORDISH)
def test_parse_line_never_raises_on_arbitrary_json(value: Any) -> None:
    result = parse_line(json.dumps(value).encode())
    assert isinstance(result, SpanRecord | TraceRecord | FeedbackRecord | Rejected)


# -- valid records from strategies: parse, and match the JSON schema ---------------------

UUIDS = st.uuids().map(str)
OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
# Storable times only: records refuse years outside 1900-9999 (in UTC too).
STAMPS = st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(),
                   st.datetimes(min_value=datetime(1901, 1, 1),
                                max_value=datetime(9998, 12, 31)), OFFSETS)
TEXT = st.text(max_size=20)
OBJECTS = st.dictionaries(TEXT, JSONISH, max_size=3)
NUMBERS = st.floats(min_value=0, allow_nan=False, allow_infinity=False) | st.integers(0, 10**6)


def optional(**fields: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy[Any]]:
    return fields


SPANS = st.fixed_dictionaries(
    {"id": UUIDS, "trace_id": UUIDS, "name": TEXT.filter(bool), "start_time": STAMPS},
    optional=optional(
        kind=st.just("span"), v=st.just(1), parent_span_id=st.none() | UUIDS,
        type=st.sampled_from(["general", "llm", "tool", "guardrail"]), end_time=STAMPS,
        input=OBJECTS, output=OBJECTS, metadata=OBJECTS, tags=st.lists(TEXT, max_size=3),
        model=TEXT, provider=TEXT,
        usage=st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens",
                                               "total_tokens"]), st.integers(0, 10**9)),
        total_estimated_cost=NUMBERS,
        error_info=st.fixed_dictionaries({"exception_type": TEXT.filter(bool)},
                                         optional=optional(message=TEXT, traceback=TEXT)),
        project_name=TEXT, agent_name=TEXT, agent_tier=st.integers(0, 9),
        events=st.lists(st.fixed_dictionaries({"name": TEXT}, optional=optional(
            time=STAMPS, attributes=OBJECTS)), max_size=2),
        last_updated_at=STAMPS,
    ),
)
TRACES = st.fixed_dictionaries(
    {"kind": st.just("trace"), "id": UUIDS, "name": TEXT.filter(bool), "start_time": STAMPS},
    optional=optional(end_time=STAMPS, input=OBJECTS, metadata=OBJECTS, thread_id=TEXT,
                      tags=st.lists(TEXT, max_size=3), project_name=TEXT),
)
FEEDBACK = st.fixed_dictionaries(
    {"kind": st.just("feedback"), "target": st.sampled_from(["trace", "span"]), "id": UUIDS,
     "name": TEXT.filter(bool), "value": NUMBERS | st.floats(-1e9, 0)},
    optional=optional(reason=TEXT, project_name=TEXT),
)
MODEL_OF = {"trace": TraceRecord, "feedback": FeedbackRecord}


@PROPERTY
@given(SPANS | TRACES | FEEDBACK)
def test_every_valid_record_parses_and_validates_against_the_schema(rec: dict[str, Any]) -> None:
    parsed = parse_line(json.dumps(rec).encode())
    assert isinstance(parsed, MODEL_OF.get(rec.get("kind", "span"), SpanRecord)), parsed
    errors = [e.message for e in VALIDATOR.iter_errors(rec)]
    assert not errors, errors


# Values that lax parsing would coerce: numeric strings, booleans, floats for ints.
TRICKY = st.sampled_from(["0.5", "1", "", "1740830400", True, False, 1, 1.0, 2.5, -1, None, [],
                          {}, "span", "2025-03-01T12:00:00"])


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record with one field replaced by an arbitrary or tricky value."""
    rec = dict(draw(SPANS | TRACES | FEEDBACK))
    field = draw(st.sampled_from(sorted(rec)) | st.sampled_from(FIELDS))
    rec[field] = draw(st.one_of(TRICKY, TRICKY, TRICKY, JSONISH))
    return rec


@PROPERTY
@given(near_valid() | RECORDISH)
def test_what_parse_line_accepts_the_published_schema_accepts(value: dict[str, Any]) -> None:
    """The schema never refuses a line the sidecar would ship (no lax coercions)."""
    result = parse_line(json.dumps(value).encode())
    if not isinstance(result, Rejected):
        errors = [e.message for e in Draft202012Validator(json_schema()).iter_errors(value)]
        assert not errors, errors


@pytest.mark.parametrize("rec", [
    {},
    {k: v for k, v in span().items() if k != "id"},
    span(kind="metric"),
    span(name=5),
    span(agent_tier="1"),
    span(id="not-a-uuid"),
    trace(kind="trace", name=None),
    feedback(value="0.5"),
    feedback(target="run"),
], ids=["empty", "no-id", "bad-kind", "name-int", "tier-str", "bad-uuid", "trace-name-null",
        "value-str", "bad-target"])
def test_the_schema_refuses_invalid_records_as_the_parser_does(rec: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid(rec)
    assert isinstance(parse_line(dumps(rec)), Rejected)


# -- the published schema ---------------------------------------------------------------

def test_the_published_schema_file_matches_the_models() -> None:
    published = json.loads(SCHEMA_FILE.read_text()) if SCHEMA_FILE.exists() else None
    assert published == json_schema(), (
        f"{SCHEMA_FILE} is out of date with sidecar/schema.py; regenerate it with: {REGENERATE}")


def test_the_published_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+14:00", "1899-12-31T23:59:59Z",
                                   "9999-12-31T23:00:00-05:00"])
def test_times_no_sink_can_store_are_rejected(stamp: str) -> None:
    """Years outside 1900-9999 (also after conversion to UTC) never reach a sink."""
    result = parse_line(json.dumps({"id": str(uuid.uuid4()), "trace_id": str(uuid.uuid4()),
                                    "name": "n", "start_time": stamp}).encode())
    assert isinstance(result, Rejected) and "1900 and 9999" in result.reason


@pytest.mark.parametrize("field", [{"agent_tier": 2**31}, {"usage": {"total_tokens": 2**40}},
                                   {"agent_name": "a" * 513}])
def test_values_beyond_the_sinks_columns_are_rejected(field: dict[str, Any]) -> None:
    rec = {"id": str(uuid.uuid4()), "trace_id": str(uuid.uuid4()), "name": "n",
           "start_time": "2025-01-01T00:00:00Z", **field}
    result = parse_line(json.dumps(rec).encode())
    assert isinstance(result, Rejected) and next(iter(field)) in result.reason
