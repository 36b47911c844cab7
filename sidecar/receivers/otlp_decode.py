"""OTLP trace requests, protobuf or JSON, as plain ``OtelSpan`` values.

Both encodings decode into the same small dataclasses, so the mapping to
spool records (``otlp_map``) is written once. Attribute values become plain
Python values (str, bool, int, float, list, dict; bytes as base64 text, as
OTLP/JSON carries them), nested at most ``MAX_DEPTH`` levels.

A request that is not a well-formed ``ExportTraceServiceRequest`` raises
``Malformed`` (the caller answers 400); span-level problems (ids of the
wrong length) are left to the mapping, which rejects that span alone.

OTLP/JSON follows the spec's departures from the protobuf JSON mapping:
trace and span ids are hex, enums are integers (their names are accepted
too), 64-bit integers may be strings; field names are lowerCamelCase, and
the proto's own snake_case names are accepted as any protobuf JSON parser
does. ``opentelemetry-proto`` (with its protobuf runtime) is imported only
when the first protobuf request arrives.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 32
_U64 = 2**64
_TOO_DEEP = "[nested too deep]"


class Malformed(ValueError):
    """The body is not an OTLP ExportTraceServiceRequest; the message says why."""


@dataclass(slots=True)
class OtelEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(slots=True)
class OtelSpan:
    """One OTel span with its resource and scope, in either encoding."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: dict[str, Any]
    trace_state: str = ""
    status_code: int = 0
    status_message: str = ""
    events: list[OtelEvent] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)


# --- protobuf --------------------------------------------------------------

_request_class: Any = None


def _request_type() -> Any:
    """The generated message class, imported on first use (~protobuf's cost once)."""
    global _request_class
    if _request_class is None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        _request_class = ExportTraceServiceRequest
    return _request_class


def from_protobuf(body: bytes) -> list[OtelSpan]:
    """Every span of a binary ``ExportTraceServiceRequest``; raises ``Malformed``."""
    request = _request_type()()
    try:
        request.ParseFromString(body)
    except Exception as exc:  # DecodeError, bad UTF-8 in a string, too deep
        raise Malformed(f"not a protobuf ExportTraceServiceRequest: {exc}") from None
    spans: list[OtelSpan] = []
    for rs in request.resource_spans:
        resource = _pb_attrs(rs.resource.attributes, 0)
        for ss in rs.scope_spans:
            sc = ss.scope
            scope = {"name": sc.name, "version": sc.version,
                     "attributes": _pb_attrs(sc.attributes, 0)}
            spans.extend(_pb_span(s, resource, scope) for s in ss.spans)
    return spans


def _pb_span(s: Any, resource: dict[str, Any], scope: dict[str, Any]) -> OtelSpan:
    status = s.status
    events, links = s.events, s.links
    return OtelSpan(  # positional: the field order of OtelSpan
        s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.start_time_unix_nano,
        s.end_time_unix_nano, _pb_attrs(s.attributes, 0), resource, scope, s.trace_state,
        status.code, status.message,
        [OtelEvent(e.name, e.time_unix_nano, _pb_attrs(e.attributes, 0))
         for e in events] if events else [],
        [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
         for link in links] if links else [],
    )


def _pb_attrs(pairs: Any, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        v = kv.value
        if v.WhichOneof("value") == "string_value":  # most attributes: read inline
            out[kv.key] = v.string_value
        else:
            out[kv.key] = _pb_value(v, depth)
    return out


def _pb_value(v: Any, depth: int) -> Any:
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "int_value":
        return v.int_value
    if which == "bool_value":
        return v.bool_value
    if which == "double_value":
        return v.double_value
    if depth >= MAX_DEPTH and which in ("array_value", "kvlist_value"):
        return _TOO_DEEP
    if which == "array_value":
        return [_pb_value(x, depth + 1) for x in v.array_value.values]
    if which == "kvlist_value":
        return _pb_attrs(v.kvlist_value.values, depth + 1)
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return None


# --- JSON ------------------------------------------------------------------

def from_json(doc: object) -> list[OtelSpan]:
    """Every span of an OTLP/JSON request already parsed; raises ``Malformed``."""
    spans: list[OtelSpan] = []
    for rs in _list(_obj(doc, "request"), "resourceSpans", "resource_spans"):
        rs = _obj(rs, "resourceSpans[]")
        resource = _json_attrs(_obj(_get(rs, "resource") or {}, "resource"), 0)
        for ss in _list(rs, "scopeSpans", "scope_spans"):
            ss = _obj(ss, "scopeSpans[]")
            sc = _obj(_get(ss, "scope") or {}, "scope")
            scope = {"name": _str(_get(sc, "name")), "version": _str(_get(sc, "version")),
                     "attributes": _json_attrs(sc, 0)}
            spans.extend(_json_span(_obj(s, "spans[]"), resource, scope)
                         for s in _list(ss, "spans"))
    return spans


def _json_span(s: dict[str, Any], resource: dict[str, Any], scope: dict[str, Any]) -> OtelSpan:
    status = _obj(_get(s, "status") or {}, "status")
    return OtelSpan(
        trace_id=_hex(_get(s, "traceId", "trace_id")), span_id=_hex(_get(s, "spanId", "span_id")),
        parent_span_id=_hex(_get(s, "parentSpanId", "parent_span_id")),
        name=_str(_get(s, "name")), kind=_enum(_get(s, "kind"), "SPAN_KIND_"),
        start_ns=_u64(_get(s, "startTimeUnixNano", "start_time_unix_nano")),
        end_ns=_u64(_get(s, "endTimeUnixNano", "end_time_unix_nano")),
        attributes=_json_attrs(s, 0), resource=resource, scope=scope,
        trace_state=_str(_get(s, "traceState", "trace_state")),
        status_code=_enum(_get(status, "code"), "STATUS_CODE_"),
        status_message=_str(_get(status, "message")),
        events=[_json_event(_obj(e, "events[]")) for e in _list(s, "events")],
        links=[{"trace_id": _hex(_get(link, "traceId", "trace_id")).hex(),
                "span_id": _hex(_get(link, "spanId", "span_id")).hex()}
               for link in (_obj(x, "links[]") for x in _list(s, "links"))],
    )


def _json_event(e: dict[str, Any]) -> OtelEvent:
    return OtelEvent(_str(_get(e, "name")), _u64(_get(e, "timeUnixNano", "time_unix_nano")),
                     _json_attrs(e, 0))


def _json_attrs(holder: dict[str, Any], depth: int, key: str = "attributes") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in _list(holder, key):
        kv = _obj(kv, "attributes[]")
        out[_str(_get(kv, "key"))] = _json_value(_get(kv, "value"), depth)
    return out


def _json_value(v: object, depth: int) -> Any:
    if v is None:
        return None
    v = _obj(v, "AnyValue")
    for key, alt in _SCALARS:
        if key in v or alt in v:
            return _SCALAR_READERS[key](_get(v, key, alt))
    arr = _get(v, "arrayValue", "array_value")
    kvl = _get(v, "kvlistValue", "kvlist_value")
    if arr is None and kvl is None:
        return None
    if depth >= MAX_DEPTH:
        return _TOO_DEEP
    if arr is not None:
        return [_json_value(x, depth + 1) for x in _list(_obj(arr, "arrayValue"), "values")]
    return _json_attrs(_obj(kvl, "kvlistValue"), depth + 1, "values")


def _int64(v: object) -> int:
    n = _integer(v)
    if not -(2**63) <= n < 2**63:
        raise Malformed(f"intValue out of int64 range: {n}")
    return n


def _double(v: object) -> float:
    if isinstance(v, bool):
        raise Malformed("doubleValue must be a number")
    if isinstance(v, int | float):
        return float(v)
    if v in ("NaN", "Infinity", "-Infinity"):  # the proto3 JSON spellings
        return float(str(v).lower().replace("infinity", "inf"))
    raise Malformed("doubleValue must be a number")


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise Malformed("boolValue must be true or false")
    return v


def _b64(v: object) -> str:
    try:
        return base64.b64encode(base64.b64decode(_str(v), validate=True)).decode("ascii")
    except binascii.Error:
        raise Malformed("bytesValue must be base64") from None


_SCALARS = (("stringValue", "string_value"), ("intValue", "int_value"),
            ("boolValue", "bool_value"), ("doubleValue", "double_value"),
            ("bytesValue", "bytes_value"))
_SCALAR_READERS: dict[str, Any] = {"stringValue": lambda v: _str(v), "intValue": _int64,
                                   "boolValue": _bool, "doubleValue": _double,
                                   "bytesValue": _b64}


def _get(d: dict[str, Any], key: str, alt: str | None = None) -> Any:
    value = d.get(key)
    if value is None and alt is not None:
        value = d.get(alt)
    return value


def _obj(v: object, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise Malformed(f"{what} must be a JSON object")
    return v


def _list(d: dict[str, Any], key: str, alt: str | None = None) -> list[Any]:
    v = _get(d, key, alt)
    if v is None:
        return []
    if not isinstance(v, list):
        raise Malformed(f"{key} must be a JSON array")
    return v


def _str(v: object) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise Malformed("expected a string")
    return v


def _hex(v: object) -> bytes:
    text = _str(v)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise Malformed(f"an id must be hex, got {text[:40]!r}") from None


def _integer(v: object) -> int:
    if isinstance(v, bool):
        raise Malformed("expected an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.lstrip("-").isdigit() and len(v) <= 24:
        return int(v)
    raise Malformed(f"expected an integer, got {str(v)[:40]!r}")


def _u64(v: object) -> int:
    if v is None:
        return 0
    n = _integer(v)
    if not 0 <= n < _U64:
        raise Malformed(f"a time must be unsigned 64-bit nanoseconds, got {n}")
    return n


def _enum(v: object, prefix: str) -> int:
    if v is None:
        return 0
    if isinstance(v, str) and v.startswith(prefix):
        names = _ENUM_NAMES.get(prefix, {})
        if v in names:
            return names[v]
        raise Malformed(f"unknown enum value {v[:40]!r}")
    n = _integer(v)
    if not -(2**31) <= n < 2**31:
        raise Malformed(f"enum out of range: {n}")
    return n


_ENUM_NAMES = {
    "SPAN_KIND_": {f"SPAN_KIND_{name}": i for i, name in enumerate(
        ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"))},
    "STATUS_CODE_": {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2},
}
