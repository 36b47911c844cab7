"""The spool quota (``spool.max_bytes``, ``spool.on_full``).

Checked on the rescan schedule. ``keep`` (the default) only reports: the
health verdict turns degraded at 90 % of the quota and unhealthy at 100 %,
and ``spool.quota.exceeded`` is logged when usage crosses the quota.
``drop_oldest`` deletes the oldest complete files (``.done``, or idle past
``spool.idle_done_after_s``) until the spool fits, even when a sink has not
shipped them: each reader forgets the file first (closing it frees the
space), every record some sink had not read yet is counted as dropped, and
each deletion is logged as an error (``spool.file.dropped``).

A check that hits an exhausted resource (the file limit while listing the
spool or counting a file's records) is a fault episode of the spool
(``sidecar/spool/faults.py``) and is made again at the next rescan.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

import structlog

from sidecar.clock import Clock, every
from sidecar.config.settings import SpoolSettings
from sidecar.snapshots import QuotaStats
from sidecar.spool.faults import FaultTracker, is_resource_error
from sidecar.spool.files import count_newlines
from sidecar.spool.tailer import SpoolReader, is_finished, spool_files

log = structlog.get_logger("sidecar.quota")


class SpoolQuota:
    """``readers`` answers every sink's reader (the app's pipelines, built
    after the quota); ``reconfigure`` takes a reloaded ``spool`` section."""

    def __init__(self, settings: SpoolSettings, readers: Callable[[], Sequence[SpoolReader]],
                 clock: Clock, faults: FaultTracker | None = None) -> None:
        self.settings = settings
        self.faults = faults
        self.readers = readers
        self.clock = clock
        self.bytes = 0
        self.dropped_files = self.dropped_records = 0
        self._over = False

    def reconfigure(self, settings: SpoolSettings) -> None:
        """Check against this quota (``spool.max_bytes``, ``spool.on_full``) from now on."""
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.clock, self.settings.rescan_interval_s, stop, self.checked)

    def checked(self) -> None:
        """``check``, with an exhausted resource reported and tried next time."""
        try:
            self.check()
        except OSError as exc:
            if self.faults is None or not is_resource_error(exc):
                raise
            self.faults.failed("spool", "quota", exc, op="quota")
            return
        if self.faults is not None:
            self.faults.cleared("spool", "quota")

    def check(self) -> None:
        """Measure the spool; over the quota, warn or drop the oldest complete files."""
        limit = self.settings.max_bytes
        files = spool_files(self.settings.dir, self.settings.patterns)
        self.bytes = sum(st.st_size for _, st in files)
        if limit is None:
            return
        if self.bytes > limit and self.settings.on_full == "drop_oldest":
            for path, st in sorted(files, key=lambda f: f[1].st_mtime):
                if self.bytes <= limit:
                    break
                now = self.clock.wall()
                if is_finished(path, st.st_mtime, now, self.settings.idle_done_after_s) \
                        and self._drop(path, (st.st_dev, st.st_ino)):
                    self.bytes -= st.st_size
        over = self.bytes > limit
        if over != self._over:
            self._over = over
            if over:
                log.warning("spool.quota.exceeded", bytes=self.bytes, max_bytes=limit,
                            on_full=self.settings.on_full)
            else:
                log.info("spool.quota.recovered", bytes=self.bytes, max_bytes=limit)

    def _drop(self, path: str, key: tuple[int, int]) -> bool:
        """Delete one file; count the records that some sink had not read yet."""
        readers = self.readers()
        read = [r.files[key].read_pos if key in r.files else 0 for r in readers]
        try:
            # Counted first: a resource fault here leaves the readers untouched.
            records = _records_from(path, min(read, default=0))
            for r in readers:
                r.forget(key)
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if is_resource_error(exc):
                raise  # a fault episode (checked): the file is dropped next time
            log.warning("spool.file.remove_failed", path=path, error=exc.strerror)
            return False
        self.dropped_files += 1
        self.dropped_records += records
        log.error("spool.file.dropped", path=path, records=records, reason="spool_full",
                  max_bytes=self.settings.max_bytes)
        return True

    def stats(self) -> QuotaStats:
        return QuotaStats(self.settings.max_bytes, self.bytes, self.settings.on_full,
                          self.dropped_files, self.dropped_records)


def _records_from(path: str, offset: int) -> int:
    """Lines (a last one without its newline included) from ``offset`` to the end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        count, unfinished = count_newlines(fd, offset)
    finally:
        os.close(fd)
    return count + unfinished
