"""``span-sidecar emit``: write complete test spans, as an agent would.

Unlike the agent-facing API this raises, because its caller is a command that
must report failure: ``ValueError`` when the fields make an invalid span (each
line is checked with the daemon's ``sidecar.records.parse_line``, imported
only here and only when the daemon is installed: the client distribution
alone writes the spans unchecked), and ``OSError`` when the spool cannot be
written. All the spans of one call go into one file, finished (renamed to
``.jsonl.done``) before the call returns, whose path is returned so that a
user can see where they went.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sidecar.client.ids import new_id
from sidecar.client.serialize import dumps_line
from sidecar.client.writer import SpoolWriter


@dataclass(frozen=True, slots=True)
class Emitted:
    """What ``emit_test_spans`` wrote: the span ids, in order, and the one file."""

    ids: tuple[str, ...]
    path: str


def emit_test_spans(
    spool_dir: str | os.PathLike[str], name: str, agent: str, count: int = 1, **fields: Any
) -> Emitted:
    """Write ``count`` spans to ``spool_dir`` in one ``.jsonl.done`` file.

    ``fields`` override any span field (``type``, ``input``, ``metadata``,
    ``model``, ``usage``...); ``duration_ms`` sets ``end_time``. Each span is
    the root of its own trace unless ``trace_id`` is given.
    """
    lines = [_line(name, agent, dict(fields)) for _ in range(max(1, count))]
    ids = tuple(_checked_id(line, record_id) for line, record_id in lines)
    data = [line for line, _ in lines]
    # One file whatever the count: no rotation by size or age while writing.
    with SpoolWriter(spool_dir, agent, max_bytes=sum(map(len, data)) + 1,
                     max_age_s=float("inf")) as writer:
        for line in data:
            if not writer.write_line(line):
                raise OSError(f"could not write to spool {spool_dir}: "
                              f"{writer.stats().last_error}")
        path = writer.stats().path
    if path is None:  # pragma: no cover - every write succeeded, so a file is open
        raise OSError(f"could not write to spool {spool_dir}")
    return Emitted(ids, path + ".done")


def emit_test_span(
    spool_dir: str | os.PathLike[str], name: str, agent: str, **fields: Any
) -> str:
    """Write one span to ``spool_dir`` in its own ``.jsonl.done`` file; return its id."""
    return emit_test_spans(spool_dir, name, agent, 1, **fields).ids[0]


def _line(name: str, agent: str, fields: dict[str, Any]) -> tuple[bytes, str]:
    start = datetime.now(UTC)
    duration = timedelta(milliseconds=float(fields.pop("duration_ms", 0.0)))
    record: dict[str, Any] = {
        "v": 1, "id": new_id(), "trace_id": new_id(), "parent_span_id": None,
        "name": name, "type": "general", "start_time": start, "end_time": start + duration,
        "last_updated_at": start + duration, "agent_name": agent,
        "input": {"text": "span-sidecar emit"}, "metadata": {"emitted_by": "span-sidecar emit"},
    }
    record.update(fields)
    return dumps_line(record), str(record["id"])


def _checked_id(line: bytes, record_id: str) -> str:
    """The span's id after the daemon's own parser accepted the line; the
    record's own when only the client is installed (no parser to check with)."""
    try:
        from sidecar.records import Rejected, SpanRecord, parse_line
    except ImportError:
        return record_id
    parsed = parse_line(line[:-1])
    if isinstance(parsed, Rejected):
        raise ValueError(f"not a valid span: {parsed.reason}")
    if not isinstance(parsed, SpanRecord):
        raise ValueError(f"not a span: kind={parsed.kind!r}")
    return str(parsed.id)
