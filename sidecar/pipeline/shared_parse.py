"""Lines parsed once for every sink's pipeline, when their readers go together.

Each sink's pipeline reads the spool on its own (its own positions,
checkpoint and quarantine), so with two sinks every line was parsed and
passed through the policy stage twice. At a trickle both readers take the
same few lines at each wake-up, and that second pass was the largest cost
left in the readers: ~22 us a line read at 100 spans/s (cold code between
wake-ups), against ~6 us hot. So the first pipeline to take a line leaves
what it decided here and the others take it, as long as they come soon.

Exact, not approximate: an entry is found by the file's identity and the
line's offset and used only when the bytes are the ones the taker read
(a truncated or replaced file holds other bytes at the same offset) and the
policy stage has not been reconfigured since (a reload gives new decisions).
Bounded: at most ``capacity`` entries, the oldest dropped first; a reader
far behind the others (a backlog, an open breaker) finds nothing and
parses for itself, as before. An entry goes once every other pipeline has
taken it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.policies import Policies, SampledOut
from sidecar.policies.stage import Found
from sidecar.records import Record, Rejected
from sidecar.spool.files import Line

# ~10 s of lines at 100 spans/s, a few MB of records at most.
CAPACITY = 1024


@dataclass(slots=True)
class Decided:
    """What the first pipeline made of a line."""

    raw: bytes
    policies: Policies | None  # the compiled policies it was decided with
    parsed: Record | Rejected
    result: Record | Rejected | SampledOut
    found: Found | None  # what the policy stage masked and truncated: counted once
    left: int  # pipelines still to take it


class SharedParses:
    """One per daemon, shared by its ``readers`` sink pipelines."""

    def __init__(self, readers: int, capacity: int = CAPACITY) -> None:
        self.readers = readers
        self.capacity = capacity
        self._entries: dict[tuple[int, int, int], Decided] = {}
        self.taken = self.dropped = 0  # for the tests and benchmarks

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, line: Line) -> bool:
        """Whether ``line`` is here to take (its bytes unchecked: a hint)."""
        return (line.file.dev, line.file.ino, line.offset) in self._entries

    def take(self, line: Line, policies: Policies | None) -> Decided | None:
        """The decision for ``line`` made with ``policies``, if another pipeline left it."""
        key = (line.file.dev, line.file.ino, line.offset)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.raw != line.raw or entry.policies is not policies:
            del self._entries[key]  # stale: other bytes, or decided before a reload
            return None
        entry.left -= 1
        if entry.left <= 0:
            del self._entries[key]
        self.taken += 1
        return entry

    def put(self, line: Line, decided: Decided) -> None:
        """Leave ``decided`` for the other pipelines."""
        if self.readers < 2:
            return
        entries = self._entries
        while len(entries) >= self.capacity:
            del entries[next(iter(entries))]  # the oldest
            self.dropped += 1
        decided.left = self.readers - 1
        entries[(line.file.dev, line.file.ino, line.offset)] = decided
