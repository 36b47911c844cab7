"""Per-sink checkpoints: where each file was acknowledged up to.

Written atomically (temp file, fsync, rename, fsync of the directory) and
only after the sink acknowledged. A checkpoint that cannot be read (empty,
truncated, garbled, NUL-filled, as power loss or an OOM kill leave them) is set aside and the
sink starts again from the beginning of the spool: it may re-ship, and every
write is idempotent, so nothing is lost and Postgres gets no duplicates.

A save that fails for want of a resource (a full disk, the file limit) leaves
the previous checkpoint intact; with the state directory's ``FaultTracker``
it is a fault episode and the newest marks are saved again on the clock (a
later save supersedes them), so an idle sink's checkpoint catches up too.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from sidecar.client.fsutil import fsync_dir
from sidecar.spool.faults import is_resource_error
from sidecar.spool.state import StateDir

log = structlog.get_logger("sidecar.checkpoints")

VERSION = 1


@dataclass(frozen=True, slots=True)
class FileMark:
    """How far one file is acknowledged, and how to recognise the file again."""

    dev: int
    ino: int
    fp: str  # hex digest of the first fp_len bytes (tells a reused inode apart)
    fp_len: int
    offset: int
    path: str  # the name last seen (informational: identity is dev+ino+fp)

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)


class CheckpointStore:
    """One JSON file per sink under ``state_dir/checkpoints``."""

    def __init__(self, state: StateDir, sink: str) -> None:
        self.dir = state.checkpoints
        self.path = state.checkpoint_file(sink)
        self.sink = sink
        self.faults = state.faults

    def load(self) -> dict[tuple[int, int], FileMark]:
        """The saved marks; an unreadable file is moved aside and means 'none'."""
        self._remove_stale_temp()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return _decode(data)
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_suffix(".corrupt")
            os.replace(self.path, aside)
            log.warning("checkpoint.file.corrupt", sink=self.sink, path=str(self.path),
                        moved_to=str(aside), error=str(exc)[:200], size=len(data))
            return {}

    def save(self, marks: dict[tuple[int, int], FileMark]) -> bool:
        """Replace the checkpoint atomically and durably. With a fault tracker,
        a resource fault returns False (saved again on the clock) instead of
        raising; other errors are raised."""
        try:
            self._write(marks)
        except OSError as exc:
            if self.faults is None or not is_resource_error(exc):
                raise
            self.faults.failed("state", self.sink, exc, op="checkpoint",
                               retry=lambda: self.save(marks))
            return False
        if self.faults is not None:
            self.faults.cleared("state", self.sink)
        return True

    def _write(self, marks: dict[tuple[int, int], FileMark]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        body = orjson.dumps({
            "version": VERSION, "sink": self.sink,
            "files": [_encode(m) for m in marks.values()],
        })
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(body)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            # A full disk (ENOSPC, EFBIG): the previous checkpoint was never
            # touched; drop the partial temp file so it frees its space.
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)
        fsync_dir(self.dir)

    def _remove_stale_temp(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        if tmp.exists():
            log.info("checkpoint.temp.removed", sink=self.sink, path=str(tmp))
            tmp.unlink(missing_ok=True)


def _encode(m: FileMark) -> dict[str, Any]:
    return {"dev": m.dev, "ino": m.ino, "fp": m.fp, "fp_len": m.fp_len,
            "offset": m.offset, "path": m.path}


def _decode(data: bytes) -> dict[tuple[int, int], FileMark]:
    doc = orjson.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError("not a checkpoint document of version 1")
    marks: dict[tuple[int, int], FileMark] = {}
    for f in doc["files"]:
        mark = FileMark(dev=int(f["dev"]), ino=int(f["ino"]), fp=str(f["fp"]),
                        fp_len=int(f["fp_len"]), offset=int(f["offset"]), path=str(f["path"]))
        if mark.offset < 0 or mark.fp_len < 0 or mark.fp_len > mark.offset:
            raise ValueError(f"impossible mark for {mark.path}")
        marks[mark.key] = mark
    return marks


def read_marks(state: StateDir, sink: str) -> dict[tuple[int, int], FileMark]:
    """A sink's saved marks, read-only (for ``status``); empty when unreadable."""
    try:
        return _decode(state.checkpoint_file(sink).read_bytes())
    except (OSError, ValueError, KeyError, TypeError):
        return {}
