"""The real OTLP/HTTP exporter (opentelemetry-exporter-otlp-proto-http)
posting GenAI spans to a loopback aiohttp server that answers with
parse_otlp: fields filled, the tree intact, a re-sent batch identical, the
ids the client's own OTel exporter gives. OTLP/JSON (that exporter has no
JSON mode) is built from the same batch and posted by hand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.client.otel import SpoolSpanExporter, UUID7IdGenerator
from sidecar.client.writer import SpoolWriter
from sidecar.receivers.otlp import parse_otlp

from .test_otlp_support import to_json


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[list[dict[str, Any]]]]]:
    """A loopback server mounting parse_otlp at /v1/traces; yields its URL and
    the records of each request, in order."""
    batches: list[list[dict[str, Any]]] = []

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp has inflated a gzip body already
        result = parse_otlp(body, request.headers.get("Content-Type", ""), None)
        if result.status == 200:
            batches.append(result.records)
        return web.Response(status=result.status, body=result.body,
                            headers={"Content-Type": result.content_type})

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1/traces", batches
    finally:
        await runner.cleanup()


def genai_batch() -> Sequence[ReadableSpan]:
    """An agent span, an LLM call with GenAI attributes and a failing tool call."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "otlp-agent"}),
                              id_generator=UUID7IdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("agent.instrumentation", "0.1")
    with tracer.start_as_current_span("invoke_agent planner") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        with tracer.start_as_current_span("chat gpt-4o") as chat:
            chat.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 42, "gen_ai.usage.output_tokens": 7,
                "gen_ai.input.messages": '[{"role": "user", "content": "weather?"}]',
                "gen_ai.output.messages": '[{"role": "assistant", "content": "sunny"}]'})
        with pytest.raises(RuntimeError), tracer.start_as_current_span("execute_tool") as tool:
            tool.set_attributes({"gen_ai.operation.name": "execute_tool",
                                 "gen_ai.tool.call.arguments": '{"city": "Oslo"}'})
            raise RuntimeError("no network")
    provider.shutdown()
    return memory.get_finished_spans()


def check_batch(records: list[dict[str, Any]]) -> None:
    by_name = {r["name"]: r for r in records}
    agent, chat = by_name["invoke_agent planner"], by_name["chat gpt-4o"]
    tool = by_name["execute_tool"]
    assert agent["parent_span_id"] is None and agent["type"] == "general"
    assert chat["parent_span_id"] == tool["parent_span_id"] == agent["id"]
    assert len({r["trace_id"] for r in records}) == 1
    assert (chat["type"], chat["model"], chat["provider"]) == ("llm", "gpt-4o-2024-08-06",
                                                               "openai")
    assert chat["usage"] == {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
    assert chat["input"] == {"messages": [{"role": "user", "content": "weather?"}]}
    assert chat["output"] == {"messages": [{"role": "assistant", "content": "sunny"}]}
    assert tool["type"] == "tool" and tool["input"] == {"arguments": {"city": "Oslo"}}
    assert tool["error_info"]["exception_type"] == "RuntimeError"
    assert {r["agent_name"] for r in records} == {"otlp-agent"}
    assert chat["metadata"]["otel"]["scope"]["name"] == "agent.instrumentation"


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
async def test_the_protobuf_exporter_maps_and_a_resend_is_identical(
        receiver: tuple[str, list[list[dict[str, Any]]]], compression: Compression) -> None:
    url, batches = receiver
    spans = genai_batch()
    exporter = OTLPSpanExporter(endpoint=url, compression=compression, timeout=10)
    try:
        for _ in range(2):  # the exporter re-sending the same batch
            assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    first, again = batches
    check_batch(first)
    assert first == again


async def test_otlp_json_maps_like_protobuf(
        receiver: tuple[str, list[list[dict[str, Any]]]]) -> None:
    url, batches = receiver
    spans = genai_batch()
    exporter = OTLPSpanExporter(endpoint=url, timeout=10)
    try:
        assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=to_json(encode_spans(spans)),
                                headers={"Content-Type": "application/json"}) as answer:
            assert (answer.status, await answer.json()) == (200, {})
    by_protobuf, by_json = batches
    check_batch(by_json)
    assert by_json == by_protobuf


async def test_ids_are_those_the_in_process_exporter_writes(
        receiver: tuple[str, list[list[dict[str, Any]]]], tmp_path: Any) -> None:
    """The same OTel span gets the same UUIDs over OTLP as through the
    client's SpoolSpanExporter: switching an agent between them duplicates nothing."""
    url, batches = receiver
    spans = genai_batch()
    exporter = OTLPSpanExporter(endpoint=url, timeout=10)
    try:
        assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    writer = SpoolWriter(tmp_path, "otel")
    try:
        local = [SpoolSpanExporter(writer=writer).to_record(s) for s in spans]
    finally:
        writer.close()
    expected = {(str(r["id"]), str(r["trace_id"]), str(r["parent_span_id"] or ""))
                for r in local if r is not None}
    assert {(r["id"], r["trace_id"], r["parent_span_id"] or "") for r in batches[0]} == expected
