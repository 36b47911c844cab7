"""The spans table: its name, its columns, a span as a row, and what Postgres cannot store.

The sink writes these rows; the read side, partitions and retention learn the
table from here, never from the sink.

PostgreSQL's text and jsonb refuse U+0000 (text: "invalid byte sequence";
jsonb: "\\u0000 cannot be converted to text"), while JSON, the spool format
and Opik allow it. A span is worth more than one character, so the row gets
U+FFFD (the replacement character) instead, in every text and jsonb column,
and the sink counts each one (``nul_replaced_total``, logged per batch).
Quarantining such spans instead would lose an agent's whole span (its
latency, its error) to a character that carries no meaning in a prompt; the
line still reaches Opik exactly as written.

The cost where there is no NUL (nearly always): one ``in`` per text and one
regex scan per jsonb value, no copy (the scan reads the raw value's buffer).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from msgspec import Raw

from sidecar.records import SpanRecord, encode_json

TABLE = "ml_observability_spans"
Row = tuple[Any, ...]
COLUMNS = (
    "span_id", "trace_id", "parent_span_id", "name", "type", "agent_name", "agent_tier",
    "project_name", "start_time", "end_time", "duration_ms", "status", "model", "provider",
    "prompt_tokens", "completion_tokens", "total_tokens", "total_estimated_cost",
    "error_info", "input", "output", "metadata", "events", "tags", "last_updated_at",
)
NUL = "\x00"
REPLACEMENT = "\ufffd"
_ESCAPED_NUL = re.compile(rb"\\u0000")  # maybe a NUL: a quick scan, false hits possible
# A real one: an odd run of backslashes before "u0000" (``\\u0000`` is a backslash
# and the text "u0000"); the run starts where no backslash precedes it.
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")
_US = timedelta(microseconds=1)


def duration_ms(span: SpanRecord) -> float | None:
    """End minus start in milliseconds, exact to the microsecond (a timedelta
    is whole microseconds; ``total_seconds() * 1000`` gave 50.361999999999995)."""
    if span.end_time is None:
        return None
    return ((span.end_time - span.start_time) // _US) / 1000.0


_TEXT = tuple(COLUMNS.index(c) for c in
              ("name", "agent_name", "project_name", "model", "provider"))
_JSONB = tuple(COLUMNS.index(c) for c in ("error_info", "input", "output", "metadata", "events"))
_TAGS = COLUMNS.index("tags")


def _json(value: Raw | bytes | None) -> tuple[Raw | bytes | None, int]:
    """A jsonb value with every ``\\u0000`` escape made ``\\ufffd``, and how many."""
    if value is None or _ESCAPED_NUL.search(value) is None:
        return value, 0
    fixed, count = _NUL_ESCAPE.subn(rb"\1\\ufffd", bytes(value))
    return (fixed, count) if count else (value, 0)


def _text(value: str | None) -> tuple[str | None, int]:
    if value is None or NUL not in value:
        return value, 0
    return value.replace(NUL, REPLACEMENT), value.count(NUL)


def _may_hold_nul(span: SpanRecord, project: str, error_info: bytes | None,
                  events: bytes | None) -> bool:
    """The quick test, False for nearly every span (~0.5 us). A NUL in a str
    or raw field can only come from a ``\\u0000`` escape: the parser refuses
    a raw NUL byte."""
    search = _ESCAPED_NUL.search
    texts = [span.name, project, span.agent_name or "", span.model or "", span.provider or ""]
    if span.tags:
        texts += span.tags
    return bool(
        NUL in "".join(texts)
        or (span.input is not None and search(span.input))
        or (span.output is not None and search(span.output))
        or (span.metadata is not None and search(span.metadata))
        or (error_info is not None and b"\\u0000" in error_info)
        or (events is not None and b"\\u0000" in events))


def _replaced(row: Row) -> tuple[Row, int]:
    cells, count = list(row), 0
    for i in _TEXT:
        cells[i], n = _text(cells[i])
        count += n
    for i in _JSONB:
        cells[i], n = _json(cells[i])
        count += n
    if cells[_TAGS]:
        fixed = [_text(t) for t in cells[_TAGS]]
        cells[_TAGS] = [t for t, _ in fixed]
        count += sum(n for _, n in fixed)
    return tuple(cells), count


def build_row(span: SpanRecord, default_project: str,
              nul_free: bool = False) -> tuple[Row, int]:
    """The table row of a span and the number of U+0000 replaced in it.

    The free-form jsonb values are the raw JSON text of the line, which the
    jsonb codec passes through as it came (NULs aside). ``nul_free``: the
    fields are not searched for U+0000 (the streamed COPY's choice: Postgres
    refuses a NUL, and the batch is then built again without it).
    """
    usage = span.usage or {}
    project = span.project_name or default_project
    error_info = None if span.error_info is None else encode_json(span.error_info)
    events = None if span.events is None else encode_json(span.events)
    row = (
        span.id, span.trace_id, span.parent_span_id, span.name, span.type, span.agent_name,
        span.agent_tier, project, span.start_time, span.end_time,
        duration_ms(span), span.status, span.model, span.provider, usage.get("prompt_tokens"),
        usage.get("completion_tokens"), usage.get("total_tokens"), span.total_estimated_cost,
        error_info, span.input, span.output, span.metadata, events, span.tags,
        span.last_updated_at,
    )
    if not nul_free and _may_hold_nul(span, project, error_info, events):
        return _replaced(row)
    return row, 0


def span_row(span: SpanRecord, default_project: str) -> Row:
    """The table row of a span (``build_row`` without the count)."""
    return build_row(span, default_project)[0]
