"""The statistics cache: Redis first, an in-memory TTL cache while Redis fails.

Keys are ``{prefix}obs_metrics:{window}:{agent}`` (``*`` for all agents),
kept ``cache.ttl_s[window]`` seconds; windows without a TTL are not cached.
The agent part is the name percent-encoded (``%``, ``*``, controls, spaces
and non-ASCII become ``%XX``; ``alpha`` stays ``alpha``), so no agent name,
``*`` included, can write or read the all-agents entry. When the Postgres
sink stores spans, ``invalidate`` deletes the entries of their agents and of
``*``, for every window, in one round trip per batch (a ``DEL`` sent by
``read/resp.py``, so that a daemon nobody asks statistics never loads the
redis package: ~6 MB). The daemon's own agent (``span-sidecar``, whose
health spans the all-agents figures leave out) is never cached: a batch of
its health spans alone makes no entry stale, and costs no round trip.

A Redis failure (refused, timed out, any error) opens a breaker: for
``cache.retry_after_s`` requests go straight to the memory cache without
touching Redis, so a dead Redis costs one timeout, not one per request; then
one trial request goes to Redis again. Invalidations missed meanwhile are
replayed on that first successful round trip, so Redis never serves an entry
that spans stored during the outage made stale.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote

import structlog

from sidecar.breaker import CircuitBreaker
from sidecar.clock import Clock
from sidecar.config.secrets import mask_url
from sidecar.config.settings import BreakerSettings, CacheSettings, RedisSettings
from sidecar.read.resp import RespDeleter, simple_target
from sidecar.snapshots import CacheStats
from sidecar.store.rollups import HEALTH_AGENT

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("sidecar.cache")

ALL_AGENTS = "*"
# Printable ASCII stays as is in keys, but for the escape itself and the all-agents marker.
_KEY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%*")
# Agents whose invalidations a Redis outage remembers; past this, the rest
# expire by their TTL (and the drop is logged).
MAX_MISSED = 10_000
Observe = Callable[[str, float], None]


def _no_observe(op: str, seconds: float) -> None:
    pass


def agent_key(agent: str | None) -> str:
    """The agent part of a key: ``*`` for all agents, else the name percent-encoded,
    which never is ``*`` (an agent named ``*`` is ``%2A``)."""
    if agent is None:
        return ALL_AGENTS
    return quote(agent, safe=_KEY_SAFE, errors="surrogatepass")


class MemoryTtlCache:
    """A bounded dict of values with expiry times (monotonic seconds), oldest evicted first."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str, now: float) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= now:
            del self._data[key]
            return None
        return item[1]

    def put(self, key: str, value: bytes, ttl_s: float, now: float) -> None:
        self._data[key] = (now + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._data.pop(key, None)


class MetricsCache:
    """Async context manager; ``get_or_compute`` is the one read path."""

    def __init__(self, settings: CacheSettings, redis: RedisSettings, clock: Clock,
                 observe: Observe | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._observe = observe or _no_observe
        self._memory = MemoryTtlCache(settings.memory_max_entries)
        self._redis_settings = redis
        self._client: Redis | None = None  # made at its first use (``_redis``)
        # Invalidations without the redis package when the URL is a plain one
        # (``sidecar/read/resp.py``): a daemon nobody asks statistics never loads it.
        target = simple_target(redis.url) if settings.backend == "redis" else None
        self._deleter = RespDeleter(target, redis.timeout_s) if target is not None else None
        self._target = mask_url(redis.url)
        self.breaker = CircuitBreaker(
            BreakerSettings(failure_threshold=1, reset_timeout_s=settings.retry_after_s), "redis")
        self._missed: set[str] = set()  # agent keys whose Redis invalidation failed
        # Bumped per agent key (and "*") by invalidate: a value computed while
        # its agent was invalidated may predate the new spans and is not cached.
        self._epochs: dict[str, int] = {}
        self._counts = dict.fromkeys(("hits", "misses", "fallbacks", "errors", "invalidations"), 0)

    @property
    def _redis(self) -> Redis | None:
        """The Redis client (None with ``cache.backend: memory``), made, and the
        redis package imported (~6 MB, ~60 ms), at its first use: a daemon
        asked no statistics never needs it (its invalidations go through
        ``read/resp.py`` unless the URL needs the package)."""
        if self._client is None and self.settings.backend == "redis":
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            r = self._redis_settings
            self._client = Redis.from_url(
                r.url, socket_timeout=r.timeout_s, socket_connect_timeout=r.timeout_s,
                retry=Retry(NoBackoff(), 0))
        return self._client

    async def __aenter__(self) -> MetricsCache:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self._deleter is not None:
                await self._deleter.close()
        finally:
            if self._client is not None:
                await self._client.aclose()

    def key(self, window: str, agent: str | None) -> str:
        """``{prefix}obs_metrics:{window}:{agent}``; None is all agents (``*``)."""
        return self._key(window, agent_key(agent))

    def _key(self, window: str, name: str) -> str:
        return f"{self.settings.key_prefix}obs_metrics:{window}:{name}"

    def ttl(self, window: str) -> float | None:
        return self.settings.ttl_s.get(window)

    def spelling(self, window: str) -> str:
        """The configured window of the same length (``60m`` is ``1h``, so both
        share its entry and TTL), else ``window`` as it is."""
        from sidecar.read.repository import parse_window

        length = parse_window(window)
        return next((w for w in self.settings.ttl_s if parse_window(w) == length), window)

    async def get_or_compute(self, window: str, agent: str | None,
                             compute: Callable[[], Awaitable[bytes]]) -> bytes:
        """The cached value of (window, agent), else ``compute()``'s, then cached."""
        ttl = self.ttl(window)
        if ttl is None or agent == HEALTH_AGENT:  # see the module docstring
            return await compute()
        name = agent_key(agent)
        key = self._key(window, name)
        epoch = self._epochs.get(name, 0)
        if self._redis is not None and self.breaker.allow(self.clock.monotonic()):
            found, value = await self._redis_get(key)
            if found:
                if value is not None:
                    self._counts["hits"] += 1
                    return value
                self._counts["misses"] += 1
                value = await compute()
                if self._epochs.get(name, 0) == epoch:
                    await self._redis_set(key, value, ttl)
                return value
        return await self._from_memory(key, name, epoch, ttl, compute)

    async def _from_memory(self, key: str, name: str, epoch: int, ttl: float,
                           compute: Callable[[], Awaitable[bytes]]) -> bytes:
        start = self.clock.monotonic()
        value = self._memory.get(key, start)
        self._observe("cache", self.clock.monotonic() - start)
        self._counts["fallbacks" if self.settings.backend == "redis" else
                     "hits" if value is not None else "misses"] += 1
        if value is None:
            value = await compute()
            if self._epochs.get(name, 0) == epoch:
                self._memory.put(key, value, ttl, self.clock.monotonic())
        return value

    async def _redis_get(self, key: str) -> tuple[bool, bytes | None]:
        """(True, value or None) from Redis, or (False, None) when Redis failed."""
        assert self._redis is not None
        start = self.clock.monotonic()
        missed = set(self._missed)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if missed:  # replayed in the same round trip
                    pipe.delete(*self._stale_keys(missed))
                pipe.get(key)
                results = await pipe.execute()
        except Exception as exc:
            self._failed("get", exc)
            return False, None
        finally:
            self._observe("cache", self.clock.monotonic() - start)
        self._missed -= missed
        self._recovered()
        value = results[-1]
        return True, value if isinstance(value, bytes) else None

    async def _redis_set(self, key: str, value: bytes, ttl: float) -> None:
        assert self._redis is not None
        try:
            await self._redis.set(key, value, px=max(1, int(ttl * 1000)))
        except Exception as exc:
            self._failed("set", exc)
        else:
            self._recovered()

    async def invalidate(self, agents: frozenset[str]) -> None:
        """Forget the entries of ``agents`` and of all agents, for every window.
        The daemon's own agent has none (it is not cached): its spans alone
        change nothing here, and Redis is not asked. No agent at all is spans
        without an agent name: they are in the all-agents figures."""
        if agents == {HEALTH_AGENT}:
            return
        names = {agent_key(a) for a in agents if a != HEALTH_AGENT} | {ALL_AGENTS}
        self._counts["invalidations"] += 1
        for name in names:
            self._epochs[name] = self._epochs.get(name, 0) + 1
        self._memory.delete(self._stale_keys(names))
        if self.settings.backend != "redis":
            return
        if not self.breaker.allow(self.clock.monotonic()):
            self._remember(names)
            return
        missed = set(self._missed)
        try:  # one DEL of every key: one command, one round trip
            await self._delete(self._stale_keys(names | missed))
        except Exception as exc:
            self._failed("invalidate", exc)
            self._remember(names)
        else:
            self._missed -= missed
            self._recovered()

    async def _delete(self, keys: list[str]) -> None:
        if self._deleter is not None:
            await self._deleter.delete(keys)
        else:
            assert self._redis is not None
            await self._redis.delete(*keys)

    def _stale_keys(self, names: Iterable[str]) -> list[str]:
        """Every window's key of each agent key in ``names``."""
        return [self._key(w, n) for n in names for w in self.settings.ttl_s]

    def _remember(self, agents: set[str]) -> None:
        room = MAX_MISSED - len(self._missed)
        new = agents - self._missed
        if len(new) > room:
            log.warning("cache.invalidations.dropped", agents=len(new) - room,
                        note="their Redis entries expire by TTL")
            new = set(sorted(new)[:room]) | ({ALL_AGENTS} & new)
        self._missed |= new

    def _failed(self, op: str, exc: BaseException) -> None:
        self._counts["errors"] += 1
        if self.breaker.state == "closed":
            # Logged once per outage: the breaker keeps Redis out of the path after it.
            log.warning("cache.redis.failed", op=op, error_type=type(exc).__name__,
                        redis=self._target, retry_after_s=self.settings.retry_after_s)
        self.breaker.record_failure(self.clock.monotonic())

    def _recovered(self) -> None:
        if self.breaker.state != "closed" or self.breaker.failures:
            log.info("cache.redis.recovered", redis=self._target)
        self.breaker.record_success()

    def stats(self) -> CacheStats:
        c = self._counts
        return CacheStats(self.settings.backend, c["hits"], c["misses"], c["fallbacks"],
                          c["errors"], c["invalidations"], self.breaker.state)
