"""Removes spool files that every enabled sink has passed.

Only ``.done`` files (or files idle longer than ``idle_done_after_s``, whose
writer died) that every sink acknowledged to their end are deleted, or moved
to ``spool.archive_dir``. Nothing another sink still needs is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import structlog

from sidecar.settings import SpoolSettings
from sidecar.spool.tailer import SpoolReader, TrackedFile

log = structlog.get_logger("sidecar.janitor")


class Janitor:
    def __init__(self, readers: list[SpoolReader], settings: SpoolSettings) -> None:
        self.readers = readers
        self.settings = settings
        self.removed_total = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.rescan_interval_s)
            self.sweep()

    def sweep(self) -> int:
        """Remove every finished file; return how many."""
        if not self.readers:
            return 0
        removed = 0
        for key, f in list(self.readers[0].files.items()):
            if f.deleted or not self.readers[0].finished(f):
                continue
            size = os.fstat(f.fd).st_size
            if all(self._passed(r, key, size) for r in self.readers):
                removed += self._remove(f)
        self.removed_total += removed
        return removed

    @staticmethod
    def _passed(reader: SpoolReader, key: tuple[int, int], size: int) -> bool:
        f = reader.files.get(key)
        return f is not None and f.skip_from is None and f.acked >= size

    def _remove(self, f: TrackedFile) -> int:
        try:
            if self.settings.archive_dir is None:
                os.unlink(f.path)
                log.info("spool.file.deleted", path=f.path)
            else:
                archive = Path(self.settings.archive_dir)
                archive.mkdir(parents=True, exist_ok=True)
                target = archive / Path(f.path).name
                if target.exists():  # writer names repeat (pid 1 in containers)
                    target = target.with_name(f"{target.name}.{f.dev}-{f.ino}-{f.mtime:.0f}")
                shutil.move(f.path, target)
                log.info("spool.file.archived", path=f.path, archive_dir=str(archive))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("spool.file.remove_failed", path=f.path, error=exc.strerror)
            return 0
        return 1
