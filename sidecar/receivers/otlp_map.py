"""One OTel span as one spool span record (docs/otlp.md has the table).

Ids: the 16-byte trace id is the trace UUID, byte for byte; the 8-byte span
id becomes ``span_uuid(trace id, span id)`` (``sidecar.client.ids``). That is
the mapping our own client already uses (its OTel exporter, and
``traceparent`` headers), so an OTel span gets the same UUID whether it
reaches the spool through the in-process exporter or over OTLP, and a
re-sent export writes the same records again: a no-op for Postgres (keyed on
the id) and Opik (one row per id). The result is a UUIDv7 when the trace id
is one (``UUID7IdGenerator``), else version 8; the Opik sink maps non-v7 ids
to v7 deterministically. Hashing into a v7 shape instead would lose that
agreement, and give no better times: a child cannot know its trace's start.

The GenAI conventions and OpenInference are read side by side; the first
source that names a field wins (the order is in each tuple below). Every
attribute not turned into a field stays in ``metadata``, with the span's
OTel identity, kind, status, resource and scope under ``metadata.otel``.

It runs once per span on the daemon's event loop (512-span requests), so the
common case is kept cheap: which of the names read below a span carries is
found with one set operation over its attributes (most spans carry a few of
the ~30), ids are formatted from integers, and a second's RFC 3339 text is
cached (a batch's spans share their seconds).
"""

from __future__ import annotations

import time
from typing import Any

from sidecar.client import shape
from sidecar.client.ids import uuid_from_int
from sidecar.client.propagation import resolve_parent, split_tracestate
from sidecar.receivers.otlp_decode import OtelEvent, OtelSpan
from sidecar.receivers.otlp_messages import take_messages

_MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
_USAGE_KEYS = {
    "gen_ai.usage.input_tokens": "prompt_tokens", "gen_ai.usage.prompt_tokens": "prompt_tokens",
    "llm.token_count.prompt": "prompt_tokens",
    "gen_ai.usage.output_tokens": "completion_tokens",
    "gen_ai.usage.completion_tokens": "completion_tokens",
    "llm.token_count.completion": "completion_tokens",
    "gen_ai.usage.total_tokens": "total_tokens", "llm.usage.total_tokens": "total_tokens",
    "llm.token_count.total": "total_tokens",
}
_COST_KEYS = ("gen_ai.usage.cost", "llm.cost.total")
_AGENT_KEYS = ("gen_ai.agent.name", "agent.name")
_FIELD_KEYS = frozenset((*_MODEL_KEYS, *_PROVIDER_KEYS, *_USAGE_KEYS, *_COST_KEYS))
_LLM_HINTS = frozenset((*_MODEL_KEYS, *_PROVIDER_KEYS, "llm.request.type"))
_OPENINFERENCE_TYPES = {"LLM": "llm", "EMBEDDING": "llm", "TOOL": "tool",
                        "GUARDRAIL": "guardrail"}
_LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings",
                             "completion", "embedding"})
_GENERAL_OPERATIONS = frozenset({"invoke_agent", "create_agent", "invoke_workflow"})
_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_ERROR = 2
_VARIANT = 0b10 << 62  # RFC 4122's variant bits, as sidecar.client.ids sets them
_RAND_B = (1 << 62) - 1
_OK = 1
MAX_AGENT_NAME = 512


class InvalidSpan(ValueError):
    """A span no record can be made of (its ids); the export rejects it alone."""


def to_record(span: OtelSpan, project_name: str | None = None) -> dict[str, Any]:
    """The spool record (JSON-ready: ids and times as strings) of ``span``.

    Raises ``InvalidSpan`` when its trace id is not 16 non-zero bytes or its
    span id not 8 non-zero bytes (the OTLP spec calls such spans invalid).
    """
    trace_id, span_id, parent_id = _ids(span)
    attrs = dict(span.attributes)
    kind = _span_type(attrs)
    start = rfc3339(span.start_ns)
    end = rfc3339(span.end_ns) if span.end_ns else None
    record: dict[str, Any] = {
        "v": 1, "id": span_id, "trace_id": trace_id, "parent_span_id": parent_id,
        "name": span.name or "unnamed", "type": kind, "start_time": start, "end_time": end,
        "last_updated_at": end or start,
    }
    if not _FIELD_KEYS.isdisjoint(attrs):
        _take_fields(attrs, record)
    inp, out, events = take_messages(attrs, span.events)
    if inp is not None:
        record["input"] = inp
    if out is not None:
        record["output"] = out
    if (error := _error_info(span)) is not None:
        record["error_info"] = error
    if events:
        record["events"] = [_event(e) for e in events]
    if (agent := _agent(attrs, span.resource)) is not None:
        record["agent_name"] = agent
    project = project_name or span.resource.get("openinference.project.name")
    if isinstance(project, str) and project:
        record["project_name"] = project
    attrs["otel"] = _otel(span)
    record["metadata"] = attrs
    return record


def _ids(span: OtelSpan) -> tuple[str, str, str | None]:
    t = int.from_bytes(span.trace_id, "big")
    if len(span.trace_id) != 16 or not t:
        raise InvalidSpan("trace_id must be 16 bytes, not all zero")
    s = int.from_bytes(span.span_id, "big")
    if len(span.span_id) != 8 or not s:
        raise InvalidSpan("span_id must be 8 bytes, not all zero")
    # span_uuid's version: 7 when the trace id is an RFC 4122 (variant 10) v7
    version = 7 if (t >> 62) & 0x3 == 0x2 and (t >> 76) & 0xF == 7 else 8
    own = span_int(t, version, s)
    p = int.from_bytes(span.parent_span_id, "big")
    if len(span.parent_span_id) != 8 or not p:
        return _shared_text(t), uuid_text(own), None  # no parent, or not a span id
    carried = split_tracestate(span.trace_state)[0] if span.trace_state else None
    if carried:  # the carried parent UUID, if it stands for this parent id
        parent = resolve_parent(uuid_from_int(t), p, carried).int
    else:
        parent = span_int(t, version, p)
    return _shared_text(t), uuid_text(own), _shared_text(parent)


_TEXTS: dict[int, str] = {}  # trace and parent ids (a batch's spans share them) -> text
_MAX_TEXTS = 4096


def _shared_text(n: int) -> str:
    text = _TEXTS.get(n)
    if text is None:
        if len(_TEXTS) >= _MAX_TEXTS:
            _TEXTS.clear()
        text = _TEXTS[n] = uuid_text(n)
    return text


def span_int(t: int, version: int, w3c_id: int) -> int:
    """``span_uuid(UUID(int=t), w3c_id).int`` on integers (``version`` 7 when
    the trace id is a v7, else 8); a test holds the two equal."""
    rand_a = ((t >> 64) & 0x3FF) << 2 | (w3c_id >> 62) & 0x3
    return (t >> 80) << 80 | version << 76 | rand_a << 64 | _VARIANT | (w3c_id & _RAND_B)


def uuid_text(n: int) -> str:
    """``str(UUID(int=n))``, without building the UUID."""
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_SECONDS: dict[int, str] = {}  # whole seconds -> their RFC 3339 text, bounded below
_MAX_SECONDS = 4096


def rfc3339(ns: int) -> str:
    """Unix nanoseconds as RFC 3339 in UTC (``Z``), to the microsecond, truncated."""
    seconds, rest = divmod(ns, 1_000_000_000)
    text = _SECONDS.get(seconds)
    if text is None:
        if len(_SECONDS) >= _MAX_SECONDS:
            _SECONDS.clear()
        text = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{rest // 1000:06d}Z"


def _span_type(attrs: dict[str, Any]) -> str:
    openinference = attrs.get("openinference.span.kind")
    if isinstance(openinference, str):
        return _OPENINFERENCE_TYPES.get(openinference.upper(), "general")
    operation = attrs.get("gen_ai.operation.name")
    if not isinstance(operation, str):
        operation = None
    if operation == "execute_tool" or attrs.get("traceloop.span.kind") == "tool":
        return "tool"
    if operation in _GENERAL_OPERATIONS:
        return "general"
    if operation in _LLM_OPERATIONS or not _LLM_HINTS.isdisjoint(attrs):
        return "llm"
    return "general"


def _take_fields(attrs: dict[str, Any], record: dict[str, Any]) -> None:
    """Model, provider, usage and cost: moved out of ``attrs`` into the record.

    Every key of a group is taken; the first (in the tuple's order) that
    holds a usable value wins.
    """
    hits = _FIELD_KEYS.intersection(attrs)  # the groups' keys are disjoint
    for field, keys in (("model", _MODEL_KEYS), ("provider", _PROVIDER_KEYS)):
        value = None
        for key in keys:
            if key in hits:
                v = attrs.pop(key)
                if value is None and isinstance(v, str) and v:
                    value = v
        if value is not None:
            record[field] = value
    if not hits.isdisjoint(_USAGE_KEYS):
        usage: dict[str, Any] = {}
        for key, name in _USAGE_KEYS.items():
            if key in hits:
                usage.setdefault(name, attrs.pop(key))
        if (tokens := shape.usage_of(usage)) is not None:
            record["usage"] = tokens
    cost = None
    for key in _COST_KEYS:
        if key in hits:
            c = shape.real_number(attrs.pop(key), 0.0)
            if cost is None:
                cost = c
    if cost is not None:
        record["total_estimated_cost"] = cost


def _error_info(span: OtelSpan) -> dict[str, str] | None:
    """From status ERROR, or from an exception event unless the status says OK."""
    if span.status_code != _ERROR and not span.events:
        return None
    exc = next((e.attributes for e in reversed(span.events) if e.name == "exception"), None)
    if span.status_code != _ERROR and (exc is None or span.status_code == _OK):
        return None
    exc = exc or {}
    kind = exc.get("exception.type")
    info = {"exception_type": kind if isinstance(kind, str) and kind else "Error"}
    message = exc.get("exception.message") or span.status_message
    if message:
        info["message"] = str(message)
    if exc.get("exception.stacktrace"):
        info["traceback"] = str(exc["exception.stacktrace"])
    return info


def _agent(attrs: dict[str, Any], resource: dict[str, Any]) -> str | None:
    named = [attrs.pop(k) for k in _AGENT_KEYS if k in attrs]
    for candidate in (*named, resource.get("service.name")):
        if isinstance(candidate, str) and candidate:
            return candidate[:MAX_AGENT_NAME]
    return None


def _event(event: OtelEvent) -> dict[str, Any]:
    return {"name": event.name or "unnamed", "time": rfc3339(event.time_ns),
            "attributes": event.attributes}


def _otel(span: OtelSpan) -> dict[str, Any]:
    """The span's OTel identity, kind, status, resource and scope, as sent."""
    otel: dict[str, Any] = {"trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "kind": _KINDS[span.kind] if 0 <= span.kind < 6 else str(span.kind)}
    if span.parent_span_id:
        otel["parent_span_id"] = span.parent_span_id.hex()
    if span.trace_state:
        otel["trace_state"] = span.trace_state
    if span.status_code or span.status_message:
        otel["status"] = {"code": span.status_code, "message": span.status_message}
    if span.links:
        otel["links"] = span.links
    otel["resource"] = span.resource
    otel["scope"] = span.scope
    return otel
