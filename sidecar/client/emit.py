"""``span-sidecar emit``: write one complete test span, as an agent would.

Unlike the agent-facing API this raises, because its caller is a command that
must report failure: ``ValueError`` when the fields make an invalid span (the
line is checked with the daemon's ``sidecar.records.parse_line``, imported
only here and only when the daemon is installed: the client distribution
alone writes the span unchecked), and ``OSError`` when the spool cannot be
written.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from sidecar.client.ids import new_id
from sidecar.client.serialize import dumps_line
from sidecar.client.writer import SpoolWriter


def emit_test_span(
    spool_dir: str | os.PathLike[str], name: str, agent: str, **fields: Any
) -> str:
    """Write one span to ``spool_dir`` in its own ``.jsonl.done`` file; return its id.

    ``fields`` override any span field (``type``, ``input``, ``metadata``,
    ``model``, ``usage``, ``trace_id``...); ``duration_ms`` sets ``end_time``.
    """
    start = datetime.now(UTC)
    duration = timedelta(milliseconds=float(fields.pop("duration_ms", 0.0)))
    record: dict[str, Any] = {
        "v": 1, "id": new_id(), "trace_id": new_id(), "parent_span_id": None,
        "name": name, "type": "general", "start_time": start, "end_time": start + duration,
        "last_updated_at": start + duration, "agent_name": agent,
        "input": {"text": "span-sidecar emit"}, "metadata": {"emitted_by": "span-sidecar emit"},
    }
    record.update(fields)
    line = dumps_line(record)
    span_id = _checked_id(line)
    with SpoolWriter(spool_dir, agent) as writer:
        if not writer.write_line(line):
            raise OSError(f"could not write to spool {spool_dir}: {writer.stats().last_error}")
    return span_id if span_id is not None else str(record["id"])


def _checked_id(line: bytes) -> str | None:
    """The span's id after the daemon's own parser accepted the line; None
    when only the client is installed (no parser to check with)."""
    try:
        from sidecar.records import Rejected, SpanRecord, parse_line
    except ImportError:
        return None
    parsed = parse_line(line[:-1])
    if isinstance(parsed, Rejected):
        raise ValueError(f"not a valid span: {parsed.reason}")
    if not isinstance(parsed, SpanRecord):
        raise ValueError(f"not a span: kind={parsed.kind!r}")
    return str(parsed.id)
