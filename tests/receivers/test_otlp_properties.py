"""parse_otlp is total: any bytes, any JSON, any protobuf request shape gives
an answer, never an exception; every record it makes is one the spool takes;
the same span always maps to the same record (a re-sent export is a no-op)."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.client.ids import span_uuid, w3c_span_id
from sidecar.client.propagation import resolve_parent, split_tracestate
from sidecar.client.serialize import dumps_line
from sidecar.receivers import otlp_map
from sidecar.receivers.otlp import parse_otlp
from sidecar.receivers.otlp_decode import OtelSpan
from sidecar.receivers.otlp_map import to_record
from sidecar.records import SpanRecord, parse_line

from .test_otlp_support import attributes, request, to_protobuf

TYPES = st.sampled_from(["application/json", "application/x-protobuf", "text/plain"])
ENCODINGS = st.sampled_from([None, "gzip", "identity", "deflate"])
KEYS = st.sampled_from([
    "gen_ai.operation.name", "gen_ai.system", "gen_ai.request.model", "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens", "gen_ai.prompt.0.content", "gen_ai.prompt.1.role",
    "gen_ai.prompt.0", "gen_ai.prompt.x.y", "gen_ai.completion.0.content",
    "gen_ai.input.messages", "llm.input_messages.0.message.role", "llm.input_messages.0",
    "llm.output_messages.10.message.content", "llm.token_count.total", "input.value",
    "output.value", "openinference.span.kind", "gen_ai.agent.name", "service.name",
    "exception.type", "otel", "gen_ai.usage.cost", "input.mime_type"]) | st.text(max_size=12)
SCALARS = (st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1) | st.booleans()
           | st.floats(allow_nan=True) | st.sampled_from(["[1, 2", '{"a": [1]}', "LLM", "TOOL"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
HEX8 = st.binary(min_size=0, max_size=9).map(bytes.hex)
HEX16 = st.binary(min_size=15, max_size=16).map(bytes.hex)
NANOS = st.integers(0, 2**64 - 1).map(str)


@st.composite
def spans(draw: st.DrawFn) -> dict[str, Any]:
    events = draw(st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["exception", "gen_ai.user.message", "gen_ai.choice",
                                 "gen_ai.client.inference.operation.details", "x", ""]),
        "timeUnixNano": NANOS,
        "attributes": st.dictionaries(KEYS, VALUES, max_size=3).map(attributes)}), max_size=3))
    return {"traceId": draw(HEX16), "spanId": draw(HEX8), "parentSpanId": draw(HEX8),
            "name": draw(st.text(max_size=10)), "kind": draw(st.integers(0, 7)),
            "startTimeUnixNano": draw(NANOS), "endTimeUnixNano": draw(NANOS),
            "traceState": draw(st.sampled_from(["", "spansidecar=zz", "a=b"])),
            "attributes": attributes(draw(st.dictionaries(KEYS, VALUES, max_size=8))),
            "events": events, "status": {"code": draw(st.integers(0, 3)),
                                          "message": draw(st.text(max_size=5))}}


def check(body: bytes, content_type: str, encoding: str | None,
          ok: bool = False) -> list[dict[str, Any]]:
    result = parse_otlp(body, content_type, encoding)
    assert result.status in ((200,) if ok else (200, 400, 413, 415)), result.reason
    assert (result.status == 200) == (result.reason is None or result.spans_rejected > 0)
    for record in result.records:
        parsed = parse_line(dumps_line(record)[:-1])
        assert isinstance(parsed, SpanRecord), parsed
    return result.records


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), TYPES, ENCODINGS)
def test_arbitrary_bytes_never_raise(body: bytes, content_type: str, encoding: str | None) -> None:
    check(body, content_type, encoding)


INT64 = st.integers(-(2**63), 2**63 - 1)
JSON = st.recursive(st.none() | st.booleans() | INT64 | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["resourceSpans", "scopeSpans", "spans", "attributes",
                                         "key", "value", "traceId", "spanId", "stringValue",
                                         "kvlistValue", "arrayValue", "values", "intValue",
                                         "events", "status", "code", "kind", "resource"]),
                        inner, max_size=4), max_leaves=20)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_arbitrary_json_shapes_never_raise(doc: Any) -> None:
    check(orjson.dumps(doc), "application/json", None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spans(), min_size=1, max_size=4))
def test_arbitrary_requests_map_the_same_in_both_encodings_every_time(
        items: list[dict[str, Any]]) -> None:
    """Any span shape: records the spool takes, identical from JSON and
    protobuf, and identical again when the same request is sent twice."""
    doc = request(*items)
    as_json = check(orjson.dumps(doc), "application/json", None, ok=True)
    as_protobuf = check(to_protobuf(doc), "application/x-protobuf", None, ok=True)
    again = check(to_protobuf(doc), "application/x-protobuf", None, ok=True)
    assert orjson.dumps(as_json, option=orjson.OPT_SERIALIZE_NUMPY) == orjson.dumps(as_protobuf)
    assert as_protobuf == again or orjson.dumps(as_protobuf) == orjson.dumps(again)
    valid = [s for s in items if len(s["traceId"]) == 32 and int(s["traceId"], 16)
             and len(s["spanId"]) == 16 and int(s["spanId"], 16)]
    assert len(as_json) == len(valid)


V7 = st.integers(1, 2**128 - 1).map(lambda t: t & ~(0xF << 76 | 0x3 << 62) | 7 << 76 | 2 << 62)
SEVEN_ANY_VARIANT = st.integers(1, 2**128 - 1).map(lambda t: t & ~(0xF << 76) | 7 << 76)
TRACE_INTS = V7 | SEVEN_ANY_VARIANT | st.integers(1, 2**128 - 1)


@settings(max_examples=500)
@given(TRACE_INTS, st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1),
       st.none() | st.integers(0, 2**128 - 1))
def test_ids_are_the_clients_span_uuid_and_parent_on_any_ids(
        trace: int, own: int, parent: int, carried: int | None) -> None:
    """The mapper works on integers; it must give exactly the client's UUIDs
    (span_uuid, resolve_parent with our tracestate entry), v7 or not."""
    state = ""
    if carried is not None:  # a carried parent that stands for this parent id
        parent = w3c_span_id(UUID(int=carried))
        state = f"a=b,spansidecar={UUID(int=carried).hex}"
    span = OtelSpan(trace.to_bytes(16, "big"), own.to_bytes(8, "big"),
                    parent.to_bytes(8, "big"), "s", 1, 1, 2, {}, {}, {}, state)
    record = to_record(span)
    expected = UUID(int=trace)
    assert record["trace_id"] == str(expected)
    assert record["id"] == str(span_uuid(expected, own))
    assert record["parent_span_id"] == (
        str(resolve_parent(expected, parent, split_tracestate(state)[0])) if parent else None)


@settings(max_examples=300)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=6))
def test_times_are_the_same_text_with_the_seconds_cache_full_or_not(
        times: list[int]) -> None:
    """rfc3339 caches each second's text (bounded): the text is the plain
    formula's, whether cached, new, or after the cache was cleared."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(otlp_map, "_MAX_SECONDS", 2)
        mp.setattr(otlp_map, "_SECONDS", {})
        for ns in times * 2:
            seconds, rest = divmod(ns, 10**9)
            plain = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            assert otlp_map.rfc3339(ns) == f"{plain}.{rest // 1000:06d}Z"
            assert len(otlp_map._SECONDS) <= 2
