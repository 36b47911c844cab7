"""Reading the spool: discovery, file identity, offsets, complete lines.

Each sink has its own ``SpoolReader``, so a sink that is down holds nothing
in memory and the other reads on at its own pace. A file is known by
device + inode + a fingerprint of its first bytes, never by its name: a
rename to ``.done`` keeps its offset.

Descriptors are bounded: a reader holds one only while it reads a file. A
read opens the file, takes one chunk and closes it again, unless the file
was deleted (its last link gone: kept open until read to its end and
acknowledged, as before). Between reads, and while the sink holds the
pipeline back, a reader holds no descriptor but for files discovered and
not read yet (at most ``max_open``, 8) and deleted ones it still reads; the
file limit is left to sockets and the state directory. Scan notices a closed
file grow, shrink, be touched or renamed and marks it ``stale``; the next
read reopens it, checking that the name still leads to the same inode and
that the fingerprint of its first bytes is unchanged (the check across
restarts, made on every reopen): a reused inode or a rewritten file is read
from the start, never at an old offset. A new file is opened at discovery
while fewer than ``max_open`` are, so a file deleted or moved away right
after it was written is still read whole. A file deleted or moved out of
the spool while closed with bytes not read yet (between two reads of a
backlog, or found while at the bound) loses those bytes, logged as
``spool.file.lost`` (an error): only the janitor deletes spool files, and
only once every sink has passed them; the spool quota's drops are counted.

Exhausted resources (the file limit, EIO) on scan, open or read are fault
episodes (``sidecar/spool/faults.py``), not errors: what failed is tried
again at the next scan or read, and nothing is acknowledged that was not read.

Lag in seconds is the age of the oldest byte not yet acknowledged: each file
remembers when it first saw its size grow past each point (``seen``), and
acknowledgements drop what they pass, so under steady traffic the lag stays
as small as the batches are quick.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

import structlog

from sidecar.clock import Clock
from sidecar.spool.checkpoints import FileMark
from sidecar.spool.faults import FaultTracker, is_resource_error
from sidecar.spool.files import (
    CLOSED,
    FINGERPRINT_BYTES,
    FilePosition,
    Line,
    TrackedFile,
    fingerprint,
    is_finished,
    spool_files,
)
from sidecar.spool.lines import split_lines

__all__ = ["FilePosition", "Line", "SpoolReader", "TrackedFile", "is_finished", "spool_files"]

log = structlog.get_logger("sidecar.spool")

MAX_OPEN_FILES = 8
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class SpoolReader:
    """Tracks the spool's files for one sink and hands out complete lines."""

    def __init__(self, spool_dir: Path, patterns: tuple[str, ...], max_line_bytes: int,
                 chunk_bytes: int, marks: dict[tuple[int, int], FileMark], sink: str,
                 clock: Clock, idle_done_after_s: float | None = None,
                 faults: FaultTracker | None = None, max_open: int = MAX_OPEN_FILES) -> None:
        self.dir = spool_dir
        self.clock = clock
        self.idle_done_after_s = idle_done_after_s
        self.patterns = patterns
        self.max_line = max_line_bytes
        self.chunk = max(chunk_bytes, max_line_bytes + 1)
        self.sink = sink
        self.faults = faults  # None: resource errors are raised
        self.max_open = max_open
        self.files: dict[tuple[int, int], TrackedFile] = {}
        self._marks = dict(marks)  # saved marks not yet matched to an opened file
        self._first_scan = True
        self._rr = 0
        self._faulted = False  # a resource fault since the end of the last scan

    # -- discovery -----------------------------------------------------------
    def scan(self) -> None:
        """Find new files, follow renames, notice growth, truncation and deletion;
        close the files read to their end and idle."""
        try:
            listed = spool_files(self.dir, self.patterns)
        except OSError as exc:
            self._resource_fault(exc, "scan")
            self._faulted = False  # the next scan that goes well ends the episode
            return
        seen: set[tuple[int, int]] = set()
        for path, st in listed:
            key = (st.st_dev, st.st_ino)
            seen.add(key)
            tracked = self.files.get(key)
            if tracked is None:
                self._track(path, st)
                continue
            if tracked.path != path:
                log.info("spool.file.renamed", sink=self.sink, old=tracked.path, new=path)
                tracked.path, tracked.stale = path, True
            if not tracked.is_open:
                self._observe_closed(tracked, st)
        for key, tracked in list(self.files.items()):
            self._refresh(tracked, present=key in seen)
        if self._first_scan:
            # Marks of files that are gone are dropped; a present file not
            # opened yet (at the bound, or EMFILE) keeps its mark for later.
            for key, mark in list(self._marks.items()):
                if key not in seen:
                    log.info("checkpoint.file.gone", sink=self.sink, path=mark.path)
                    del self._marks[key]
            self._first_scan = False
        if not self._faulted and self.faults is not None:
            self.faults.cleared("spool", self.sink)
        self._faulted = False

    def _track(self, path: str, st: os.stat_result) -> None:
        f = TrackedFile(st.st_dev, st.st_ino, CLOSED, path, 0, 0, size=st.st_size,
                        mtime=st.st_mtime, stale=True)
        # What is there was written by its mtime at the latest.
        f.grew(st.st_size, min(st.st_mtime, self.clock.wall()))
        self.files[f.key] = f
        if self._open_count() < self.max_open:
            self._open(f)

    def _observe_closed(self, f: TrackedFile, st: os.stat_result) -> None:
        """A closed file's size and mtime, from the scan: changed means reopen."""
        if st.st_size != f.size or st.st_mtime != f.mtime:
            f.stale = True
        f.size, f.mtime = st.st_size, st.st_mtime
        f.grew(st.st_size, self.clock.wall())

    def _open(self, f: TrackedFile) -> bool:
        """Open ``f`` by its name, checking it is still the same file; True if open."""
        try:
            fd = os.open(f.path, OPEN_FLAGS)
        except FileNotFoundError:
            # Renamed (to .done) or deleted since scan listed it: the next scan
            # finds the new name, or sees it gone.
            log.debug("spool.file.moved", sink=self.sink, path=f.path)
            f.stale = False
            return False
        except OSError as exc:
            self._open_failed(f, exc)
            return False
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != f.key or not stat.S_ISREG(st.st_mode):
                os.close(fd)  # the name leads elsewhere now: the next scan sorts it out
                f.stale = False
                return False
            self._check_identity(f, fd, st)
        except OSError as exc:
            os.close(fd)
            self._open_failed(f, exc)
            return False
        f.fd, f.stale = fd, False
        if not f.verified:
            f.verified = True
            log.info("spool.file.opened", sink=self.sink, path=f.path, offset=f.read_pos)
        return True

    def _open_failed(self, f: TrackedFile, exc: OSError) -> None:
        if is_resource_error(exc):
            self._resource_fault(exc, "open")
        else:
            log.warning("spool.file.unreadable", sink=self.sink, path=f.path, error=exc.strerror)
            f.stale = False  # tried again when scan sees it change

    def _check_identity(self, f: TrackedFile, fd: int, st: os.stat_result) -> None:
        """First open: resume at the checkpoint's mark if the file is the one it
        names. Reopen: the head must still be the one read (else: from 0)."""
        f.size, f.mtime = st.st_size, st.st_mtime
        if not f.verified:
            self._resume(f, fd, st.st_size)
            return
        if st.st_size < f.read_pos or (f.head_len > 0
                                       and fingerprint(fd, f.head_len) != f.head):
            self._restart(f, st.st_size, "reopened")

    def _resume(self, f: TrackedFile, fd: int, size: int) -> None:
        mark = self._marks.pop(f.key, None)
        if mark is None or mark.offset == 0:
            return
        if size < mark.offset:  # checked first: a file truncated to 0 has no fingerprint
            log.warning("spool.file.truncated", sink=self.sink, path=f.path,
                        offset=mark.offset, size=size)
            return
        if fingerprint(fd, mark.fp_len) != mark.fp:
            log.warning("spool.file.inode_reused", sink=self.sink, path=f.path, old_path=mark.path)
            return
        f.read_pos = f.acked = mark.offset
        f.fp, f.fp_len = mark.fp, mark.fp_len
        f.acked_to(mark.offset)

    def _restart(self, f: TrackedFile, size: int, when: str) -> None:
        """Not the bytes read before (truncated, rewritten, or a reused inode):
        read from 0; acknowledgements of the older generation are void."""
        log.warning("spool.file.truncated", sink=self.sink, path=f.path,
                    offset=f.read_pos, size=size, noticed=when)
        f.gen += 1
        f.read_pos = f.acked = 0
        f.fp, f.fp_len, f.skip_from, f.skip_head = "", 0, None, b""
        f.head, f.head_len, f.drained_at = "", 0, -1
        f.seen.clear()
        f.grew(size, self.clock.wall())

    def _refresh(self, f: TrackedFile, present: bool) -> None:
        if f.is_open:
            try:
                self._refresh_open(f, present)
            except OSError as exc:
                self._read_failed(f, exc)
            return
        f.deleted = not present
        if f.deleted and f.read_pos >= f.size and f.acked >= f.read_pos:
            del self.files[f.key]
            log.info("spool.file.closed", sink=self.sink, path=f.path, reason="deleted")
        elif f.deleted and f.acked >= f.read_pos:
            # Closed with bytes not yet read, then deleted or moved away.
            del self.files[f.key]
            self._marks.pop(f.key, None)
            log.error("spool.file.lost", sink=self.sink, path=f.path,
                      bytes=max(0, f.size - f.read_pos))

    def _refresh_open(self, f: TrackedFile, present: bool) -> None:
        st = os.fstat(f.fd)
        f.size, f.mtime = st.st_size, st.st_mtime
        f.deleted = st.st_nlink == 0 or not present
        # A changed head means truncated and written again, maybe past read_pos.
        rewritten = f.fp_len > 0 and fingerprint(f.fd, f.fp_len) != f.fp
        if rewritten or st.st_size < f.read_pos or st.st_size < f.acked:
            self._restart(f, st.st_size, "scan")
        f.grew(st.st_size, self.clock.wall())
        if f.deleted and f.read_pos >= st.st_size and f.acked >= f.read_pos:
            self._close(f)
            del self.files[f.key]
            log.info("spool.file.closed", sink=self.sink, path=f.path, reason="deleted")

    # -- descriptors ---------------------------------------------------------
    def _open_count(self) -> int:
        return sum(1 for f in self.files.values() if f.is_open)

    def _release(self, f: TrackedFile) -> None:
        """After a read: close the file, unless it is deleted (it could not be
        opened again); a read that did not reach its end leaves it ``stale``."""
        if f.is_open and not f.deleted:
            self._close(f)
            f.stale = f.drained_at != f.size

    def _close(self, f: TrackedFile) -> None:
        """Close ``f``; first extend its fingerprint over what was read, which
        is what identifies it when it is opened again."""
        want = min(FINGERPRINT_BYTES, f.read_pos)
        try:
            if f.head_len < want:
                f.head, f.head_len = fingerprint(f.fd, want), want
        except OSError:
            pass  # the shorter fingerprint still identifies it
        finally:
            os.close(f.fd)
            f.fd = CLOSED

    def open_files(self) -> int:
        """Descriptors held now (the bound: ``max_open``, plus deleted files)."""
        return self._open_count()

    # -- faults --------------------------------------------------------------
    def _resource_fault(self, exc: OSError, op: str) -> None:
        if self.faults is None or not is_resource_error(exc):
            raise exc
        self._faulted = True
        self.faults.failed("spool", self.sink, exc, op=op)

    def _read_failed(self, f: TrackedFile, exc: OSError) -> None:
        """A read (or fstat) failed: close the file and read it again later."""
        if f.is_open:
            os.close(f.fd)
            f.fd = CLOSED
        f.stale = True
        self._resource_fault(exc, "read")

    # -- reading -------------------------------------------------------------
    async def read(self, max_lines: int, max_bytes: int = 1 << 62) -> list[Line]:
        """Complete lines, fairly across files: at most one chunk of each file,
        visiting files (in turn from call to call) until ``max_lines`` lines or
        ``max_bytes`` bytes were taken. A closed file is visited only when scan
        saw it change, or when its unfinished tail is due (its writer is done).

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
            if f.key not in self.files or not self._ready(f):
                continue
            try:
                lines = await self._read_file(f)
                self._release(f)
            except OSError as exc:
                self._read_failed(f, exc)
                continue
            taken += sum(len(x.raw) for x in lines)
            out.extend(lines)
        self._rr += 1
        return out

    def _ready(self, f: TrackedFile) -> bool:
        """Open (or opened now) and worth a read."""
        if f.is_open:
            return True
        due = f.read_pos < f.size and self.finished(f)
        return (f.stale or due) and self._open(f)

    async def _read_file(self, f: TrackedFile) -> list[Line]:
        # An over-long line is skipped a chunk at a time within this call: an
        # empty answer must mean "nothing complete yet", or the caller idles.
        while True:
            st = os.fstat(f.fd)
            size = f.size = st.st_size
            f.deleted = f.deleted or st.st_nlink == 0
            f.grew(size, self.clock.wall())
            if size <= f.read_pos:
                f.drained_at = size
                return []
            n = min(size - f.read_pos, self.chunk)
            # Inline, not in a worker thread: a page-cache read of 1 MiB takes
            # ~0.1 ms, and buffers allocated in worker threads land in other
            # malloc arenas, which made RSS creep while a backlog drained.
            data = os.pread(f.fd, n, f.read_pos)
            out = self._take(f, data, at_eof=f.read_pos + len(data) >= size)
            if not out and f.skip_from is None and f.read_pos + len(data) >= size:
                f.drained_at = size  # only an unfinished line left: idle until it grows
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
            if not f.verified and f.key in self._marks:
                continue  # not opened yet: its saved mark stands (below)
            want = min(FINGERPRINT_BYTES, f.acked)
            if f.fp_len < want:
                self._extend_fingerprint(f, want)
            out[f.key] = FileMark(f.dev, f.ino, f.fp, f.fp_len, f.acked, f.path)
        for key, mark in self._marks.items():  # present, not opened yet: keep
            out.setdefault(key, mark)
        return out

    def _extend_fingerprint(self, f: TrackedFile, want: int) -> None:
        """Fingerprint the first ``want`` acknowledged bytes (once 1 KiB is
        acknowledged, never again). A closed file is opened for it, checked
        to be the same file; a failure keeps the shorter fingerprint."""
        if f.head_len == want:
            f.fp, f.fp_len = f.head, f.head_len
            return
        fd = f.fd
        try:
            if not f.is_open:
                fd = os.open(f.path, OPEN_FLAGS)
            try:
                st = os.fstat(fd)
                same = (st.st_dev, st.st_ino) == f.key and st.st_size >= want and (
                    f.is_open or fingerprint(fd, f.head_len) == f.head)  # not a reused inode
                if same:
                    f.fp, f.fp_len = fingerprint(fd, want), want
            finally:
                if fd != f.fd:
                    os.close(fd)
        except OSError:
            pass  # the shorter fingerprint still identifies it

    def lag_bytes(self) -> int:
        return sum(max(0, f.size - f.acked) for f in self.files.values())

    def oldest_unacked(self) -> float | None:
        """Wall time the oldest unacknowledged byte was first seen; None when current."""
        times = [t for f in self.files.values() if (t := f.oldest_unacked()) is not None]
        return min(times, default=None)

    def positions(self) -> Mapping[tuple[int, int], FilePosition]:
        """A snapshot of every tracked file.

        A finished open file's size is read now (a writer may have appended
        just before its rename: the janitor must never go by an older size); a
        closed one's is the size the scan that saw its new name found.
        """
        out = {}
        for key, f in self.files.items():
            finished = self.finished(f)
            size = f.size
            if finished and f.is_open:
                try:
                    size = os.fstat(f.fd).st_size
                except OSError:
                    finished = False  # not now: the janitor looks again later
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
        if f.is_open:
            os.close(f.fd)
            f.fd = CLOSED
        return f.read_pos

    def close(self) -> None:
        for f in self.files.values():
            if f.is_open:
                os.close(f.fd)
                f.fd = CLOSED
        self.files.clear()
