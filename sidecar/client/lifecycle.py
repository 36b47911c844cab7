"""Process-wide hooks for live spool writers: ``fork()`` and interpreter exit.

A forked child must not write into, or rename, its parent's file; and at a
normal exit every writer's last file should be marked ``.jsonl.done``.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Protocol


class ForkAware(Protocol):
    """What the hooks need from a writer."""

    @property
    def lock(self) -> threading.Lock: ...
    def reset_after_fork(self) -> None: ...
    def close(self) -> None: ...


_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_held: list[ForkAware] = []


def track(writer: ForkAware) -> None:
    """Include ``writer`` in the fork and exit hooks for as long as it lives."""
    _live.add(writer)


def _before_fork() -> None:
    # Hold every writer's lock across fork, so the child never copies a writer
    # in the middle of a rotation.
    for writer in list(_live):
        writer.lock.acquire()
        _held.append(writer)


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().lock.release()


def _after_fork_in_child() -> None:
    _held.clear()  # the child's writers get new locks
    for writer in list(_live):
        writer.reset_after_fork()


def _close_all_at_exit() -> None:
    for writer in list(_live):
        writer.close()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
atexit.register(_close_all_at_exit)
