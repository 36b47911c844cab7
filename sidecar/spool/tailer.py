"""Reading the spool: discovery, file identity, offsets, complete lines.

Each sink has its own ``SpoolReader``, so a sink that is down holds nothing
in memory and the other reads on at its own pace. A file is known by
device + inode + a fingerprint of its first bytes, never by its name: a
rename to ``.done`` keeps its offset. The reader keeps every file it tracks
open, so while it runs the inode cannot be reused under it (a reused inode
picking up a stale offset is how other shippers lost data silently); across
restarts the fingerprint catches reuse.

Lag in seconds is the age of the oldest byte not yet acknowledged: each file
remembers when it first saw its size grow past each point (``seen``), and
acknowledgements drop what they pass, so under steady traffic the lag stays
as small as the batches are quick.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from sidecar.clock import Clock
from sidecar.spool.checkpoints import FileMark
from sidecar.spool.lines import split_lines

log = structlog.get_logger("sidecar.spool")

FINGERPRINT_BYTES = 1024
MAX_SEEN = 32  # growth observations kept per file (older ones merge: lag errs high)


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
    # (size, wall time it was first seen): the bytes up to each size existed then.
    seen: list[tuple[int, float]] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

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


# Not frozen: a frozen dataclass's __init__ costs ~0.5 us more, once a line.
@dataclass(slots=True)
class Line:
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


class SpoolReader:
    """Tracks the spool's files for one sink and hands out complete lines."""

    def __init__(self, spool_dir: Path, patterns: tuple[str, ...], max_line_bytes: int,
                 chunk_bytes: int, marks: dict[tuple[int, int], FileMark], sink: str,
                 clock: Clock, idle_done_after_s: float | None = None) -> None:
        self.dir = spool_dir
        self.clock = clock
        self.idle_done_after_s = idle_done_after_s
        self.patterns = patterns
        self.max_line = max_line_bytes
        self.chunk = max(chunk_bytes, max_line_bytes + 1)
        self.sink = sink
        self.files: dict[tuple[int, int], TrackedFile] = {}
        self._marks = dict(marks)  # saved marks not yet matched to a file
        self._first_scan = True
        self._rr = 0

    # -- discovery -----------------------------------------------------------
    def scan(self) -> None:
        """Find new files, follow renames, notice truncation and deletion."""
        seen: set[tuple[int, int]] = set()
        for path, st in spool_files(self.dir, self.patterns):
            key = (st.st_dev, st.st_ino)
            seen.add(key)
            tracked = self.files.get(key)
            if tracked is None:
                self._track(path, key)
            elif tracked.path != path:
                log.info("spool.file.renamed", sink=self.sink, old=tracked.path, new=path)
                tracked.path = path
        for key, tracked in list(self.files.items()):
            self._refresh(tracked, present=key in seen)
        if self._first_scan:
            # Marks of files that are gone are dropped; a present file that
            # could not be opened yet (EMFILE) keeps its mark for later.
            for key, mark in list(self._marks.items()):
                if key not in seen:
                    log.info("checkpoint.file.gone", sink=self.sink, path=mark.path)
                    del self._marks[key]
            self._first_scan = False

    def _track(self, path: str, key: tuple[int, int]) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("spool.file.unreadable", sink=self.sink, path=path, error=exc.strerror)
            return
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key or not stat.S_ISREG(st.st_mode):
            os.close(fd)  # replaced between scandir and open: next scan sees it
            return
        tracked = TrackedFile(st.st_dev, st.st_ino, fd, path, 0, 0, size=st.st_size,
                              mtime=st.st_mtime)
        self._resume(tracked, st.st_size)
        # What is there was written by its mtime at the latest.
        tracked.grew(st.st_size, min(st.st_mtime, self.clock.wall()))
        self.files[key] = tracked
        log.info("spool.file.opened", sink=self.sink, path=path, offset=tracked.read_pos)

    def _resume(self, f: TrackedFile, size: int) -> None:
        mark = self._marks.pop(f.key, None)
        if mark is None or mark.offset == 0:
            return
        if size < mark.offset:  # checked first: a file truncated to 0 has no fingerprint
            log.warning("spool.file.truncated", sink=self.sink, path=f.path,
                        offset=mark.offset, size=size)
            return
        if fingerprint(f.fd, mark.fp_len) != mark.fp:
            log.warning("spool.file.inode_reused", sink=self.sink, path=f.path, old_path=mark.path)
            return
        f.read_pos = f.acked = mark.offset
        f.fp, f.fp_len = mark.fp, mark.fp_len

    def _refresh(self, f: TrackedFile, present: bool) -> None:
        st = os.fstat(f.fd)
        f.size, f.mtime = st.st_size, st.st_mtime
        f.deleted = st.st_nlink == 0 or not present
        # A changed head means truncated and written again, maybe past read_pos.
        rewritten = f.fp_len > 0 and fingerprint(f.fd, f.fp_len) != f.fp
        if rewritten or st.st_size < f.read_pos or st.st_size < f.acked:
            log.warning("spool.file.truncated", sink=self.sink, path=f.path,
                        offset=f.read_pos, size=st.st_size)
            f.gen += 1
            f.read_pos = f.acked = 0
            f.fp, f.fp_len, f.skip_from, f.skip_head = "", 0, None, b""
            f.seen.clear()
        f.grew(st.st_size, self.clock.wall())
        if f.deleted and f.read_pos >= st.st_size and f.acked >= f.read_pos:
            os.close(f.fd)
            del self.files[f.key]
            log.info("spool.file.closed", sink=self.sink, path=f.path, reason="deleted")

    # -- reading -------------------------------------------------------------
    async def read(self, max_lines: int, max_bytes: int = 1 << 62) -> list[Line]:
        """Complete lines, fairly across files: at most one chunk of each file,
        visiting files (in turn from call to call) until ``max_lines`` lines or
        ``max_bytes`` bytes were taken.

        Memory is bounded by bytes (``chunk_bytes`` a file), not by ``max_lines``:
        one chunk of short lines may hold more than ``max_lines`` of them.
        """
        out: list[Line] = []
        files = list(self.files.values())
        taken = 0
        for i in range(len(files)):
            f = files[(self._rr + i) % len(files)]
            if len(out) >= max_lines or taken >= max_bytes:
                break
            lines = await self._read_file(f)
            taken += sum(len(x.raw) for x in lines)
            out.extend(lines)
        self._rr += 1
        return out

    async def _read_file(self, f: TrackedFile) -> list[Line]:
        # An over-long line is skipped a chunk at a time within this call: an
        # empty answer must mean "nothing complete yet", or the caller idles.
        while True:
            size = os.fstat(f.fd).st_size
            f.size = size
            f.grew(size, self.clock.wall())
            if size <= f.read_pos:
                return []
            n = min(size - f.read_pos, self.chunk)
            # Inline, not in a worker thread: a page-cache read of 1 MiB takes
            # ~0.1 ms, and buffers allocated in worker threads land in other
            # malloc arenas, which made RSS creep while a backlog drained.
            data = os.pread(f.fd, n, f.read_pos)
            out = self._take(f, data, at_eof=f.read_pos + len(data) >= size)
            if out or f.skip_from is None or not data:
                return out

    def _take(self, f: TrackedFile, data: bytes, at_eof: bool = False) -> list[Line]:
        """The complete lines of ``data``, read at ``f.read_pos``; moves ``read_pos``."""
        base = f.read_pos
        out: list[Line] = []
        if f.skip_from is not None:
            nl = data.find(b"\n")
            if nl < 0:
                f.read_pos += len(data)
                if at_eof and self.finished(f):  # its writer will never end it
                    size = f.read_pos - f.skip_from
                    out.append(Line(f, f.gen, f.skip_from, f.read_pos, f.skip_head, size,
                                    unfinished=True))
                    f.skip_from, f.skip_head = None, b""
                return out
            end = base + nl + 1
            out.append(Line(f, f.gen, f.skip_from, end, f.skip_head, end - f.skip_from - 1))
            f.skip_from, f.skip_head = None, b""
            data, base = data[nl + 1 :], end
        lines, tail = split_lines(data)
        pos = base
        for raw in lines:
            end = pos + len(raw) + 1
            if len(raw) > self.max_line:
                out.append(Line(f, f.gen, pos, end, raw[: 64 << 10], len(raw)))
            else:
                out.append(Line(f, f.gen, pos, end, raw))
            pos = end
        f.read_pos = pos
        if len(tail) > self.max_line:
            f.skip_from, f.skip_head = pos, tail[: 64 << 10]
            f.read_pos = pos + len(tail)
        elif tail and at_eof and self.finished(f):
            # Its writer will never finish this line: hand it on (to the
            # quarantine) so the file can be acknowledged and removed.
            out.append(Line(f, f.gen, pos, pos + len(tail), tail, unfinished=True))
            f.read_pos = pos + len(tail)
        return out

    def finished(self, f: TrackedFile) -> bool:
        """Will its writer never append again? (``.done``, or idle too long.)"""
        return is_finished(f.path, f.mtime, self.clock.wall(), self.idle_done_after_s)

    # -- progress ------------------------------------------------------------
    def ack(self, f: TrackedFile, gen: int, end: int) -> None:
        """The sink has everything of ``f`` before ``end``."""
        if gen == f.gen and end > f.acked:
            f.acked_to(end)

    def marks(self) -> dict[tuple[int, int], FileMark]:
        """The checkpoint of every tracked file, fingerprints refreshed."""
        out: dict[tuple[int, int], FileMark] = {}
        for f in self.files.values():
            want = min(FINGERPRINT_BYTES, f.acked)
            if f.fp_len < want:
                f.fp, f.fp_len = fingerprint(f.fd, want), want
            out[f.key] = FileMark(f.dev, f.ino, f.fp, f.fp_len, f.acked, f.path)
        for key, mark in self._marks.items():  # present, not opened yet: keep
            out.setdefault(key, mark)
        return out

    def lag_bytes(self) -> int:
        return sum(max(0, f.size - f.acked) for f in self.files.values())

    def oldest_unacked(self) -> float | None:
        """Wall time the oldest unacknowledged byte was first seen; None when current."""
        times = [t for f in self.files.values() if (t := f.oldest_unacked()) is not None]
        return min(times, default=None)

    def positions(self) -> Mapping[tuple[int, int], FilePosition]:
        """A snapshot of every tracked file.

        A finished file's size is read now (a writer may have appended just
        before its rename: the janitor must never go by an older size).
        """
        out = {}
        for key, f in self.files.items():
            finished = self.finished(f)
            size = os.fstat(f.fd).st_size if finished else f.size
            out[key] = FilePosition(f.dev, f.ino, f.path, size, f.mtime, f.acked, finished,
                                    f.deleted, f.skip_from is not None)
        return out

    def forget(self, key: tuple[int, int]) -> int | None:
        """Stop tracking a file (the spool quota dropped it): close it, so its
        space is freed, and drop its mark. Returns how far it had been read
        (None: not tracked). Lines of it already in a batch still ship."""
        self._marks.pop(key, None)
        f = self.files.pop(key, None)
        if f is None:
            return None
        os.close(f.fd)
        return f.read_pos

    def close(self) -> None:
        for f in self.files.values():
            os.close(f.fd)
        self.files.clear()
