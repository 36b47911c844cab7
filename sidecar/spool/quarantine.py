"""The dead-letter file: lines that will never ship to a sink, and why.

One JSONL file per sink (``state_dir/quarantine/<sink>.jsonl``), so that
``replay-quarantine --sink`` re-ships to the sink that refused. Each entry
holds the raw line (``raw``, or ``raw_b64`` when it is not UTF-8), the source
file and offset, the reason, and the time. It is flushed and fsynced before
the checkpoint passes the line, so a quarantined line is never lost.
"""

from __future__ import annotations

import base64
import fcntl
import os

import orjson
import structlog

from sidecar.clock import Clock
from sidecar.fsutil import fsync_dir
from sidecar.spool.state import StateDir

log = structlog.get_logger("sidecar.quarantine")

# A line larger than this is kept by its head only (the source file still
# holds it whole until every sink has passed it).
MAX_RAW_BYTES = 64 << 10


class Quarantine:
    def __init__(self, state: StateDir, sink: str, clock: Clock) -> None:
        self.dir = state.quarantine
        self.path = state.quarantine_file(sink)
        self.sink = sink
        self.clock = clock
        self._fd: int | None = None
        self._dirty = False

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_dir(self.dir)  # the file's name is durable too

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None

    def put(self, raw: bytes, source: str, offset: int, reason: str,
            size: int | None = None) -> None:
        """Append one entry (not yet durable: ``sync`` before checkpointing)."""
        if self._fd is None:
            self.open()
        assert self._fd is not None
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
        self._append(orjson.dumps(entry) + b"\n")
        self._dirty = True
        log.warning("quarantine.record.stored", sink=self.sink, source=source,
                    offset=offset, reason=reason[:300])

    def restore(self, entry: bytes) -> None:
        """Put back, byte for byte, an entry that could not be decoded (replay)."""
        if self._fd is None:
            self.open()
        self._append(entry.rstrip(b"\n") + b"\n")
        self._dirty = True

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
                    return
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            self.close()
            self.open()

    def _is_current(self) -> bool:
        assert self._fd is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def sync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False


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
