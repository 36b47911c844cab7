"""An OpenTelemetry ``SpanExporter`` that writes OTel spans to the spool.

For agents already instrumented with OpenTelemetry (extra ``otel``; this is
the only client module that imports it). GenAI semantic conventions become
span fields: ``gen_ai.response.model``/``gen_ai.request.model`` -> ``model``,
``gen_ai.provider.name``/``gen_ai.system`` -> ``provider``,
``gen_ai.usage.input_tokens``/``output_tokens`` -> ``usage``, input/output
messages -> ``input``/``output``; every other attribute goes into
``metadata``, status ERROR into ``error_info``, span events into ``events``.

Ids: the 16-byte trace id is the trace UUID; the 8-byte span id becomes
``span_uuid(trace id, span id)``, the same UUID ``extract()`` derives for that
span from a ``traceparent`` (see ``sidecar.client.ids``). With
``UUID7IdGenerator`` trace ids, and so span ids, are UUIDv7 as Opik wants.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import StatusCode

from sidecar.client import shape
from sidecar.client.ids import new_id, new_w3c_span_id, span_uuid
from sidecar.client.propagation import VENDOR_KEY, resolve_parent
from sidecar.client.tracer import default_spool_dir
from sidecar.client.writer import SpoolWriter

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model")
_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system")
_USAGE_KEYS = {
    "gen_ai.usage.input_tokens": "prompt_tokens",
    "gen_ai.usage.prompt_tokens": "prompt_tokens",
    "gen_ai.usage.output_tokens": "completion_tokens",
    "gen_ai.usage.completion_tokens": "completion_tokens",
    "gen_ai.usage.total_tokens": "total_tokens",
}
_INPUT_KEYS = {"gen_ai.input.messages": "messages", "gen_ai.prompt": "prompt",
               "gen_ai.system_instructions": "system_instructions",
               "gen_ai.tool.call.arguments": "arguments"}
_OUTPUT_KEYS = {"gen_ai.output.messages": "messages", "gen_ai.completion": "completion",
                "gen_ai.tool.call.result": "result"}
_LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})


class UUID7IdGenerator(IdGenerator):
    """OTel ids whose trace ids are UUIDv7 (so the mapped span ids are too)."""

    def generate_trace_id(self) -> int:
        return new_id().int

    def generate_span_id(self) -> int:
        return new_w3c_span_id()

    def is_trace_id_random(self) -> bool:
        return True  # the 56 low bits of a UUIDv7 are random


class SpoolSpanExporter(SpanExporter):
    """Writes each finished OTel span as one spool line; never blocks on a network.

    ``agent_name`` names the files and is the spans' agent unless a span has
    ``gen_ai.agent.name``; it defaults to the resource's ``service.name``.
    """

    def __init__(
        self,
        agent_name: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        agent_tier: int | None = None,
        project_name: str | None = None,
        writer: SpoolWriter | None = None,
    ) -> None:
        self._agent_name = agent_name
        self._owns_writer = writer is None
        self._writer = writer or SpoolWriter(spool_dir or default_spool_dir(), agent_name or "otel")
        self._static: dict[str, Any] = {}
        if shape.tier_of(agent_tier) is not None:
            self._static["agent_tier"] = agent_tier
        if project_name:
            self._static["project_name"] = project_name

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the batch; FAILURE if any span could not be written (counted in the writer)."""
        ok = True
        for span in spans:
            try:
                record = self.to_record(span)
            except Exception:  # one odd span must not cost the rest of the batch
                record = None
            ok = (record is not None and self._writer.write(record)) and ok
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        """Close the writer (if this exporter created it): its file becomes ``.done``."""
        if self._owns_writer:
            self._writer.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered: every span is in the file once ``export`` returns."""
        return True

    def to_record(self, span: ReadableSpan) -> dict[str, Any] | None:
        """The spool record of one OTel span (None if it never started)."""
        ctx = span.context
        if ctx is None or span.start_time is None:
            return None
        attrs = dict(span.attributes or {})
        trace_id = UUID(int=ctx.trace_id)
        end = _time(span.end_time) if span.end_time is not None else None
        record: dict[str, Any] = {
            "v": 1, "id": span_uuid(trace_id, ctx.span_id), "trace_id": trace_id,
            "parent_span_id": _parent_uuid(span, trace_id), "name": shape.name_of(span.name),
            "type": _span_type(attrs), "start_time": _time(span.start_time),
            "end_time": end, "last_updated_at": end or _time(span.start_time),
            "agent_name": self._agent_of(span, attrs), **self._static,
        }
        _take_genai_fields(attrs, record)
        if span.status.status_code is StatusCode.ERROR:
            record["error_info"] = _error_info(span)
        if span.events:
            record["events"] = [_event(e.name, e.timestamp, e.attributes) for e in span.events]
        attrs["otel"] = _otel_ids(span)
        record["metadata"] = attrs
        return record

    def _agent_of(self, span: ReadableSpan, attrs: dict[str, Any]) -> str:
        named = attrs.pop("gen_ai.agent.name", None)
        service = span.resource.attributes.get("service.name") if span.resource else None
        for candidate in (named, self._agent_name, service):
            if isinstance(candidate, str) and candidate:
                return candidate
        return self._writer.agent_name


def _time(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _parent_uuid(span: ReadableSpan, trace_id: UUID) -> UUID | None:
    parent = span.parent
    if parent is None or not parent.span_id:
        return None
    carried = parent.trace_state.get(VENDOR_KEY) if parent.trace_state else None
    return resolve_parent(trace_id, parent.span_id, carried)


def _span_type(attrs: Mapping[str, Any]) -> str:
    operation = attrs.get("gen_ai.operation.name")
    if operation == "execute_tool":
        return "tool"
    if operation in _LLM_OPERATIONS or any(k in attrs for k in (*_MODEL_KEYS, *_PROVIDER_KEYS)):
        return "llm"
    return "general"


def _take_genai_fields(attrs: dict[str, Any], record: dict[str, Any]) -> None:
    """Move the GenAI attributes that have a span field out of ``attrs``."""
    models = [attrs.pop(k, None) for k in _MODEL_KEYS]
    providers = [attrs.pop(k, None) for k in _PROVIDER_KEYS]
    model = next((m for m in models if m), None)
    provider = next((p for p in providers if p), None)
    if model is not None:
        record["model"] = str(model)
    if provider is not None:
        record["provider"] = str(provider)
    usage = {name: attrs.pop(key) for key, name in _USAGE_KEYS.items() if key in attrs}
    if (tokens := shape.usage_of(usage)) is not None:
        record["usage"] = tokens
    for field, keys in (("input", _INPUT_KEYS), ("output", _OUTPUT_KEYS)):
        found = {name: _json_or_text(attrs.pop(key)) for key, name in keys.items() if key in attrs}
        if found:
            record[field] = found


def _json_or_text(value: Any) -> Any:
    # The GenAI conventions send messages as JSON text when the SDK cannot
    # record structured attributes.
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return list(value) if isinstance(value, tuple) else value


def _error_info(span: ReadableSpan) -> dict[str, str]:
    exc = next((e.attributes or {} for e in reversed(span.events) if e.name == "exception"), {})
    info = {"exception_type": str(exc.get("exception.type") or "Error")}
    message = exc.get("exception.message") or span.status.description
    if message:
        info["message"] = str(message)
    if exc.get("exception.stacktrace"):
        info["traceback"] = str(exc["exception.stacktrace"])
    return info


def _event(name: str, ns: int, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"name": shape.name_of(name), "time": _time(ns), "attributes": dict(attributes or {})}


def _otel_ids(span: ReadableSpan) -> dict[str, Any]:
    """The original OTel ids and kind, kept so spans can be matched to other OTel data."""
    ctx = span.context
    out: dict[str, Any] = {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                           "kind": span.kind.name}
    if span.parent is not None:
        out["parent_span_id"] = f"{span.parent.span_id:016x}"
    if span.instrumentation_scope is not None:
        out["scope"] = span.instrumentation_scope.name
    return out
