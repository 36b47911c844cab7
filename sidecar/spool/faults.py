"""Exhausted resources as back-pressure: one episode per fault, not one line per try.

The file limit (EMFILE, ENFILE), a full or over-quota disk (ENOSPC, EDQUOT,
EFBIG under ``ulimit -f``) and I/O errors (EIO) on the spool, the quarantine
or the state directory are waited out, never fatal. The component that hit
one reports it here and tries again later (on the clock, or at its next
turn); nothing it holds is acknowledged meanwhile. An episode is logged when
it starts (``resource.fault.started``, a warning) and when the first try after
it succeeds (``resource.fault.cleared``), however many tries failed between;
every failed try is counted for ``/metrics``; while any episode lasts, the
health verdict is degraded and ``/readyz`` names it.

Episodes are kept per (resource, owner): the owner is the sink whose reader,
quarantine or checkpoint failed ("" for the shared ones), so one sink's
success never clears another's fault.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from sidecar.clock import Clock

log = structlog.get_logger("sidecar.resources")

# Errors that a wait can cure: the process or system file limit, a full or
# over-quota disk, a file-size limit, a failing device.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT,
                             errno.EFBIG, errno.EIO})
RESOURCES = ("spool", "quarantine", "state")
RETRY_S = 1.0  # how often a deferred write is tried again
Retry = Callable[[], bool]  # True once the deferred work is done


def is_resource_error(exc: BaseException) -> bool:
    """Is ``exc`` an exhausted resource (waited out) rather than a real error?"""
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


@dataclass(frozen=True, slots=True)
class Episode:
    resource: str
    owner: str
    errno: str
    since: float  # wall time it started
    tries: int  # failed tries so far


@dataclass(frozen=True, slots=True)
class FaultStats:
    """Faults going on now, and every failed try since start by (resource, errno)."""

    active: tuple[Episode, ...] = ()
    failures: tuple[tuple[str, str, int], ...] = ()  # (resource, errno, count)


class FaultTracker:
    """Episodes of exhausted resources, and writes waiting for them to end."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._active: dict[tuple[str, str], Episode] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._retries: dict[tuple[str, str], Retry] = {}
        self._queued = asyncio.Event()  # a deferred write waits: ``run`` wakes up

    def failed(self, resource: str, owner: str, exc: OSError, *, op: str,
               retry: Retry | None = None) -> None:
        """A try failed for want of a resource; ``retry`` (if any) is called on
        the clock until it returns True (a newer ``retry`` replaces it)."""
        name = errno_name(exc)
        self._failures[(resource, name)] = self._failures.get((resource, name), 0) + 1
        key = (resource, owner)
        if retry is not None:
            self._retries[key] = retry
            self._queued.set()
        old = self._active.get(key)
        if old is not None:
            self._active[key] = Episode(resource, owner, old.errno, old.since, old.tries + 1)
            return
        self._active[key] = Episode(resource, owner, name, self.clock.wall(), 1)
        log.warning("resource.fault.started", resource=resource, owner=owner, errno=name,
                    op=op, error=exc.strerror, retry_in_s=RETRY_S)

    def cleared(self, resource: str, owner: str) -> None:
        """A try succeeded: the episode (if any) is over, its deferred write moot."""
        key = (resource, owner)
        self._retries.pop(key, None)
        episode = self._active.pop(key, None)
        if episode is not None:
            log.info("resource.fault.cleared", resource=resource, owner=owner,
                     errno=episode.errno, failed_tries=episode.tries,
                     lasted_s=round(max(0.0, self.clock.wall() - episode.since), 3))

    def active(self, resource: str, owner: str) -> bool:
        return (resource, owner) in self._active

    def retry_now(self) -> None:
        """Try every deferred write once (its owner reports the outcome)."""
        for key, retry in list(self._retries.items()):
            if self._retries.get(key) is not retry:
                continue  # replaced or done meanwhile
            try:
                done = retry()
            except OSError as exc:  # not a resource error: the owner's next turn says
                log.error("resource.retry.failed", resource=key[0], owner=key[1],
                          error=exc.strerror)
                done = True
            if done and self._retries.get(key) is retry:
                self._retries.pop(key, None)

    async def run(self, stop: asyncio.Event) -> None:
        """Try the deferred writes every ``RETRY_S`` while there are any; with
        none, wait for one (an idle sidecar does not wake every second)."""
        waker = asyncio.ensure_future(_set_when(stop, self._queued))
        try:
            while not stop.is_set():
                if not self._retries:
                    self._queued.clear()
                    await self._queued.wait()
                    continue
                if await self.clock.wait(stop, RETRY_S):
                    return
                self.retry_now()
        finally:
            waker.cancel()

    def reasons(self) -> list[str]:
        """One line per episode, for ``/readyz`` and the health verdict."""
        now = self.clock.wall()
        return [f"{e.resource}{f' ({e.owner})' if e.owner else ''}: {e.errno} for "
                f"{max(0.0, now - e.since):.0f} s, retrying" for e in self._active.values()]

    def stats(self) -> FaultStats:
        return FaultStats(tuple(self._active.values()),
                          tuple((r, n, c) for (r, n), c in sorted(self._failures.items())))


async def _set_when(stop: asyncio.Event, event: asyncio.Event) -> None:
    await stop.wait()
    event.set()
