"""OTLP/HTTP traces (``POST /v1/traces``) as spool records: pure and total.

``parse_otlp`` takes a request's body and its two headers and returns an
``OtlpResult``: the records to append and the answer to give once they are
appended (the ``ExportTraceServiceResponse`` the exporters expect, empty or
with ``partial_success``, in the request's encoding), or a client error
(415 for a content type or encoding we do not take, 413 for a body that
inflates past the limit, 400 for anything not an ``ExportTraceServiceRequest``)
with its reason. It never raises and does no I/O, so the HTTP handler stays
a few lines: parse, append ``result.records`` if any, answer.

A span whose ids are invalid (the OTLP spec's "invalid span") is rejected
alone and counted in ``partial_success``; the other spans of the request are
kept. The mapping is in ``otlp_map`` (fields) and ``otlp_messages`` (input and
output), the two encodings in ``otlp_decode``; docs/otlp.md has the table.
"""

from __future__ import annotations

import gc
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from sidecar.receivers.otlp_decode import Malformed, OtelSpan, from_json, from_protobuf
from sidecar.receivers.otlp_map import InvalidSpan, to_record

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_TYPES: dict[str, Literal["protobuf", "json"]] = {
    PROTOBUF: "protobuf", "application/protobuf": "protobuf", JSON: "json"}
MAX_INFLATED_BYTES = 64 * 1024 * 1024
_GRPC_INVALID_ARGUMENT = 3


@dataclass(frozen=True, slots=True)
class OtlpResult:
    """What one OTLP request comes to.

    ``status`` is 200 (append ``records``, then answer ``body``), or a client
    error (400, 413, 415) whose ``reason`` says why and whose ``body`` is a
    ``google.rpc.Status`` in the request's encoding (JSON when that is unknown).
    ``spans_rejected`` counts spans of a 200 left out (``reason`` says why).
    """

    status: int
    body: bytes
    content_type: str
    records: list[dict[str, Any]] = field(default_factory=list)
    spans_received: int = 0
    spans_rejected: int = 0
    reason: str | None = None


def parse_otlp(body: bytes, content_type: str, content_encoding: str | None, *,
               project_name: str | None = None,
               max_inflated_bytes: int = MAX_INFLATED_BYTES) -> OtlpResult:
    """Map one ``ExportTraceServiceRequest`` to spool span records; never raises.

    ``content_encoding`` is the request's ``Content-Encoding`` as it still
    applies to ``body`` (None or ``identity`` once the server has inflated it;
    ``gzip`` is inflated here, up to ``max_inflated_bytes``). ``project_name``
    (e.g. from a header) wins over the resource's ``openinference.project.name``.
    """
    try:
        return _parse(body, content_type, content_encoding, project_name, max_inflated_bytes)
    except Exception as exc:  # a bug here must answer, not kill the handler
        return client_error(400, f"unprocessable OTLP request: {type(exc).__name__}", "json")


def _parse(body: bytes, content_type: str, content_encoding: str | None,
           project_name: str | None, limit: int) -> OtlpResult:
    encoding = _TYPES.get(content_type.split(";", 1)[0].strip().lower())
    if encoding is None:
        return client_error(415, f"Content-Type must be {PROTOBUF} or {JSON}, "
                                 f"not {content_type[:80]!r}", "json")
    coding = (content_encoding or "identity").strip().lower()
    if coding == "gzip":
        inflated = _gunzip(body, limit)
        if isinstance(inflated, OtlpResult):
            return _in_encoding(inflated, encoding)
        body = inflated
    elif coding != "identity":
        return client_error(415, f"Content-Encoding must be gzip or identity, "
                                 f"not {coding[:40]!r}", encoding)
    # A 512-span request makes ~8,000 containers, none in a cycle (freed by
    # their counts); paused, the cyclic collector walks them at most once,
    # after, not in the middle: ~1 us a span under the daemon's thresholds
    # (sidecar.daemon.tune_gc), ~5 us under the interpreter's default.
    pause = gc.isenabled()
    if pause:
        gc.disable()
    try:
        spans = _decode(body, encoding)
        return _mapped(spans, encoding, project_name)
    except Malformed as exc:
        return client_error(400, str(exc)[:500], encoding)
    finally:
        if pause:
            gc.enable()


def _decode(body: bytes, encoding: str) -> list[OtelSpan]:
    if encoding == "protobuf":
        return from_protobuf(body)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"not JSON: {exc}") from None
    return from_json(doc)


def _mapped(spans: list[OtelSpan], encoding: Literal["protobuf", "json"],
            project_name: str | None) -> OtlpResult:
    records: list[dict[str, Any]] = []
    reasons: dict[str, None] = {}
    for span in spans:
        try:
            records.append(to_record(span, project_name))
        except InvalidSpan as exc:
            reasons[str(exc)] = None
    rejected = len(spans) - len(records)
    reason = "; ".join(reasons) or None
    return OtlpResult(200, success_body(encoding, rejected, reason or ""),
                      _content_type(encoding), records, len(spans), rejected, reason)


def _gunzip(body: bytes, limit: int) -> bytes | OtlpResult:
    """The inflated body, at most ``limit`` bytes (a gzip bomb stops there)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        return client_error(400, f"not gzip: {exc}", "json")
    if len(out) > limit:
        return client_error(413, f"the body inflates past {limit} bytes", "json")
    if not inflater.eof:
        return client_error(400, "not gzip: the stream is cut short", "json")
    return out


def _in_encoding(result: OtlpResult, encoding: Literal["protobuf", "json"]) -> OtlpResult:
    return client_error(result.status, result.reason or "", encoding)


def success_body(encoding: Literal["protobuf", "json"], rejected: int = 0,
                 message: str = "") -> bytes:
    """An ``ExportTraceServiceResponse``: empty, or with ``partial_success``."""
    if encoding == "json":
        if not rejected and not message:
            return b"{}"
        partial = {"rejectedSpans": str(rejected), "errorMessage": message}
        return orjson.dumps({"partialSuccess": partial})
    if not rejected and not message:
        return b""
    inner = _varint_field(1, rejected) + _bytes_field(2, message.encode())
    return _bytes_field(1, inner)


def client_error(status: int, reason: str, encoding: Literal["protobuf", "json"]) -> OtlpResult:
    """A refused request: its status, and a ``google.rpc.Status`` body saying why."""
    if encoding == "json":
        body = orjson.dumps({"code": _GRPC_INVALID_ARGUMENT, "message": reason})
    else:
        body = _varint_field(1, _GRPC_INVALID_ARGUMENT) + _bytes_field(2, reason.encode())
    return OtlpResult(status, body, _content_type(encoding), reason=reason)


def _content_type(encoding: str) -> str:
    return PROTOBUF if encoding == "protobuf" else JSON


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value if value else b""
