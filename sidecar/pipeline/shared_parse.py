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
parses for itself, as before, and leaves nothing (the other read past).
An entry goes once every other pipeline has taken it. A read in bulk
shares nothing (``SinkPipeline._take``): in a backlog the sharing found
next to nothing and cost ~7 % more instructions a span.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from sidecar.policies import Policies, SampledOut
from sidecar.policies.stage import Found
from sidecar.records import Record, Rejected
from sidecar.spool.files import Line

# ~10 s of lines at 100 spans/s; 1,024 agent spans' entries are ~2.5 MB (tracemalloc).
CAPACITY = 1024
FILES = 1024  # files whose furthest decided line is remembered


class Decided(msgspec.Struct, gc=False):
    """What the first pipeline made of a line. A struct (C init, one a line
    read) untracked by the cyclic collector: it refers to no container
    that could refer back to it."""

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
        # Ordered, the oldest first: dropping a plain dict's first entry again
        # and again is not O(1) (iterating skips the deleted slots before it).
        self._entries: OrderedDict[tuple[int, int, int], Decided] = OrderedDict()
        # (dev, ino, generation) -> the end of the furthest line left here:
        # a pipeline deciding a line before it is behind the one that left
        # it, which read past that line and will not come back for it.
        self._ahead: OrderedDict[tuple[int, int, int], int] = OrderedDict()
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
        """Leave ``decided`` for the other pipelines, unless one of them read
        past the line already (then this pipeline is the one behind: at a
        backlog, every line it left would only push out the leader's)."""
        if self.readers < 2:
            return
        f = line.file
        place = (f.dev, f.ino, line.gen)
        ahead = self._ahead
        if line.offset < ahead.get(place, 0):
            return
        ahead[place] = line.end
        ahead.move_to_end(place)
        if len(ahead) > FILES:
            ahead.popitem(last=False)
        entries = self._entries
        while len(entries) >= self.capacity:
            entries.popitem(last=False)  # the oldest
            self.dropped += 1
        decided.left = self.readers - 1
        entries[(line.file.dev, line.file.ino, line.offset)] = decided
