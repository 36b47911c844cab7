"""Helpers for the OTLP tests: OTLP/JSON documents built by hand, and the
same request as protobuf (through the generated classes), so every golden
case runs through both decoders. No tests here."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

TRACE = "5b8efff798038103d269b633813fc60c"
ROOT = "eee19b7ec3c1b174"
CHILD = "eee19b7ec3c1b173"
T0 = 1_700_000_000_123_456_789
_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def any_value(value: Any) -> dict[str, Any]:
    """An OTLP/JSON AnyValue."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):  # the proto3 JSON spellings of NaN and the infinities
        finite = math.isfinite(value)
        return {"doubleValue": value if finite else str(value).replace("inf", "Infinity")
                .replace("nan", "NaN")}
    if isinstance(value, list):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": attributes(value)}}
    return {"stringValue": value}


def attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": any_value(v)} for k, v in values.items()]


def span(name: str, span_id: str, parent: str = "", attrs: dict[str, Any] | None = None,
         **extra: Any) -> dict[str, Any]:
    """An OTLP/JSON span of trace ``TRACE`` lasting 1.5 s from ``T0``."""
    out = {"traceId": TRACE, "spanId": span_id, "parentSpanId": parent, "name": name,
           "kind": 3, "startTimeUnixNano": str(T0), "endTimeUnixNano": str(T0 + 1_500_000_000),
           "attributes": attributes(attrs or {})}
    out.update(extra)
    return out


def request(*spans: dict[str, Any], resource: dict[str, Any] | None = None,
            scope: str = "test.scope") -> dict[str, Any]:
    return {"resourceSpans": [{
        "resource": {"attributes": attributes(resource or {"service.name": "svc"})},
        "scopeSpans": [{"scope": {"name": scope, "version": "1.2"}, "spans": list(spans)}],
    }]}


def _ids(doc: Any, convert: Any) -> Any:
    if isinstance(doc, dict):
        return {k: convert(v) if k in _ID_KEYS else _ids(v, convert) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_ids(v, convert) for v in doc]
    return doc


def to_protobuf(doc: dict[str, Any]) -> bytes:
    """The OTLP/JSON document as a binary ExportTraceServiceRequest."""
    as_b64 = _ids(doc, lambda h: base64.b64encode(bytes.fromhex(h)).decode())
    message = json_format.ParseDict(as_b64, ExportTraceServiceRequest())
    return bytes(message.SerializeToString())


def to_json(message: ExportTraceServiceRequest) -> bytes:
    """A protobuf request as OTLP/JSON: hex ids, integer enums, camelCase."""
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)
    return orjson.dumps(_ids(doc, lambda b: base64.b64decode(b).hex()))


def both(doc: dict[str, Any]) -> dict[str, tuple[bytes, str]]:
    """The request in both encodings, with their content types."""
    return {"json": (orjson.dumps(doc), "application/json"),
            "protobuf": (to_protobuf(doc), "application/x-protobuf")}
