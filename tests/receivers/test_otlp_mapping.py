"""OTLP requests mapped to spool records: GenAI and OpenInference goldens in
both encodings, ids as the client maps them, errors and answers."""

from __future__ import annotations

import gzip
from typing import Any
from uuid import UUID

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from sidecar.client.ids import span_uuid, w3c_span_id
from sidecar.client.serialize import dumps_line
from sidecar.receivers.otlp import parse_otlp, success_body
from sidecar.records import SpanRecord, parse_line

from .test_otlp_support import CHILD, ROOT, TRACE, both, request, span

TRACE_UUID = str(UUID(TRACE))
ROOT_UUID = str(span_uuid(UUID(TRACE), int(ROOT, 16)))
CHILD_UUID = str(span_uuid(UUID(TRACE), int(CHILD, 16)))
START, END = "2023-11-14T22:13:20.123456Z", "2023-11-14T22:13:21.623456Z"
ENCODINGS = ["json", "protobuf"]


def mapped(doc: dict[str, Any], encoding: str) -> list[dict[str, Any]]:
    body, content_type = both(doc)[encoding]
    result = parse_otlp(body, content_type, None)
    assert result.status == 200, result.reason
    for record in result.records:  # every record is one the spool takes
        assert isinstance(parse_line(dumps_line(record)[:-1]), SpanRecord)
    return result.records


def otel(span_id: str, parent: str = "", **more: Any) -> dict[str, Any]:
    out = {"trace_id": TRACE, "span_id": span_id, "kind": "CLIENT",
           "resource": {"service.name": "svc"},
           "scope": {"name": "test.scope", "version": "1.2", "attributes": {}}, **more}
    if parent:
        out["parent_span_id"] = parent
    return out


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_genai_chat_span_maps_to_every_field(encoding: str) -> None:
    """GenAI conventions (indexed prompt/completion attributes, usage, models,
    provider, agent) become the span's fields; the rest stays in metadata."""
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai",
             "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
             "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 3,
             "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "be brief",
             "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "hi",
             "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "hello",
             "gen_ai.request.temperature": 0.5, "gen_ai.agent.name": "planner"}
    doc = request(span("agent", ROOT), span("chat gpt-4o", CHILD, ROOT, attrs))
    root, child = mapped(doc, encoding)
    assert child == {
        "v": 1, "id": CHILD_UUID, "trace_id": TRACE_UUID, "parent_span_id": ROOT_UUID,
        "name": "chat gpt-4o", "type": "llm", "start_time": START, "end_time": END,
        "last_updated_at": END, "model": "gpt-4o-2024-08-06", "provider": "openai",
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "input": {"messages": [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "hi"}]},
        "output": {"messages": [{"role": "assistant", "content": "hello"}]},
        "agent_name": "planner",
        "metadata": {"gen_ai.operation.name": "chat", "gen_ai.request.temperature": 0.5,
                     "otel": otel(CHILD, ROOT)},
    }
    assert root["parent_span_id"] is None and root["type"] == "general"
    assert root["agent_name"] == "svc" and root["id"] == ROOT_UUID


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_genai_messages_as_json_attributes_and_as_events(encoding: str) -> None:
    """gen_ai.input/output.messages (JSON text) and the message events
    (gen_ai.user.message, gen_ai.choice) fill input and output; other events stay."""
    messages = {"gen_ai.input.messages": '[{"role": "user", "parts": [{"type": "text"}]}]',
                "gen_ai.output.messages": '[{"role": "assistant"}]',
                "gen_ai.provider.name": "anthropic", "gen_ai.usage.prompt_tokens": 4,
                "gen_ai.usage.completion_tokens": 1}
    events = [{"name": "gen_ai.user.message", "timeUnixNano": "1700000000200000000",
               "attributes": [{"key": "content", "value": {"stringValue": "hi"}}]},
              {"name": "gen_ai.choice", "timeUnixNano": "1700000000300000000",
               "attributes": [{"key": "finish_reason", "value": {"stringValue": "stop"}}]},
              {"name": "retry", "timeUnixNano": "1700000000400000000"}]
    doc = request(span("a", ROOT, attrs=messages), span("b", CHILD, ROOT, events=events))
    by_attrs, by_events = mapped(doc, encoding)
    assert by_attrs["input"] == {"messages": [{"role": "user", "parts": [{"type": "text"}]}]}
    assert by_attrs["output"] == {"messages": [{"role": "assistant"}]}
    assert by_attrs["provider"] == "anthropic" and by_attrs["type"] == "llm"
    assert by_attrs["usage"] == {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}
    assert by_events["input"] == {"messages": [{"role": "user", "content": "hi"}]}
    assert by_events["output"] == {"messages": [{"finish_reason": "stop"}]}
    assert by_events["events"] == [
        {"name": "retry", "time": "2023-11-14T22:13:20.400000Z", "attributes": {}}]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_an_openinference_llm_span_maps_to_every_field(encoding: str) -> None:
    """OpenInference: span kind, llm.model_name/provider, token counts,
    input/output values (JSON parsed) and indexed llm.*_messages."""
    attrs = {"openinference.span.kind": "LLM", "llm.model_name": "claude-3-5-sonnet",
             "llm.provider": "anthropic", "llm.token_count.prompt": 20,
             "llm.token_count.completion": 7, "llm.token_count.total": 27,
             "input.value": '{"q": "why"}', "input.mime_type": "application/json",
             "output.value": "because", "output.mime_type": "text/plain",
             "llm.input_messages.0.message.role": "user",
             "llm.input_messages.0.message.content": "why",
             "llm.output_messages.0.message.role": "assistant",
             "llm.output_messages.0.message.contents.0.message_content.text": "because",
             "llm.invocation_parameters": '{"temperature": 0}', "session.id": "s-1"}
    (record,) = mapped(request(span("ChatAnthropic", ROOT, attrs=attrs),
                               resource={"service.name": "svc",
                                         "openinference.project.name": "proj"}), encoding)
    assert record["type"] == "llm"
    assert (record["model"], record["provider"]) == ("claude-3-5-sonnet", "anthropic")
    assert record["usage"] == {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}
    assert record["input"] == {"value": {"q": "why"},
                               "messages": [{"role": "user", "content": "why"}]}
    assert record["output"] == {"value": "because", "messages": [
        {"role": "assistant", "contents": [{"message_content": {"text": "because"}}]}]}
    assert record["project_name"] == "proj"
    assert {k for k in record["metadata"] if k != "otel"} == {
        "openinference.span.kind", "llm.invocation_parameters", "session.id"}


@pytest.mark.parametrize(("kind", "expected"), [
    ("TOOL", "tool"), ("GUARDRAIL", "guardrail"), ("CHAIN", "general"), ("EMBEDDING", "llm"),
    ("AGENT", "general"), ("RETRIEVER", "general")])
def test_openinference_span_kinds_give_our_types(kind: str, expected: str) -> None:
    attrs = {"openinference.span.kind": kind, "tool.parameters": '{"x": 1}'}
    (record,) = mapped(request(span("s", ROOT, attrs=attrs)), "json")
    assert record["type"] == expected
    assert record["input"] == {"parameters": {"x": 1}}


@pytest.mark.parametrize(("attrs", "expected"), [
    ({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.call.arguments": "{}"}, "tool"),
    ({"gen_ai.operation.name": "invoke_agent", "gen_ai.system": "openai"}, "general"),
    ({"gen_ai.operation.name": "embeddings"}, "llm"),
    ({"gen_ai.request.model": "m"}, "llm"),
    ({"http.method": "GET"}, "general")])
def test_genai_operations_give_our_types(attrs: dict[str, Any], expected: str) -> None:
    (record,) = mapped(request(span("s", ROOT, attrs=attrs)), "json")
    assert record["type"] == expected


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_error_status_and_exception_event_become_error_info(encoding: str) -> None:
    exception = {"name": "exception", "timeUnixNano": "1700000000500000000", "attributes": [
        {"key": "exception.type", "value": {"stringValue": "TimeoutError"}},
        {"key": "exception.message", "value": {"stringValue": "slow"}},
        {"key": "exception.stacktrace", "value": {"stringValue": "Traceback ..."}}]}
    doc = request(span("failed", ROOT, status={"code": 2, "message": "it failed"}),
                  span("raised", CHILD, ROOT, events=[exception]),
                  span("handled", "00000000000000aa", events=[exception], status={"code": 1}))
    failed, raised, handled = mapped(doc, encoding)
    assert failed["error_info"] == {"exception_type": "Error", "message": "it failed"}
    assert raised["error_info"] == {"exception_type": "TimeoutError", "message": "slow",
                                    "traceback": "Traceback ..."}
    assert raised["events"][0]["name"] == "exception"
    assert "error_info" not in handled  # status OK: the exception was dealt with


def test_ids_agree_with_the_client_exporter_and_its_traceparent() -> None:
    """The receiver's ids are the client's: span_uuid(trace, span id), the
    trace id byte for byte, and a parent named in our tracestate entry wins."""
    carried = "0190a3c4-5d6e-7f00-8123-456789abcdef"
    carried_w3c = f"{w3c_span_id(UUID(carried)):016x}"
    doc = request(span("s", CHILD, carried_w3c, traceState=f"spansidecar={UUID(carried).hex}"))
    (record,) = mapped(doc, "json")
    assert record["id"] == CHILD_UUID and record["trace_id"] == TRACE_UUID
    assert record["parent_span_id"] == carried


def test_invalid_spans_are_rejected_alone_with_partial_success() -> None:
    doc = request(span("ok", ROOT), span("bad", "00000000000000000000"),
                  {**span("zero", CHILD), "traceId": "0" * 32})
    for encoding, (body, content_type) in both(doc).items():
        result = parse_otlp(body, content_type, None)
        assert (result.status, len(result.records)) == (200, 1)
        assert (result.spans_received, result.spans_rejected) == (3, 2)
        if encoding == "protobuf":
            answer = ExportTraceServiceResponse.FromString(result.body)
            assert answer.partial_success.rejected_spans == 2
            assert "span_id" in answer.partial_success.error_message
        else:
            assert orjson.loads(result.body)["partialSuccess"]["rejectedSpans"] == "2"


def test_success_bodies_are_export_trace_service_responses() -> None:
    assert success_body("json") == b"{}"
    assert ExportTraceServiceResponse.FromString(success_body("protobuf")) == (
        ExportTraceServiceResponse())


def test_gzip_is_inflated_and_bombs_stop_at_the_limit() -> None:
    body, content_type = both(request(span("s", ROOT)))["protobuf"]
    assert len(parse_otlp(gzip.compress(body), content_type, "gzip").records) == 1
    bomb = gzip.compress(b"\0" * 10_000_000)
    assert parse_otlp(bomb, content_type, "gzip", max_inflated_bytes=1_000_000).status == 413
    assert parse_otlp(gzip.compress(body)[:-9], content_type, "gzip").status == 400
    assert parse_otlp(body, content_type, "gzip").status == 400


@pytest.mark.parametrize(("body", "content_type", "encoding", "status"), [
    (b"{}", "text/plain", None, 415),
    (b"{}", "application/json", "br", 415),
    (b"{not json", "application/json", None, 400),
    (b"[]", "application/json", None, 400),
    (b'{"resourceSpans": {}}', "application/json", None, 400),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
     "application/json", None, 400),
    (b"\xff\xff\xff", "application/x-protobuf", None, 400),
    (b"\x0a\x05\x12\x03\x12\x01\xff", "application/x-protobuf", None, 400),
])
def test_client_errors_say_why_and_map_nothing(body: bytes, content_type: str,
                                               encoding: str | None, status: int) -> None:
    result = parse_otlp(body, content_type, encoding)
    assert (result.status, result.records) == (status, [])
    assert result.reason


def test_an_empty_request_is_a_success_with_nothing_to_append() -> None:
    for body, content_type in both({"resourceSpans": []}).values():
        result = parse_otlp(body, content_type + "; charset=utf-8", "identity")
        assert (result.status, result.records, result.spans_received) == (200, [], 0)
