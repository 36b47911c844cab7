"""Spool files as the readers know them: identity, positions, lines, discovery.

A file is known by device + inode + a fingerprint of its first bytes, never
by its name. A reader holds a descriptor only while it reads the file
(``fd`` is -1 otherwise; see ``sidecar/spool/tailer.py``); each open checks
that the name still leads to the same inode and that the fingerprint still
matches, so a reused inode or a rewritten file never picks up an old offset.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

FINGERPRINT_BYTES = 1024
MAX_SEEN = 32  # growth observations kept per file (older ones merge: lag errs high)
CLOSED = -1


@dataclass(eq=False, slots=True)
class TrackedFile:
    dev: int
    ino: int
    fd: int
    path: str
    read_pos: int  # the end of the last complete line handed out
    acked: int  # acknowledged by the sink (only ever trails read_pos)
    gen: int = 0  # bumped on truncation: acks of an older generation are void
    fp: str = ""
    fp_len: int = 0
    skip_from: int | None = None  # start of an over-long line being skipped
    skip_head: bytes = b""
    size: int = 0
    mtime: float = 0.0
    deleted: bool = False
    verified: bool = False  # opened once: its checkpoint mark was checked and applied
    stale: bool = False  # closed, and scan saw it change (grown, renamed, touched)
    drained_at: int = -1  # the size when a read last found nothing more to take
    # The fingerprint of what was read when it was last closed (up to
    # FINGERPRINT_BYTES of read_pos): a reopen checks it. ``fp`` (checkpoints)
    # covers acknowledged bytes only, and acknowledgements come after the close.
    head: str = ""
    head_len: int = 0
    # (size, wall time it was first seen): the bytes up to each size existed then.
    seen: list[tuple[int, float]] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    @property
    def is_open(self) -> bool:
        return self.fd != CLOSED

    def grew(self, size: int, now: float) -> None:
        """Note the file's size; the first time a size is seen dates its new bytes."""
        if size > (self.seen[-1][0] if self.seen else self.acked):
            self.seen.append((size, now))
            if len(self.seen) > MAX_SEEN:
                (_, t0), (s1, _) = self.seen[-3], self.seen[-2]
                self.seen[-3:-1] = [(s1, t0)]

    def acked_to(self, end: int) -> None:
        self.acked = end
        while self.seen and self.seen[0][0] <= end:
            self.seen.pop(0)

    def oldest_unacked(self) -> float | None:
        """When the oldest byte not yet acknowledged was first seen (None: all acked)."""
        return self.seen[0][1] if self.seen and self.size > self.acked else None


@dataclass(frozen=True, slots=True)
class FilePosition:
    """A snapshot of one tracked file, for the janitor and the spool figures."""

    dev: int
    ino: int
    path: str
    size: int
    mtime: float
    acked: int
    finished: bool  # its writer will never append again
    deleted: bool
    skipping: bool  # inside an over-long line: not acknowledged to its end


class Line(msgspec.Struct, gc=False):
    """One line of a spool file, as read. A struct, not a dataclass: one is
    made for every line a sink reads, and msgspec's ``__init__`` (C) takes
    ~90 ns where a slotted dataclass's takes ~290. Untracked by the cyclic
    collector: it refers to its file, which refers to no line."""

    file: TrackedFile
    gen: int
    offset: int
    end: int
    raw: bytes
    too_long: int = 0  # the full size, when the line exceeded the limit
    unfinished: bool = False  # the last bytes of a .done file, without their newline


def spool_files(spool_dir: Path, patterns: tuple[str, ...]) -> list[tuple[str, os.stat_result]]:
    """The regular files of the spool whose names match; nothing else is ever read
    (symlinks, fifos, directories and other names are ignored, never followed)."""
    try:
        entries = list(os.scandir(spool_dir))
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if not any(fnmatch.fnmatchcase(entry.name, p) for p in patterns):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((entry.path, st))
    return out


def is_finished(path: str, mtime: float, now: float, idle_done_after_s: float | None) -> bool:
    """Will a spool file's writer never append again? Renamed to ``.done``, or
    idle longer than ``idle_done_after_s`` (its writer died)."""
    if path.endswith(".done"):
        return True
    return idle_done_after_s is not None and now - mtime > idle_done_after_s


def fingerprint(fd: int, length: int) -> str:
    return hashlib.blake2b(os.pread(fd, length, 0), digest_size=16).hexdigest()


COUNT_CHUNK = 1 << 20


def count_newlines(fd: int, start: int = 0, end: int | None = None) -> tuple[int, bool]:
    """The newlines of an open file between two offsets (to its end without
    ``end``), read a chunk at a time; and whether the range ends inside a
    line (its last byte is not a newline). Used wherever lines are counted:
    the quota's dropped records, the quarantine's trimmed entries, ``status``."""
    count, last, at = 0, b"\n", start
    while end is None or at < end:
        chunk = os.pread(fd, COUNT_CHUNK if end is None else min(COUNT_CHUNK, end - at), at)
        if not chunk:
            break
        count += chunk.count(b"\n")
        last, at = chunk[-1:], at + len(chunk)
    return count, last != b"\n"
