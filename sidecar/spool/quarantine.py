"""The dead-letter file: lines that will never ship to a sink, and why.

One JSONL file per sink (``state_dir/quarantine/<sink>.jsonl``), so that
``replay-quarantine --sink`` re-ships to the sink that refused. Each entry
holds the raw line (``raw``, or ``raw_b64`` when it is not UTF-8), the source
file and offset, the reason, and the time. It is flushed and fsynced before
the checkpoint passes the line, so a quarantined line is never lost.

A write that fails for want of a resource (a full disk, ``ulimit -f``, the
file limit) is not an error: with the state directory's ``FaultTracker`` the
entry is held in memory, in order, and ``durable`` waits on the clock until
it is written and fsynced; the pipeline awaits that before it acknowledges
the batch, so the line is neither lost nor passed. What is held is bounded by
the pipeline's queue (the batches behind the one waiting).

Each sink's file is capped (``quarantine.max_bytes``): past it the oldest
entries are dropped (``sidecar/spool/quarantine_cap.py``), counted and logged,
so bad input cannot fill the state directory.
"""

from __future__ import annotations

import base64
import fcntl
import os
from collections import deque
from contextlib import suppress
from dataclasses import dataclass

import orjson
import structlog

from sidecar.client.fsutil import fsync_dir
from sidecar.clock import Clock
from sidecar.spool.faults import RETRY_S, is_resource_error
from sidecar.spool.quarantine_cap import trim
from sidecar.spool.state import StateDir

log = structlog.get_logger("sidecar.quarantine")

# A line larger than this is kept by its head only (the source file still
# holds it whole until every sink has passed it).
MAX_RAW_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class QuarantineStats:
    sink: str
    dropped_entries: int  # the oldest entries dropped by quarantine.max_bytes
    dropped_bytes: int
    held: int  # entries waiting for a resource fault to end


class Quarantine:
    def __init__(self, state: StateDir, sink: str, clock: Clock, *,
                 max_bytes: int | None = None) -> None:
        """``max_bytes``: ``quarantine.max_bytes`` (None: no cap, as for replay)."""
        self.dir = state.quarantine
        self.path = state.quarantine_file(sink)
        self.sink = sink
        self.clock = clock
        self.max_bytes = max_bytes
        self.faults = state.faults
        self.dropped_entries = self.dropped_bytes = 0
        self._fd: int | None = None
        self._dirty = False
        self._held: deque[bytes] = deque()  # entries a resource fault kept from the file

    def open(self) -> None:
        """Open (create) the file; a resource fault defers it to the next write."""
        try:
            self._open()
        except OSError as exc:
            if self.faults is None or not is_resource_error(exc):
                raise
            self.faults.failed("quarantine", self.sink, exc, op="open")

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fsync_dir(self.dir)  # the file's name is durable too
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            with suppress(OSError):  # what is not durable now was never acknowledged
                self.sync()
            os.close(self._fd)
            self._fd = None

    def put(self, raw: bytes, source: str, offset: int, reason: str,
            size: int | None = None) -> None:
        """Append one entry (not yet durable: ``sync`` or ``durable`` before
        checkpointing); a resource fault holds it back until ``durable``."""
        entry: dict[str, object] = {
            "sink": self.sink, "source": source, "offset": offset, "reason": reason,
            "size": len(raw) if size is None else size, "time": self.clock.wall(),
        }
        head = raw[:MAX_RAW_BYTES]
        try:
            entry["raw"] = head.decode("utf-8")
        except UnicodeDecodeError:
            entry["raw_b64"] = base64.b64encode(head).decode("ascii")
        if len(head) < (size or len(raw)):
            entry["truncated"] = True
        self._held.append(orjson.dumps(entry) + b"\n")
        self._write_held()
        log.warning("quarantine.record.stored", sink=self.sink, source=source,
                    offset=offset, reason=reason[:300], held=bool(self._held))

    def restore(self, entry: bytes) -> None:
        """Put back, byte for byte, an entry that could not be decoded (replay)."""
        self._held.append(entry.rstrip(b"\n") + b"\n")
        self._write_held()

    def _write_held(self) -> bool:
        """Write the held entries, oldest first; False when a resource fault
        stopped it (reported; without a tracker the error is raised)."""
        try:
            while self._held:
                if self._fd is None:
                    self._open()
                self._append(self._held[0])
                self._held.popleft()
                self._dirty = True
        except OSError as exc:
            if self.faults is None or not is_resource_error(exc):
                self._held.popleft()  # refused for good: the caller has the error
                raise
            self.faults.failed("quarantine", self.sink, exc, op="write")
            return False
        return True

    def _append(self, data: bytes) -> None:
        """Write under an exclusive lock, into the file now at ``path``.

        ``replay-quarantine`` takes the file by locking it, reading it and
        renaming it away: an entry written after that must go to a new file,
        never into the one it is about to delete.
        """
        while True:
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if self._is_current():
                    _write_whole(self._fd, data)
                    self._cap(len(data))
                    return
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._reopen()

    def _reopen(self) -> None:
        """The file was taken away (replay) or replaced (the cap): a new one."""
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            if self._dirty:
                os.fsync(fd)
                self._dirty = False
        finally:
            os.close(fd)
        self._open()

    def _is_current(self) -> bool:
        assert self._fd is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def _cap(self, newest: int) -> None:
        """Past ``max_bytes``, drop the oldest entries (never the newest one)."""
        if self.max_bytes is None or self._fd is None:
            return
        owner = f"{self.sink} cap"
        if os.fstat(self._fd).st_size <= self.max_bytes:
            return
        try:
            os.fsync(self._fd)  # what stays is durable before the file is replaced
            self._dirty = False
            dropped = trim(self._fd, self.path, self.max_bytes, newest)
        except OSError as exc:
            # The entry is written: only the cap waits (tried at the next entry).
            if self.faults is None or not is_resource_error(exc):
                raise
            self.faults.failed("quarantine", owner, exc, op="cap")
            return
        if self.faults is not None:
            self.faults.cleared("quarantine", owner)
        self.dropped_entries += dropped.entries
        self.dropped_bytes += dropped.bytes
        log.warning("quarantine.entries.dropped", sink=self.sink, entries=dropped.entries,
                    bytes=dropped.bytes, max_bytes=self.max_bytes, reason="quarantine_full")

    def sync(self) -> bool:
        """Write what is held and fsync. False: a resource fault stopped it
        (reported, tried again by ``durable``); without a tracker it raises."""
        if not self._write_held():
            return False
        try:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False
        except OSError as exc:
            if self.faults is None or not is_resource_error(exc):
                raise
            self.faults.failed("quarantine", self.sink, exc, op="fsync")
            return False
        if self.faults is not None:
            self.faults.cleared("quarantine", self.sink)
        return True

    async def durable(self) -> None:
        """Return once every entry put so far is written and fsynced, waiting
        out resource faults on the clock (the caller acknowledges after this)."""
        while not self.sync():
            await self.clock.sleep(RETRY_S)

    def stats(self) -> QuarantineStats:
        return QuarantineStats(self.sink, self.dropped_entries, self.dropped_bytes,
                               len(self._held))


def _write_whole(fd: int, data: bytes) -> None:
    """Append all of ``data`` or nothing: a write cut short by a full disk is
    taken back, so the file never holds a torn entry."""
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise


def raw_of(entry: dict[str, object]) -> bytes:
    """The raw line of a quarantine entry."""
    if "raw_b64" in entry:
        return base64.b64decode(str(entry["raw_b64"]))
    return str(entry.get("raw", "")).encode("utf-8")
