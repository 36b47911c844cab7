"""Removes spool files that every enabled sink has passed.

Only ``.done`` files (or files idle longer than ``idle_done_after_s``, whose
writer died) that every sink acknowledged to their end are deleted, or moved
to ``spool.archive_dir``. Nothing another sink still needs is touched. The
janitor reads the readers' snapshots (``positions``), never their insides.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

from sidecar.clock import Clock, every
from sidecar.settings import SpoolSettings
from sidecar.spool.tailer import FilePosition

log = structlog.get_logger("sidecar.janitor")

Positions = Callable[[], Mapping[tuple[int, int], FilePosition]]


class Janitor:
    def __init__(self, readers: Sequence[Positions], settings: SpoolSettings,
                 clock: Clock) -> None:
        self.readers = readers
        self.settings = settings
        self.clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.clock, self.settings.rescan_interval_s, stop, self.sweep)

    def sweep(self) -> int:
        """Remove every finished file that all sinks passed; return how many."""
        if not self.readers:
            return 0
        views = [positions() for positions in self.readers]
        removed = 0
        for key, f in views[0].items():
            if f.deleted or not f.finished:
                continue
            if all(_passed(view.get(key), f.size) for view in views):
                removed += self._remove(f)
        return removed

    def _remove(self, f: FilePosition) -> int:
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


def _passed(f: FilePosition | None, size: int) -> bool:
    return f is not None and not f.skipping and f.acked >= size
