"""The stats cache's invalidations without the redis package (``sidecar/read/resp.py``),
against the real Redis: the keys go, the database the URL names is the one
used, an error reply or a stopped Redis opens the cache's breaker and the
missed keys go once Redis answers again; a URL with options keeps the package."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from sidecar.clock import FakeClock
from sidecar.read.cache import MetricsCache
from sidecar.read.resp import RespDeleter, RespError, Target, command, simple_target
from tests.read.conftest import REDIS_URL, RedisServer, make_settings


@pytest.mark.parametrize(("url", "target"), [
    ("redis://localhost:6379/0", Target("localhost", 6379, None, 0, None, None)),
    ("redis://10.0.0.7", Target("10.0.0.7", 6379, None, 0, None, None)),
    ("redis://:p%40ss@cache:6380/3", Target("cache", 6380, None, 3, None, "p@ss")),
    ("redis://bob:pw@cache/2", Target("cache", 6379, None, 2, "bob", "pw")),
    ("unix:///run/redis.sock", Target(None, 0, "/run/redis.sock", 0, None, None)),
    ("rediss://cache:6380/0", None),  # TLS: the redis package
    ("redis://cache:6379/0?socket_keepalive=true", None),  # options: the redis package
    ("unix:///run/redis.sock?db=2", None),
    ("redis://bob@cache/0", None),  # a username without a password
])
def test_plain_urls_are_read_as_the_redis_package_reads_them(
        url: str, target: Target | None) -> None:
    assert simple_target(url) == target


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert command("DEL", "a", "é") == b"*3\r\n$3\r\nDEL\r\n$1\r\na\r\n$2\r\n\xc3\xa9\r\n"


async def test_delete_removes_the_keys_in_the_database_the_url_names(redis_prefix: str) -> None:
    keys = [f"{redis_prefix}k{i}" for i in range(3)]
    db0, db3 = Redis.from_url(REDIS_URL), Redis.from_url("redis://127.0.0.1:6379/3")
    try:
        for key in keys:
            await db0.set(key, b"0")
            await db3.set(key, b"3")
        target = simple_target("redis://127.0.0.1:6379/3")
        assert target is not None
        deleter = RespDeleter(target, 1.0)
        assert await deleter.delete([*keys[:2], f"{redis_prefix}absent"]) == 2
        assert await deleter.delete(keys[2:]) == 1  # the same connection again
        await deleter.close()
        assert [await db3.exists(k) for k in keys] == [0, 0, 0]
        assert [await db0.exists(k) for k in keys] == [1, 1, 1]
    finally:
        await db0.delete(*keys)
        await db3.delete(*keys)
        await db0.aclose()
        await db3.aclose()


async def test_an_error_reply_raises_and_opens_the_caches_breaker(
        pg_schema: str, redis_prefix: str) -> None:
    """A password our Redis does not have: AUTH answers an error."""
    url = "redis://:wrong@127.0.0.1:6379/0"
    target = simple_target(url)
    assert target is not None
    deleter = RespDeleter(target, 1.0)
    with pytest.raises(RespError, match="AUTH"):
        await deleter.delete([f"{redis_prefix}k"])
    settings = make_settings(pg_schema, redis_prefix, url)
    async with MetricsCache(settings.cache, settings.redis, FakeClock()) as cache:
        await cache.invalidate(frozenset({"alpha"}))
        stats = cache.stats()
        assert (stats.errors, stats.redis) == (1, "open")


async def test_a_stopped_redis_fails_and_the_missed_keys_go_once_it_answers(
        pg_schema: str, private_redis: RedisServer) -> None:
    clock = FakeClock()
    settings = make_settings(pg_schema, "p:", private_redis.url, cache={"retry_after_s": 5})
    client = Redis.from_url(private_redis.url)
    async with MetricsCache(settings.cache, settings.redis, clock) as cache:
        await client.set("p:obs_metrics:1h:alpha", b"old")
        await cache.invalidate(frozenset({"beta"}))  # connects
        assert await client.exists("p:obs_metrics:1h:alpha") == 1
        private_redis.stop()
        await client.aclose()
        await cache.invalidate(frozenset({"alpha"}))  # the connection is gone: fails
        assert cache.stats().redis == "open"
        private_redis.start()
        client = Redis.from_url(private_redis.url)
        await client.set("p:obs_metrics:1h:alpha", b"stale")
        clock.advance(5.1)
        await cache.invalidate(frozenset({"beta"}))  # reconnects; alpha's replayed
        assert cache.stats().redis == "closed"
        assert await client.exists("p:obs_metrics:1h:alpha") == 0
    await client.aclose()


async def test_a_url_with_options_invalidates_through_the_redis_package(
        pg_schema: str, redis_prefix: str) -> None:
    url = "redis://127.0.0.1:6379/0?health_check_interval=30"
    settings = make_settings(pg_schema, redis_prefix, url)
    client = Redis.from_url(REDIS_URL)
    key = f"{redis_prefix}obs_metrics:1h:alpha"
    await client.set(key, b"old")
    async with MetricsCache(settings.cache, settings.redis, FakeClock()) as cache:
        await cache.invalidate(frozenset({"alpha"}))
        assert cache.stats().errors == 0
    assert await client.exists(key) == 0
    await client.aclose()
