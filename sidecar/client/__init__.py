"""What agents import: a tracer that appends spans to the local spool.

``from sidecar.client import Tracer`` pulls in only the standard library and
orjson (no pydantic, no network clients), and no call here blocks on a
backend or raises into agent code. See docs/client.md.
"""

from __future__ import annotations

from sidecar.client.context import SpanContext, current_span_context, use_context
from sidecar.client.emit import Emitted, emit_test_span, emit_test_spans
from sidecar.client.ids import new_id, span_uuid, w3c_span_id
from sidecar.client.propagation import extract, inject
from sidecar.client.scope import Span, SpanScope
from sidecar.client.tracer import Tracer, default_spool_dir
from sidecar.client.writer import FsyncPolicy, SpoolWriter, WriterStats

__all__ = [
    "Emitted",
    "FsyncPolicy",
    "Span",
    "SpanContext",
    "SpanScope",
    "SpoolWriter",
    "Tracer",
    "WriterStats",
    "current_span_context",
    "default_spool_dir",
    "emit_test_span",
    "emit_test_spans",
    "extract",
    "inject",
    "new_id",
    "span_uuid",
    "use_context",
    "w3c_span_id",
]
