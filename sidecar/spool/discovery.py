"""Discovering and opening spool files: identity, descriptors, resource faults.

The part of a sink's ``SpoolReader`` that knows which files there are and
opens them. A file is known by device + inode + a fingerprint of its first
bytes, never by its name: a rename to ``.done`` keeps its offset.

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
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

from sidecar.clock import Clock
from sidecar.spool.checkpoints import FileMark
from sidecar.spool.faults import FaultTracker, is_resource_error
from sidecar.spool.files import (
    CLOSED,
    FINGERPRINT_BYTES,
    TrackedFile,
    fingerprint,
    is_finished,
    spool_files,
)

log = structlog.get_logger("sidecar.spool")

MAX_OPEN_FILES = 8
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class SpoolFiles:
    """One sink's view of the spool's files (the reading is ``SpoolReader``'s)."""

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

    def finished(self, f: TrackedFile) -> bool:
        """Will its writer never append again? (``.done``, or idle too long.)"""
        return is_finished(f.path, f.mtime, self.clock.wall(), self.idle_done_after_s)
