"""Reading a spool back the way the sidecar will: complete lines, parse_line, JSON Schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker  # type: ignore[import-untyped]

from sidecar.records import Rejected, parse_line
from sidecar.schema import Record, json_schema, validate

# jsonschema checks "date-time" only with an optional package; the contract's
# rule (RFC 3339 with an offset) is short enough to state here.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE
)
_formats = FormatChecker()
_formats.checks("date-time")(lambda value: not isinstance(value, str)
                             or _RFC3339.fullmatch(value) is not None)
SCHEMA = Draft202012Validator(json_schema(), format_checker=_formats)


def spool_files(spool: Path) -> list[Path]:
    """The spool files a writer made (.jsonl and .jsonl.done), oldest name first."""
    return sorted(p for p in spool.iterdir() if p.name.endswith((".jsonl", ".jsonl.done")))


def spool_lines(spool: Path, *, allow_partial_tail: bool = False) -> list[bytes]:
    """Every complete line of every spool file (without its newline)."""
    lines: list[bytes] = []
    for path in spool_files(spool):
        data = path.read_bytes()
        complete, _, tail = data.rpartition(b"\n")
        assert allow_partial_tail or tail == b"", f"{path.name} ends in a partial line"
        lines.extend(complete.split(b"\n") if complete else [])
    return lines


def check_line(line: bytes, *, schema: bool = True) -> Record:
    """The record of one line, which must pass parse_line and the published schema.

    Returned as the schema's model (free-form fields decoded, for comparing).
    The schema check costs ~1 ms a line; bulk tests of thousands of lines skip it.
    """
    parsed = parse_line(line)
    assert not isinstance(parsed, Rejected), f"{parsed.reason}: {line[:300]!r}"
    record = validate(line)
    if not schema:
        return record
    errors = [e.message for e in SCHEMA.iter_errors(json.loads(line))]
    assert not errors, f"schema: {errors[:3]}: {line[:300]!r}"
    return record


def spool_records(spool: Path, *, schema: bool = True, **kwargs: Any) -> list[Record]:
    """All records of the spool, each checked by ``check_line``."""
    return [check_line(line, schema=schema) for line in spool_lines(spool, **kwargs)]
