"""The statistics cache on a real Redis: keys, TTLs, invalidation, outages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from sidecar.clock import FakeClock
from sidecar.config.settings import Settings
from sidecar.health.metrics import Metrics
from sidecar.read.cache import MetricsCache
from sidecar.read.service import ReadSide
from sidecar.records import SpanRecord, parse_line
from sidecar.sinks.base import Delivered
from sidecar.sinks.postgres import PostgresSink
from sidecar.snapshots import SpoolStats
from tests.read.conftest import REDIS_URL, RedisServer, connect, make_settings, seed
from tests.support import line, span


def records(agent: str, n: int = 3) -> list[SpanRecord]:
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        rec = parse_line(line(span(i, agent_name=agent, start_time=now.isoformat(),
                                   end_time=now.isoformat())).rstrip(b"\n"))
        assert isinstance(rec, SpanRecord)
        out.append(rec)
    return out


class Computations:
    """A compute function that counts its calls (a miss computes, a hit does not)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> bytes:
        self.calls += 1
        return f"value-{self.calls}".encode()


async def test_answer_is_cached_in_redis_with_key_and_ttl(pg_schema: str,
                                                          redis_prefix: str) -> None:
    """The second ``stats`` comes from Redis: key obs_metrics:{window}:{agent} (``*`` for
    all agents) under the prefix, with the window's TTL."""
    settings = make_settings(pg_schema, redis_prefix)
    conn = await connect(pg_schema)
    await seed(conn, pg_schema, "alpha", datetime.now(UTC), 200, 1.0)
    await conn.close()
    redis = Redis.from_url(REDIS_URL)
    async with ReadSide(settings, FakeClock(wall=datetime.now(UTC).timestamp())) as read:
        first = await read.stats.report("1h", "alpha")
        assert read.cache_stats().misses == 1
        again = await read.stats.report("1h", "alpha")
        assert again == first and read.cache_stats().hits == 1
        await read.stats.report("7d")
        ttl_1h = await redis.pttl(f"{redis_prefix}obs_metrics:1h:alpha")
        ttl_7d = await redis.pttl(f"{redis_prefix}obs_metrics:7d:*")
        assert 55_000 < ttl_1h <= 60_000 and 590_000 < ttl_7d <= 600_000
        cached = await redis.get(f"{redis_prefix}obs_metrics:1h:alpha")
        assert cached is not None and b'"agent_name":"alpha"' in cached
        # An answer Redis holds is what the cache returns, without asking Postgres.
        await redis.set(f"{redis_prefix}obs_metrics:24h:*",
                        first.model_copy(update={"window": "24h"}).model_dump_json())
        assert (await read.stats.report("24h")).agents == first.agents
    await redis.aclose()
    assert first.agents[0].latency.span_count == 200


async def test_a_flush_of_the_agent_invalidates_its_entries(pg_schema: str,
                                                            redis_prefix: str) -> None:
    """The Postgres sink's on_stored hook deletes that agent's and the all-agents
    entries (every window), not other agents'; the next stats sees the new spans."""
    settings = make_settings(pg_schema, redis_prefix)
    redis = Redis.from_url(REDIS_URL)
    async with ReadSide(settings, FakeClock(wall=datetime.now(UTC).timestamp())) as read, \
            PostgresSink(settings.postgres, "p", on_stored=read.on_stored) as sink:
        assert await sink.send(records("alpha", 3) + records("beta", 2)) == Delivered()
        assert (await read.stats.report("1h", "alpha")).agents[0].latency.span_count == 3
        await read.stats.report("1h", "beta")
        await read.stats.report("24h")
        keys = sorted([k.decode() async for k in redis.scan_iter(match=f"{redis_prefix}*")])
        assert len(keys) == 3
        assert await sink.send(records("alpha", 4)) == Delivered()
        left = sorted([k.decode() async for k in redis.scan_iter(match=f"{redis_prefix}*")])
        assert left == [f"{redis_prefix}obs_metrics:1h:beta"]
        assert (await read.stats.report("1h", "alpha")).agents[0].latency.span_count == 7
        assert read.cache_stats().invalidations == 2
    await redis.aclose()


async def test_a_failing_hook_never_fails_the_batch(pg_schema: str) -> None:
    async def broken(agents: frozenset[str]) -> None:
        raise ConnectionError("cache down")

    settings = make_settings(pg_schema)
    async with PostgresSink(settings.postgres, "p", on_stored=broken) as sink:
        assert await sink.send(records("alpha")) == Delivered()


async def test_redis_stopped_answers_from_memory_and_redis_is_used_again(
        pg_schema: str, private_redis: RedisServer) -> None:
    """While Redis is down: right answers, from memory, counted as fallbacks, and the
    breaker keeps Redis out of the path; after it returns (and retry_after_s), Redis
    is used again and invalidations missed meanwhile are applied."""
    clock = FakeClock(wall=datetime.now(UTC).timestamp())
    settings = make_settings(pg_schema, "p:", private_redis.url, cache={"retry_after_s": 5})
    conn = await connect(pg_schema)
    await seed(conn, pg_schema, "alpha", datetime.now(UTC), 100, 1.0)
    monitor: list[tuple[str, float]] = []
    async with ReadSide(settings, clock, lambda op, s: monitor.append((op, s))) as read:
        up = await read.stats.report("1h", "alpha")
        private_redis.stop()
        down = await read.stats.report("1h", "alpha")  # fails over, computes
        assert down.agents == up.agents
        stats = read.cache_stats()
        assert (stats.errors, stats.fallbacks, stats.redis) == (1, 1, "open")
        again = await read.stats.report("1h", "alpha")  # from memory, Redis not tried
        assert again == down and read.cache_stats().errors == 1
        assert read.cache_stats().fallbacks == 2
        await seed(conn, pg_schema, "alpha", datetime.now(UTC), 10, 0.1)
        await read.on_stored(frozenset({"alpha"}))  # missed by Redis, remembered
        fresh = await read.stats.report("1h", "alpha")
        assert fresh.agents[0].latency.span_count == 110
        private_redis.start()
        # the stale entry stored before the outage would come back with Redis...
        client = Redis.from_url(private_redis.url)
        await client.set("p:obs_metrics:1h:alpha", up.model_dump_json(), px=60_000)
        clock.advance(5.1)  # ...but first the breaker lets a trial through
        back = await read.stats.report("1h", "alpha")
        assert back.agents[0].latency.span_count == 110  # missed invalidation replayed
        assert read.cache_stats().redis == "closed"
        assert await client.get("p:obs_metrics:1h:alpha") is not None  # stored again
        hits = read.cache_stats().hits
        await read.stats.report("1h", "alpha")
        assert read.cache_stats().hits == hits + 1
        await client.aclose()
    await conn.close()
    assert {op for op, _ in monitor} == {"cache"}


async def test_a_black_holed_redis_costs_one_timeout_not_one_per_request(
        pg_schema: str) -> None:
    """A Redis that accepts connections and never answers: the first request waits
    redis.timeout_s, the next ones go straight to memory."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    settings = make_settings(pg_schema, "", f"redis://127.0.0.1:{port}/0",
                             redis={"timeout_s": 0.2})
    cache = MetricsCache(settings.cache, settings.redis, FakeClock())
    compute = Computations()
    loop = asyncio.get_running_loop()
    try:
        async with cache:
            start = loop.time()
            assert await cache.get_or_compute("1h", None, compute) == b"value-1"
            first = loop.time() - start
            start = loop.time()
            for _ in range(20):
                assert await cache.get_or_compute("1h", None, compute) == b"value-1"
            rest = loop.time() - start
    finally:
        listener.close()
    assert first >= 0.2 and rest < 0.05
    assert cache.stats().fallbacks == 21 and compute.calls == 1


async def test_memory_backend_caches_without_redis_and_expires(pg_schema: str) -> None:
    clock = FakeClock()
    settings = make_settings(pg_schema, redis_url="redis://127.0.0.1:1/0",
                             cache={"backend": "memory", "ttl_s": {"1h": 60}})
    cache = MetricsCache(settings.cache, settings.redis, clock)
    compute = Computations()
    async with cache:
        assert await cache.get_or_compute("1h", "a", compute) == b"value-1"
        assert await cache.get_or_compute("1h", "a", compute) == b"value-1"
        clock.advance(61)
        assert await cache.get_or_compute("1h", "a", compute) == b"value-2"
        await cache.invalidate(frozenset({"a"}))
        assert await cache.get_or_compute("1h", "a", compute) == b"value-3"
        assert await cache.get_or_compute("2h", "a", compute) == b"value-4"  # no TTL: uncached
        assert await cache.get_or_compute("2h", "a", compute) == b"value-5"
    s = cache.stats()
    assert (s.backend, s.hits, s.misses, s.fallbacks, s.errors) == ("memory", 1, 3, 0, 0)


async def test_a_value_computed_across_an_invalidation_is_not_cached(
        pg_schema: str, redis_prefix: str) -> None:
    """Spans stored while stats were being computed make that answer stale: it is
    returned but not cached."""
    settings = make_settings(pg_schema, redis_prefix)
    cache = MetricsCache(settings.cache, settings.redis, FakeClock())

    async with cache:
        async def racing() -> bytes:
            await cache.invalidate(frozenset({"a"}))
            return b"stale"

        assert await cache.get_or_compute("1h", "a", racing) == b"stale"
        compute = Computations()
        assert await cache.get_or_compute("1h", "a", compute) == b"value-1"


async def test_cache_counters_are_in_metrics(pg_schema: str, redis_prefix: str) -> None:
    settings = make_settings(pg_schema, redis_prefix)
    cache = MetricsCache(settings.cache, settings.redis, FakeClock())
    metrics = Metrics(sinks=list, spool=lambda: SpoolStats(0, 0), status=lambda: "healthy")
    metrics.add_cache(cache.stats)
    async with cache:
        compute = Computations()
        await cache.get_or_compute("1h", None, compute)
        await cache.get_or_compute("1h", None, compute)
    text = metrics.render().decode()
    assert 'span_sidecar_cache_requests_total{backend="redis",result="hit"} 1.0' in text
    assert 'span_sidecar_cache_requests_total{backend="redis",result="miss"} 1.0' in text
    assert 'span_sidecar_cache_requests_total{backend="redis",result="fallback"} 0.0' in text
    assert "span_sidecar_cache_errors_total 0.0" in text
    assert 'span_sidecar_cache_redis_breaker_state{state="closed"} 1.0' in text


def test_cache_settings_refuse_bad_windows_and_keep_contract_defaults() -> None:
    s = Settings()
    assert s.cache.ttl_s == {"1h": 60, "24h": 300, "7d": 600}
    assert s.cache.backend == "redis" and s.retention.ttl_days is None
    assert s.retention.interval_s == 3600
    with pytest.raises(ValueError):
        Settings.model_validate({"cache": {"ttl_s": {"1 week": 5}}})
    with pytest.raises(ValueError):
        Settings.model_validate({"cache": {"backend": "memcached"}})
