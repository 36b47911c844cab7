"""The drain at a stop: what was in the spool when the signal came gets shipped.

In Kubernetes the spool is an ``emptyDir`` that dies with the pod, and the
native sidecar gets SIGTERM right after the agent wrote its last spans and
exited: there is no next start, so a drain cannot leave to a later run what
it has not seen yet. At the stop each pipeline rescans the spool once and
notes every tracked file's size (``SpoolSnapshot``), reads every complete
line up to those sizes (lines appended later may come along in the same
reads, but are never waited for), ships them, and reports what it could not:

- a sink that cannot be reached (its breaker open, or its first attempt in
  the drain failed) is skipped at once with its backlog reported: waiting
  for it would only hold the pod's exit, and it gets nothing in the time;
- a drain cut short by ``shutdown.drain_timeout_s`` reports what each sink
  was left, and the process exits with ``EXIT_DRAIN_INCOMPLETE`` so that the
  platform sees it (the contract's "exit non-zero").

``drain()`` is the bounded wait for tasks at a stop, shared by the app and
the daemon shell.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from sidecar.exit_codes import EXIT_DRAIN_INCOMPLETE, EXIT_OK
from sidecar.spool.tailer import Line, SpoolReader

LeftReason = Literal["unreachable", "timeout"]


@dataclass(slots=True)
class SpoolSnapshot:
    """The spool as one reader saw it at the stop: each file's size then.

    ``complete`` once every complete line up to those sizes was read (a
    trailing partial line of a file still open for writing is not a line).
    """

    targets: dict[tuple[int, int], int]
    complete: bool = False
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.total = sum(self.targets.values())

    @classmethod
    def take(cls, reader: SpoolReader) -> SpoolSnapshot:
        """Rescan (new files, renames to ``.done``, growth) and note the sizes."""
        reader.scan()
        return cls({key: f.size for key, f in reader.files.items()})

    def progress(self, reader: SpoolReader) -> int:
        """Bytes read toward the sizes noted: reaches ``total`` when all is read.
        A file no longer tracked was acknowledged and removed (or given up by
        the spool quota): it counts as read."""
        files = reader.files
        return sum(min(files[key].read_pos, size) if key in files else size
                   for key, size in self.targets.items())

    async def read(self, reader: SpoolReader, read: Callable[[], list[Line]],
                   take: Callable[[list[Line]], Awaitable[None]],
                   skipped: Callable[[], bool]) -> None:
        """``read`` lines and ``take`` them until every complete line up to the
        sizes noted is taken, or the sink is ``skipped``. A read may bring lines
        appended since, but only progress toward those sizes keeps the loop
        going, so a writer that goes on appending cannot hold the drain."""
        stalled = 0
        while not skipped() and stalled <= len(reader.files):
            before = self.progress(reader)
            if before >= self.total:
                break
            lines = read()
            if not lines:
                break  # what is left of the sizes is no complete line
            await take(lines)
            stalled = 0 if self.progress(reader) > before else stalled + 1
        self.complete = not skipped()

    def verdict(self, sink: str, reader: SpoolReader, skipped: str | None,
                cut: bool) -> SinkLeft:
        """What ``sink`` was left: its backlog when the drain skipped it as
        unreachable (``skipped``: why), or when ``cut`` by the timeout."""
        files, size = self.left(reader)
        if skipped is not None:
            return SinkLeft(sink, "unreachable", files, size, skipped)
        if cut and size:
            return SinkLeft(sink, "timeout", files, size)
        return SinkLeft(sink, None)

    def left(self, reader: SpoolReader) -> tuple[int, int]:
        """(files, bytes) of what was noted and is not acknowledged by the sink."""
        files = size_left = 0
        for key, size in self.targets.items():
            f = reader.files.get(key)
            if f is None:
                continue
            # Once read completely, an unfinished last line is not owed.
            end = min(size, f.read_pos) if self.complete else size
            if end > f.acked:
                files += 1
                size_left += end - f.acked
        return files, size_left


@dataclass(frozen=True, slots=True)
class SinkLeft:
    """What one sink's drain left in the spool, and why."""

    sink: str
    reason: LeftReason | None  # None: nothing left
    files: int = 0
    bytes: int = 0
    detail: str = ""  # the failure that made the sink unreachable

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sink": self.sink, "reason": self.reason,
                               "files": self.files, "bytes": self.bytes}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True, slots=True)
class DrainReport:
    """Every sink's drain. Drained when every reachable sink got everything:
    an unreachable sink's backlog is reported but does not fail the drain
    (there was nothing it could have received in the time)."""

    sinks: tuple[SinkLeft, ...]
    seconds: float = 0.0

    @property
    def drained(self) -> bool:
        return not any(s.reason == "timeout" for s in self.sinks)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.drained else EXIT_DRAIN_INCOMPLETE

    def fields(self) -> dict[str, Any]:
        """The ``app.drain.finished`` log fields."""
        return {"drained": self.drained, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 3),
                "left": [s.fields() for s in self.sinks if s.reason is not None]}


async def drain(tasks: Collection[asyncio.Task[Any]], timeout_s: float,
                grace_s: float = 0.0) -> bool:
    """Wait up to ``timeout_s`` for ``tasks`` to finish; True when they all did.

    The ones still running are cancelled and given ``grace_s`` more to
    unwind. That wait is bounded too: a task stuck in a driver's cleanup is
    left behind (the process exit tears it down).
    """
    if not tasks:
        return True
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    if pending and grace_s > 0:
        await asyncio.wait(pending, timeout=grace_s)
    return not pending
