"""The read side as one component: a small Postgres pool, the cache, stats, retention.

The app enters it on its exit stack, passes ``on_stored`` to the Postgres
sink, ``stats_http`` to the HTTP server and ``cache_stats`` to the metrics,
and starts ``run`` (partitions ahead, retention, the rollup pass) in its TaskGroup. The
CLI's ``stats``, ``trace`` and ``retention`` build the same pieces.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sidecar.clock import Clock
from sidecar.config.settings import Settings
from sidecar.read.cache import MetricsCache, Observe
from sidecar.snapshots import CacheStats
from sidecar.store.pool import LazyPool
from sidecar.store.retention import Retention
from sidecar.store.rollup_pass import RollupPass

if TYPE_CHECKING:
    from sidecar.read.stats import StatsService


class ReadSide:
    def __init__(self, settings: Settings, clock: Clock, observe: Observe | None = None) -> None:
        # Its opening is logged at debug: the sink's pool says so in the daemon,
        # and a command prints its answer, not how it got it.
        self.pool = LazyPool(settings.postgres, purpose="read", opened_level=logging.DEBUG)
        self.cache = MetricsCache(settings.cache, settings.redis, clock, observe)
        self._settings, self._clock = settings, clock
        self.retention = Retention(settings.retention, settings.postgres, clock, self.pool)
        self.rollups = RollupPass(settings.retention, settings.postgres, clock, self.pool)

    @cached_property
    def stats(self) -> StatsService:
        """The statistics (the repository, its queries and pydantic rows),
        imported at the first ``/stats`` or command that asks: a daemon nobody
        asks keeps them out of its memory and its start-up."""
        from sidecar.read.stats import StatsService

        s = self._settings
        return StatsService(self.pool, s.postgres.db_schema, self.cache, self._clock,
                            s.stats.max_window)

    async def __aenter__(self) -> ReadSide:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self.cache.__aexit__(et, e, tb)
        finally:
            await self.pool.close()

    async def on_stored(self, agents: frozenset[str]) -> None:
        """The Postgres sink's hook: stored spans make their agents' statistics
        stale, and their deltas due for the rollup pass."""
        self.rollups.poke()
        await self.cache.invalidate(agents)

    async def stats_http(self, query: Any) -> Any:
        return await self.stats.http(query)

    def cache_stats(self) -> CacheStats:
        return self.cache.stats()

    async def run(self, stop: asyncio.Event) -> None:
        """Partitions ahead and, with ``retention.ttl_days`` set, the TTL, every
        interval; the rollup pass every ``retention.rollup_interval_s``."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.retention.run(stop))
            tg.create_task(self.rollups.run(stop))
