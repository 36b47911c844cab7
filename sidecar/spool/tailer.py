"""Reading the spool: complete lines, fairly across files, and progress.

Each sink has its own ``SpoolReader``, so a sink that is down holds nothing
in memory and the other reads on at its own pace. Which files there are,
how they are recognised and when a descriptor is held is
``sidecar/spool/discovery.py``: in short, a file is open only while a read
takes a chunk of it (deleted files excepted), and every reopen checks that
it is still the file that was read.

Lag in seconds is the age of the oldest byte not yet acknowledged: each file
remembers when it first saw its size grow past each point (``seen``), and
acknowledgements drop what they pass, so under steady traffic the lag stays
as small as the batches are quick.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import structlog

from sidecar.spool.checkpoints import FileMark
from sidecar.spool.discovery import MAX_OPEN_FILES, OPEN_FLAGS, SpoolFiles
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

__all__ = ["MAX_OPEN_FILES", "FilePosition", "Line", "SpoolReader", "TrackedFile",
           "is_finished", "spool_files"]

log = structlog.get_logger("sidecar.spool")


class SpoolReader(SpoolFiles):
    """Tracks the spool's files for one sink and hands out complete lines."""

    # The last read left complete lines behind: it stopped at its budget, or
    # a file held more than a chunk. A reader that was not cut short is caught up.
    cut_short: bool = False

    # -- reading -------------------------------------------------------------
    def read(self, max_lines: int, max_bytes: int = 1 << 62) -> list[Line]:
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
        self.cut_short = False
        for i in range(len(files)):
            f = files[(self._rr + i) % len(files)]
            if len(out) >= max_lines or taken >= max_bytes:
                self.cut_short = True
                break
            if f.key not in self.files or not self._ready(f):
                continue
            try:
                lines = self._read_file(f)
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

    def _read_file(self, f: TrackedFile) -> list[Line]:
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
            self.cut_short = self.cut_short or n < size - f.read_pos
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

    def unread(self) -> bool:
        """Whether a file grew, at the last scan, past what reads took or found
        unfinished."""
        return any(f.size > max(f.read_pos, f.drained_at) for f in self.files.values())

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
