"""Size-or-time batches of parsed lines, with the spool positions they reach."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sidecar.records import Record
from sidecar.spool.tailer import Line, TrackedFile


@dataclass(slots=True)
class Batch:
    records: list[Record] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)  # lines[i] holds records[i]
    # Per file, the end of the last line this batch covers (parsed or quarantined).
    ends: dict[tuple[int, int], tuple[TrackedFile, int, int]] = field(default_factory=dict)
    bytes: int = 0  # raw bytes of the lines held: memory is bounded by this too
    started: float = 0.0
    sealed_at: float = 0.0
    # A batch may be handed to a streaming sink while it is still filling:
    # ``grown`` wakes the reader of ``stream()``, ``sealed`` ends it.
    sealed: asyncio.Event = field(default_factory=asyncio.Event)
    grown: asyncio.Event = field(default_factory=asyncio.Event)
    queued: bool = False  # handed to the consumer (a streaming sink's: maybe still filling)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def empty(self) -> bool:
        return not self.ends

    def seal(self) -> None:
        self.sealed.set()
        self.grown.set()

    async def stream(self) -> AsyncIterator[Record]:
        """The records as they are added, until the batch is sealed."""
        i = 0
        while True:
            while i < len(self.records):
                yield self.records[i]
                i += 1
            if self.sealed.is_set():
                return
            self.grown.clear()
            await self.grown.wait()


class Batcher:
    """Collects lines until ``max_records`` or ``max_wait_s`` after the first."""

    def __init__(self, max_records: int, max_wait_s: float, max_bytes: int = 8 << 20) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_wait_s = max_wait_s
        self._batch = Batch()

    def add(self, line: Line, record: Record | None, now: float) -> None:
        """Add a parsed record, or only the position of a quarantined line."""
        batch = self._batch
        if batch.empty:
            batch.started = now
        if record is not None:
            batch.records.append(record)
            batch.lines.append(line)
            batch.bytes += len(line.raw)
        batch.ends[line.file.key] = (line.file, line.gen, line.end)

    @property
    def full(self) -> bool:
        batch = self._batch
        return len(batch.records) >= self.max_records or batch.bytes >= self.max_bytes

    def time_left(self, now: float) -> float | None:
        """Seconds until the pending batch is due; None when there is none."""
        if self._batch.empty:
            return None
        return max(0.0, self._batch.started + self.max_wait_s - now)

    @property
    def current(self) -> Batch:
        return self._batch

    def take(self) -> Batch:
        """The pending batch, sealed; a new one starts."""
        batch, self._batch = self._batch, Batch()
        batch.seal()
        return batch
