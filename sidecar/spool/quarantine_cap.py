"""The quarantine's size cap (``quarantine.max_bytes``): drop the oldest entries.

Bad input must never fill the state directory (an evicted pod loses its
spool when a small ``emptyDir`` fills). When a sink's file grows past the
cap, the newest entries that fit in three quarters of it are copied to a new
file that replaces the old one atomically (temp file, fsync, rename, fsync of
the directory); the quarter left free means one trim per many entries, not
one per entry. The newest entry is always kept, whatever its size. The copy
goes in chunks: memory stays small whatever the cap.

The caller holds the writer's lock on the old file: ``replay-quarantine``
(which takes the file under the same lock) either finished before, or finds
the new file at the path and takes that one.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from sidecar.client.fsutil import fsync_dir
from sidecar.spool.files import count_newlines

CHUNK = 1 << 20
KEEP_FRACTION = (3, 4)


@dataclass(frozen=True, slots=True)
class Dropped:
    entries: int
    bytes: int


def trim(fd: int, path: Path, max_bytes: int, newest: int) -> Dropped:
    """Replace ``path`` (open as ``fd``) by its newest entries within 3/4 of
    ``max_bytes``, keeping at least the last ``newest`` bytes (one entry)."""
    own = os.fstat(fd)  # the writer's descriptor is append-only: read through another
    size = own.st_size
    keep = max_bytes * KEEP_FRACTION[0] // KEEP_FRACTION[1]
    if size <= keep:
        return Dropped(0, 0)
    rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(rfd)
        if (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino):
            return Dropped(0, 0)  # replaced meanwhile: the writer reopens first
        cut = min(_line_start_from(rfd, size - keep, size), size - newest)
        if cut <= 0:
            return Dropped(0, 0)
        entries, _ = count_newlines(rfd, 0, cut)
        _replace_with_tail(rfd, path, cut, size)
    finally:
        os.close(rfd)
    return Dropped(entries, cut)


def _line_start_from(fd: int, pos: int, size: int) -> int:
    """The first entry boundary at or after ``pos`` (``size`` when none)."""
    at = pos - 1  # a boundary at pos means the byte before it is a newline
    while at < size:
        chunk = os.pread(fd, min(CHUNK, size - at), at)
        if not chunk:
            break
        nl = chunk.find(b"\n")
        if nl >= 0:
            return at + nl + 1
        at += len(chunk)
    return size


def _replace_with_tail(fd: int, path: Path, start: int, end: int) -> None:
    tmp = path.with_name(path.name + ".trim")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            at = start
            while at < end:
                chunk = os.pread(fd, min(CHUNK, end - at), at)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
                at += len(chunk)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, path)
    except OSError:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)  # frees what the partial copy took
        raise
    fsync_dir(path.parent)
