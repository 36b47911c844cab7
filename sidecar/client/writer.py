"""The spool writer: one complete JSON line per ``os.write``, never an exception.

The agent's cost per record is one ``orjson.dumps`` and one ``write(2)`` to a
file opened with ``O_APPEND``; there is no thread, queue or network. Each
process owns its files (``<agent>-<host>-<pid>-<seq>.jsonl``), rotates them by
size and age, and renames a file it will never touch again to ``.jsonl.done``
(see docs/spool.md). A failing disk costs the agent a dropped record,
counted in ``stats()`` and logged once, never an exception.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from sidecar.client import lifecycle
from sidecar.client.fsutil import fsync_dir
from sidecar.client.serialize import dumps_line


class Clock(Protocol):
    """What the writer reads of a clock (the daemon's ``sidecar.clock`` fits);
    defined here so that the client imports nothing outside ``sidecar.client``."""

    def monotonic(self) -> float: ...

FsyncPolicy = Literal["never", "interval", "always"]

_log = logging.getLogger("sidecar.client")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
_RETRY_OPEN_S = 1.0
_MAX_NAME_TRIES = 10_000


@dataclass(frozen=True, slots=True)
class WriterStats:
    """What a writer did so far (this process only; a forked child starts at 0)."""

    path: str | None
    records_written: int
    bytes_written: int
    records_dropped: int
    files_done: int
    last_error: str | None


def safe_name_part(text: str) -> str:
    """A file-name-safe form of an agent or host name (``-`` separates parts)."""
    return _UNSAFE.sub("_", text).strip("_.")[:64] or "agent"


class SpoolWriter:
    """Appends complete JSON lines to this process's current spool file.

    Safe to share between threads; after ``fork()`` the child writes its own
    file (its pid is in the name). ``write`` returns False, and counts a drop,
    when the record could not be written; it never raises.
    """

    def __init__(
        self,
        spool_dir: str | os.PathLike[str],
        agent_name: str,
        *,
        max_bytes: int = 32 * 1024 * 1024,
        max_age_s: float = 300.0,
        fsync: FsyncPolicy = "never",
        fsync_interval_s: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.agent_name = agent_name
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._fsync: FsyncPolicy = fsync if fsync in ("never", "interval", "always") else "never"
        self._fsync_interval_s = fsync_interval_s
        # time.monotonic itself unless a test injects a clock: one C call per write
        self._now = clock.monotonic if clock is not None else time.monotonic
        self._host = safe_name_part(socket.gethostname())
        self._reset_process_state()
        lifecycle.track(self)

    def _reset_process_state(self) -> None:
        self._lock = threading.Lock()
        self._fd = -1
        self._path: str | None = None
        self._seq = 0
        self._size = 0
        self._rotate_at = 0.0
        self._synced_at = 0.0
        self._retry_open_at = 0.0
        self._closed = False
        self._warned = False
        self._written = self._bytes = self._dropped = self._done = 0
        self._last_error: str | None = None

    # -- the hot path -------------------------------------------------------

    def write(self, record: Mapping[str, Any]) -> bool:
        """Serialise ``record`` as one JSON line and append it; never raises."""
        try:
            line = dumps_line(record)
        except Exception as exc:
            return self._drop(f"serialize: {type(exc).__name__}: {exc}")
        return self._append(line)

    def write_line(self, line: bytes) -> bool:
        """Append one already serialised line, which must end with its only ``\\n``."""
        if not line.endswith(b"\n") or line.count(b"\n") != 1:
            return self._drop("write_line: not exactly one line ending with \\n")
        return self._append(line)

    def _append(self, line: bytes) -> bool:
        try:
            with self._lock:
                fd = self._fd
                if fd < 0 or self._size + len(line) > self._max_bytes or (
                    self._now() >= self._rotate_at
                ):
                    fd = self._fd_for(len(line))
                    if fd < 0:
                        return self._drop(self._last_error or "no spool file")
                try:
                    n = os.write(fd, line)
                except OSError as exc:
                    return self._drop(f"write {self._path}: {exc.strerror or exc}")
                self._size += n
                if n != len(line):
                    path = self._path
                    self._after_short_write(fd)
                    return self._drop(f"write {path}: short write ({n} of {len(line)} bytes)")
                self._written += 1
                self._bytes += n
                if self._fsync != "never":
                    self._maybe_sync(fd)
                return True
        except Exception as exc:  # whatever went wrong, not into the agent
            return self._drop(f"write: {type(exc).__name__}: {exc}")

    def _fd_for(self, size: int) -> int:
        """The slow path: closed, no file yet, or time to rotate."""
        if self._closed:
            self._last_error = "writer is closed"
            return -1
        if self._fd >= 0:
            full = self._size > 0 and self._size + size > self._max_bytes
            if full or self._now() >= self._rotate_at:
                self._finish_file()
        if self._fd < 0 and self._now() >= self._retry_open_at:
            self._open_next()
        return self._fd

    def _maybe_sync(self, fd: int) -> None:
        now = self._now()
        if self._fsync == "always" or now - self._synced_at >= self._fsync_interval_s:
            self._synced_at = now
            try:
                os.fdatasync(fd)
            except OSError as exc:
                self._note_failure(f"fdatasync {self._path}: {exc.strerror or exc}")

    def _after_short_write(self, fd: int) -> None:
        # The file now ends in a partial line. End it, so the sidecar quarantines
        # it as one bad line rather than joining it to the next record, then
        # start a new file. (Truncating is not allowed: docs/spool.md.)
        try:
            os.write(fd, b"\n")
            self._size += 1
        except OSError:
            pass
        self._finish_file()

    # -- files ----------------------------------------------------------------

    def _open_next(self) -> None:
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            prefix = f"{safe_name_part(self.agent_name)}-{self._host}-{os.getpid()}"
            for _ in range(_MAX_NAME_TRIES):
                path = os.path.join(self.spool_dir, f"{prefix}-{self._seq}.jsonl")
                self._seq += 1
                if os.path.lexists(path + ".done"):
                    continue  # an earlier process with our pid: never append to its files
                try:
                    # 0640: the agent's user and the sidecar's group only (spans hold prompts).
                    self._fd = os.open(path, _OPEN_FLAGS, 0o640)
                except FileExistsError:
                    continue
                self._path, self._size = path, 0
                self._synced_at = self._now()
                self._rotate_at = self._synced_at + self._max_age_s
                if self._fsync != "never":
                    fsync_dir(self.spool_dir)
                return
            raise OSError(errno.EEXIST, f"no free file name for {prefix}")
        except OSError as exc:
            self._retry_open_at = self._now() + _RETRY_OPEN_S
            self._note_failure(f"open in {self.spool_dir}: {exc.strerror or exc}")

    def _finish_file(self) -> None:
        fd, path = self._fd, self._path
        self._fd, self._path = -1, None
        if fd < 0 or path is None:
            return
        try:
            if self._fsync != "never":
                os.fdatasync(fd)
        except OSError as exc:
            self._note_failure(f"fdatasync {path}: {exc.strerror or exc}")
        finally:
            _close_quietly(fd)
        try:
            os.rename(path, path + ".done")
            self._done += 1
            if self._fsync != "never":
                fsync_dir(self.spool_dir)
        except OSError as exc:
            self._note_failure(f"rename {path}: {exc.strerror or exc}")

    # -- lifecycle ----------------------------------------------------------

    def rotate(self) -> None:
        """Mark the current file done now; the next write starts a new one."""
        with self._lock:
            self._finish_file()

    def close(self) -> None:
        """Rename the current file to ``.jsonl.done``; later writes are dropped."""
        with self._lock:
            self._closed = True
            self._finish_file()

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def stats(self) -> WriterStats:
        """A snapshot of this writer's counters."""
        return WriterStats(self._path, self._written, self._bytes, self._dropped, self._done,
                           self._last_error)

    # -- failures -------------------------------------------------------------

    def _drop(self, reason: str) -> bool:
        self._dropped += 1
        self._note_failure(reason)
        return False

    def _note_failure(self, reason: str) -> None:
        self._last_error = reason
        if not self._warned:
            self._warned = True
            _log.warning(
                "client.spool.write_failed: %s (agent=%s); later failures are only counted "
                "in SpoolWriter.stats()", reason, self.agent_name,
            )

    @property
    def lock(self) -> threading.Lock:
        """Held by every write and rotation (and across ``fork()``)."""
        return self._lock

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's file; the next write opens our own."""
        fd = self._fd
        closed = self._closed
        self._reset_process_state()
        self._closed = closed
        if fd >= 0:
            _close_quietly(fd)  # the parent's file stays the parent's


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:  # EIO on close: the data is as written as it will get
        pass


