"""Bounded endings for tasks: one drain helper for the app and the daemon shell."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def drain(tasks: Collection[asyncio.Task[Any]], timeout_s: float,
                grace_s: float = 0.0) -> bool:
    """Wait up to ``timeout_s`` for ``tasks`` to finish; True when they all did.

    The ones still running are cancelled and given ``grace_s`` more to
    unwind. That wait is bounded too: a task stuck in a driver's cleanup is
    left behind (the process exit tears it down).
    """
    if not tasks:
        return True
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    if pending and grace_s > 0:
        await asyncio.wait(pending, timeout=grace_s)
    return not pending
