"""Builders shared by the core unit tests: records, spool files, readers, lines."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from sidecar.clock import Clock, SystemClock
from sidecar.config.settings import Settings
from sidecar.policies import PolicyStage
from sidecar.spool.checkpoints import FileMark
from sidecar.spool.tailer import Line, SpoolReader, TrackedFile
from tests.support import append  # noqa: F401  (re-exported for the core tests)

PATTERNS = ("*.jsonl", "*.jsonl.done")


def stage_of(settings: Settings, environment: str = "") -> PolicyStage:
    """The policy stage of these settings, as the app builds it."""
    return PolicyStage(settings.sampling, settings.spans, environment,
                       opik_api_key=settings.opik.api_key)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def span(i: int = 0, **fields: Any) -> dict[str, Any]:
    """A valid span record (no ``kind``: spans are the default)."""
    start = T0 + timedelta(seconds=i)
    rec: dict[str, Any] = {
        "id": str(uuid.uuid4()), "trace_id": str(uuid.uuid4()), "name": f"step-{i}",
        "start_time": start.isoformat(), "end_time": (start + timedelta(seconds=1)).isoformat(),
    }
    rec.update(fields)
    return rec


def trace(**fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": "trace", "id": str(uuid.uuid4()), "name": "run",
                           "start_time": T0.isoformat()}
    rec.update(fields)
    return rec


def feedback(**fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": "feedback", "target": "span", "id": str(uuid.uuid4()),
                           "name": "quality", "value": 0.5}
    rec.update(fields)
    return rec


def dumps(rec: Any) -> bytes:
    return orjson.dumps(rec)


def numbered(n: int, start: int = 0, pad: int = 0) -> list[bytes]:
    """Distinct complete lines (with their newline), ``pad`` filler bytes each."""
    return [orjson.dumps({"n": i, "pad": "x" * pad}) + b"\n" for i in range(start, start + n)]


def make_reader(spool: Path, marks: dict[tuple[int, int], FileMark] | None = None, *,
                max_line: int = 1 << 20, chunk: int = 1 << 16, sink: str = "test",
                clock: Clock | None = None) -> SpoolReader:
    return SpoolReader(spool, PATTERNS, max_line, chunk, marks or {}, sink, clock or SystemClock())


async def read_all(reader: SpoolReader, max_lines: int = 10_000, *,
                   scan: bool = True) -> list[Line]:
    """Every line available now (scan once, then read until a read returns nothing)."""
    if scan:
        reader.scan()
    out: list[Line] = []
    while batch := reader.read(max_lines):
        out.extend(batch)
    return out


def ack_all(reader: SpoolReader, lines: Iterable[Line]) -> None:
    for line in lines:
        reader.ack(line.file, line.gen, line.end)


def offsets(lines: Iterable[Line]) -> list[tuple[int, int]]:
    return [(line.offset, line.end) for line in lines]


def expected_offsets(chunks: Iterable[bytes], start: int = 0) -> list[tuple[int, int]]:
    out, pos = [], start
    for c in chunks:
        out.append((pos, pos + len(c)))
        pos += len(c)
    return out


def fake_file(ino: int, path: str = "f.jsonl") -> TrackedFile:
    """A tracked file that is never opened (for batching tests)."""
    return TrackedFile(dev=1, ino=ino, fd=-1, path=path, read_pos=0, acked=0)


def fake_line(f: TrackedFile, offset: int, raw: bytes = b"{}", gen: int = 0) -> Line:
    return Line(f, gen, offset, offset + len(raw) + 1, raw)
