"""The OpenTelemetry exporter: GenAI conventions onto span fields, ids onto UUIDs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.client import SpoolWriter, Tracer, extract, inject, span_uuid
from sidecar.client.otel import SpoolSpanExporter, UUID7IdGenerator
from sidecar.schema import SpanRecord

from .helpers import spool_records

W3C = TraceContextTextMapPropagator()


@pytest.fixture(params=["uuid7", "random"])
def provider(request: pytest.FixtureRequest, spool: Path) -> Iterator[TracerProvider]:
    ids = UUID7IdGenerator() if request.param == "uuid7" else RandomIdGenerator()
    exporter = SpoolSpanExporter(spool_dir=spool, agent_tier=2, project_name="otel-proj")
    provider = TracerProvider(resource=Resource.create({"service.name": "otel-agent"}),
                              id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def spans(spool: Path) -> dict[str, SpanRecord]:
    return {r.name: r for r in spool_records(spool) if isinstance(r, SpanRecord)}


def test_genai_attributes_become_span_fields(provider: TracerProvider, spool: Path) -> None:
    tracer = provider.get_tracer("test-scope")
    with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as span:
        span.set_attributes({
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20,
            "gen_ai.input.messages": '[{"role": "user", "content": "hi"}]',
            "gen_ai.request.temperature": 0.2, "app.tags": ("a", "b"),
        })
        span.add_event("first_token", {"latency_ms": 12.5})
        otel_ids = (span.get_span_context().trace_id, span.get_span_context().span_id)
    provider.force_flush()
    record = spans(spool)["chat gpt-4o"]
    assert record.type == "llm" and record.model == "gpt-4o-2024-08-06"
    assert record.provider == "openai"
    assert record.usage == {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    assert record.input == {"messages": [{"role": "user", "content": "hi"}]}
    assert record.metadata is not None
    assert record.metadata["gen_ai.request.temperature"] == 0.2
    assert record.metadata["app.tags"] == ["a", "b"]
    assert record.metadata["otel"]["span_id"] == f"{otel_ids[1]:016x}"
    assert record.metadata["otel"]["kind"] == "CLIENT"
    assert "gen_ai.request.model" not in record.metadata
    assert record.trace_id == UUID(int=otel_ids[0])
    assert record.id == span_uuid(record.trace_id, otel_ids[1])
    assert record.agent_name == "otel-agent" and record.agent_tier == 2
    assert record.project_name == "otel-proj"
    assert record.events is not None and record.events[0].name == "first_token"
    assert record.end_time is not None and record.end_time >= record.start_time


def test_parent_links_and_uuid7_ids(provider: TracerProvider, spool: Path) -> None:
    tracer = provider.get_tracer("test-scope")
    with tracer.start_as_current_span("agent"), tracer.start_as_current_span("tool") as tool:
        tool.set_attribute("gen_ai.operation.name", "execute_tool")
        tool.set_attribute("gen_ai.agent.name", "sub-agent")
    out = spans(spool)
    assert out["agent"].parent_span_id is None
    assert out["tool"].parent_span_id == out["agent"].id
    assert out["tool"].trace_id == out["agent"].trace_id and out["tool"].type == "tool"
    assert out["tool"].agent_name == "sub-agent" and out["agent"].type == "general"
    if out["agent"].trace_id.version == 7:  # with UUID7IdGenerator
        assert out["agent"].id.version == out["tool"].id.version == 7


def test_error_status_and_exception_become_error_info(
    provider: TracerProvider, spool: Path
) -> None:
    tracer = provider.get_tracer("test-scope")
    with pytest.raises(RuntimeError):
        with tracer.start_as_current_span("failing"):
            raise RuntimeError("model overloaded")
    with tracer.start_as_current_span("status-only") as span:
        span.set_status(Status(StatusCode.ERROR, "bad reply"))
    out = spans(spool)
    info = out["failing"].error_info
    assert info is not None and info.exception_type == "RuntimeError"
    assert info.message == "model overloaded" and "RuntimeError" in (info.traceback or "")
    assert out["status-only"].error_info is not None
    assert out["status-only"].error_info.message == "bad reply"
    assert out["status-only"].error_info.exception_type == "Error"


def test_tracer_and_otel_agents_share_one_trace_both_ways(spool: Path) -> None:
    """Tracer -> OTel service -> Tracer: every parent link resolves to a written span."""
    ours = Tracer("ours", writer=SpoolWriter(spool, "ours"))
    provider = TracerProvider(id_generator=RandomIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(SpoolSpanExporter("otel-svc", spool)))
    otel = provider.get_tracer("svc")
    with ours.trace_agent("caller") as caller:
        outgoing: dict[str, str] = inject({})
    with otel.start_as_current_span("service", context=W3C.extract(outgoing)):
        back: dict[str, str] = {}
        W3C.inject(back)  # OTel passes our tracestate entry on, with its own parent id
    with ours.trace_agent("callback", parent=extract(back)):
        pass
    ours.close()
    provider.shutdown()
    out = spans(spool)
    assert out["service"].parent_span_id == caller.span_id
    assert out["callback"].parent_span_id == out["service"].id
    assert {s.trace_id for s in out.values()} == {caller.trace_id}


def test_export_is_deterministic(spool: Path) -> None:
    provider = TracerProvider()
    exporter = SpoolSpanExporter("det", writer=SpoolWriter(spool, "det"))
    with provider.get_tracer("x").start_as_current_span("once") as span:
        pass
    first, second = exporter.to_record(span), exporter.to_record(span)  # type: ignore[arg-type]
    assert first is not None and second is not None
    assert (first["id"], first["trace_id"]) == (second["id"], second["trace_id"])


def test_an_unwritable_spool_is_a_failed_export_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    exporter = SpoolSpanExporter("broken", tmp_path / "file")
    provider = TracerProvider()
    with provider.get_tracer("x").start_as_current_span("lost") as span:
        pass
    assert exporter.export([span]) is SpanExportResult.FAILURE  # type: ignore[list-item]
    exporter.shutdown()
