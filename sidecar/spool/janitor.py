"""Removes spool files that every enabled sink has passed.

Only ``.done`` files (or files idle longer than ``idle_done_after_s``, whose
writer died) that every sink acknowledged to their end are deleted, or moved
to ``spool.archive_dir``. Nothing another sink still needs is touched, and
that includes a sink that is disabled now but left a checkpoint: its backlog
is held for ``spool.disabled_sink_keep_s`` or until ``forget-sink``
(``sidecar.spool.disabled_sinks``). The janitor reads the readers' snapshots
(``positions``) and the disabled sinks' checkpoints, never the readers' insides.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import structlog

from sidecar.clock import Clock, every
from sidecar.config.settings import SpoolSettings
from sidecar.spool.disabled_sinks import DisabledSinks, covers
from sidecar.spool.tailer import FilePosition

log = structlog.get_logger("sidecar.janitor")

Positions = Callable[[], Mapping[tuple[int, int], FilePosition]]


class Janitor:
    def __init__(self, readers: Sequence[Positions], settings: SpoolSettings,
                 clock: Clock, *, enabled: Collection[str]) -> None:
        """``enabled``: the names of the enabled sinks (any other sink with a
        checkpoint is a disabled one whose backlog is held)."""
        self.readers = readers
        self.settings = settings
        self.clock = clock
        self.disabled = DisabledSinks(settings, enabled, clock)

    def start(self) -> None:
        """Name the disabled sinks with a backlog (once, at start)."""
        self.disabled.start()

    async def run(self, stop: asyncio.Event) -> None:
        self.start()
        await every(self.clock, self.settings.rescan_interval_s, stop, self.sweep)

    def sweep(self) -> int:
        """Remove every finished file that all sinks passed; return how many."""
        if not self.readers:
            return 0
        views = [positions() for positions in self.readers]
        held = self.disabled.holding()
        removed = 0
        for key, f in views[0].items():
            if f.deleted or not f.finished:
                continue
            if all(_passed(view.get(key), f.size) for view in views) and all(
                    covers(marks, f.dev, f.ino, f.size) for marks in held):
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
