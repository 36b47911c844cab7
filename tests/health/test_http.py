"""The probe server on a real loopback port: /healthz, /readyz, /metrics, /stats."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.clock import FakeClock
from sidecar.config.settings import HttpSettings, SpoolSettings
from sidecar.health.http import HttpServer, readiness_check
from sidecar.health.metrics import Metrics
from sidecar.snapshots import SpoolStats

from .conftest import SinkFactory

LOOPBACK = HttpSettings(listen="127.0.0.1:0")


class Ready:
    def __init__(self) -> None:
        self.result: tuple[bool, Sequence[str]] = (True, [])

    def __call__(self) -> tuple[bool, Sequence[str]]:
        return self.result


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        yield client


async def get(client: aiohttp.ClientSession, server: HttpServer, path: str
              ) -> tuple[int, str, str]:
    async with client.get(f"http://127.0.0.1:{server.port}{path}") as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def wait_for_status(client: aiohttp.ClientSession, server: HttpServer, path: str,
                          status: int, deadline_s: float = 5.0) -> None:
    """Poll until ``path`` answers ``status``: waiting on a condition, with a deadline.

    Polling is the point here: a prober has no event to wait on either.
    """
    async with asyncio.timeout(deadline_s):
        while (await get(client, server, path))[0] != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def beating(server: HttpServer) -> AsyncIterator[HttpServer]:
    """The server with its heartbeat running, as the app's TaskGroup runs it."""
    stop = asyncio.Event()
    async with server, asyncio.TaskGroup() as tg:
        tg.create_task(server.run(stop))
        try:
            yield server
        finally:
            stop.set()


async def test_healthz_answers_200_while_the_loop_runs(session: aiohttp.ClientSession) -> None:
    async with HttpServer(LOOPBACK, metrics=bytes, readiness=Ready()) as server:
        assert server.port > 0
        status, ctype, body = await get(session, server, "/healthz")
    assert status == 200 and ctype.startswith("application/json")
    assert '"ok"' in body


async def test_healthz_fails_after_the_loop_was_blocked(session: aiohttp.ClientSession) -> None:
    """A blocked loop fails the first probe after it unblocks, then recovers."""
    server = HttpServer(LOOPBACK, metrics=bytes, readiness=Ready(), heartbeat_s=0.05,
                        stale_after_s=0.5)
    async with beating(server):
        await wait_for_status(session, server, "/healthz", 200)
        time.sleep(0.8)  # noqa: ASYNC251 - the thing under test: a coroutine blocking the loop
        status, _, body = await get(session, server, "/healthz")
        assert status == 503, body
        assert "event loop" in body
        await wait_for_status(session, server, "/healthz", 200)


async def test_healthz_fails_when_the_heartbeat_is_stale(session: aiohttp.ClientSession) -> None:
    """Stale heartbeat (the handler ran first, or the heartbeat task died): 503."""
    clock = FakeClock()
    server = HttpServer(LOOPBACK, metrics=bytes, readiness=Ready(), clock=clock,
                        heartbeat_s=60.0, stale_after_s=5.0)
    async with server:
        assert (await get(session, server, "/healthz"))[0] == 200
        clock.advance(6)
        status, _, body = await get(session, server, "/healthz")
    assert status == 503 and "heartbeat is 6.0 s old" in body


async def test_readyz_reports_reasons(session: aiohttp.ClientSession) -> None:
    ready = Ready()
    async with HttpServer(LOOPBACK, metrics=bytes, readiness=ready) as server:
        assert (await get(session, server, "/readyz"))[0] == 200
        ready.result = (False, ["state directory /x is not writable"])
        status, _, body = await get(session, server, "/readyz")
    assert status == 503
    assert body == '{"ready": false, "reasons": ["state directory /x is not writable"]}'


async def test_readyz_accepts_async_checks_and_survives_their_errors(
    session: aiohttp.ClientSession,
) -> None:
    async def broken() -> tuple[bool, Sequence[str]]:
        raise OSError("boom")

    async with HttpServer(LOOPBACK, metrics=bytes, readiness=broken) as server:
        status, _, body = await get(session, server, "/readyz")
    assert status == 503 and "OSError" in body


async def test_metrics_serves_the_exposition_text(
    session: aiohttp.ClientSession, make_sink: SinkFactory
) -> None:
    metrics = Metrics(sinks=lambda: [make_sink(records_shipped=9)],
                      spool=lambda: SpoolStats(1, 2), status=lambda: "healthy")
    async with HttpServer(LOOPBACK, metrics=metrics.render, readiness=Ready()) as server:
        status, ctype, body = await get(session, server, "/metrics")
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert 'span_sidecar_records_shipped_total{sink="postgres"} 9.0' in body


async def test_metrics_failure_is_a_500(session: aiohttp.ClientSession) -> None:
    def broken() -> bytes:
        raise RuntimeError("collector bug")

    async with HttpServer(LOOPBACK, metrics=broken, readiness=Ready()) as server:
        assert (await get(session, server, "/metrics"))[0] == 500


async def test_stats_is_404_until_a_handler_is_registered(
    session: aiohttp.ClientSession,
) -> None:
    async def stats(query: Mapping[str, str]) -> Any:
        if query.get("window") not in ("1h", "24h", "7d"):
            raise ValueError("window must be 1h, 24h or 7d")
        return {"window": query["window"], "agent": query.get("agent")}

    async with HttpServer(LOOPBACK, metrics=bytes, readiness=Ready()) as server:
        assert (await get(session, server, "/stats"))[0] == 404
        server.set_stats_handler(stats)
        status, _, body = await get(session, server, "/stats?window=1h&agent=a1")
        assert (status, body) == (200, '{"window": "1h", "agent": "a1"}')
        status, _, body = await get(session, server, "/stats?window=2y")
        assert status == 400 and "window must be" in body


async def test_only_get_is_served(session: aiohttp.ClientSession) -> None:
    async with HttpServer(LOOPBACK, metrics=bytes, readiness=Ready()) as server:
        url = f"http://127.0.0.1:{server.port}/healthz"
        async with session.post(url, data=b"x" * 10_000) as resp:
            assert resp.status == 405
        async with session.get(f"http://127.0.0.1:{server.port}/nope") as resp:
            assert resp.status == 404


async def test_the_port_is_released_on_exit() -> None:
    async with HttpServer(LOOPBACK, metrics=bytes, readiness=Ready()) as server:
        port = server.port
    settings = HttpSettings(listen=f"127.0.0.1:{port}")
    async with HttpServer(settings, metrics=bytes, readiness=Ready()) as again:
        assert again.port == port


def test_readiness_check_names_each_problem(tmp_path: Path, make_sink: SinkFactory) -> None:
    """Unready for an unreadable spool or an unwritable state directory, and says which."""
    spool = SpoolSettings(dir=tmp_path / "spool", state_dir=tmp_path / "state")
    ok, reasons = readiness_check(spool, lambda: [make_sink("postgres")])()
    assert not ok
    assert reasons == [
        f"spool directory {tmp_path / 'spool'} is not readable",
        f"state directory {tmp_path / 'state'} is not writable",
    ]
    (tmp_path / "spool").mkdir()
    (tmp_path / "state").mkdir()
    assert readiness_check(spool, lambda: [make_sink("postgres")])() == (True, [])


def test_open_breakers_are_information_not_unreadiness(
    tmp_path: Path, make_sink: SinkFactory
) -> None:
    """Every breaker open, or no sink: still ready (the spool buffers); the body says so."""
    spool = SpoolSettings(dir=tmp_path, state_dir=tmp_path)
    sinks = [make_sink("postgres", breaker="open"), make_sink("opik", breaker="half_open")]
    ok, notes = readiness_check(spool, lambda: sinks)()
    assert ok
    assert notes == [
        "information: sink postgres breaker is open; the spool buffers its records until "
        "it recovers",
        "information: sink opik breaker is half_open; the spool buffers its records until "
        "it recovers",
    ]
    assert readiness_check(spool, list)() == (
        True, ["information: no sink is enabled; records stay in the spool"])


@pytest.mark.parametrize("stall_s", [5.6, 6.0, 7.0])
def test_a_stall_past_the_deadline_fails_healthz_whichever_runs_first(stall_s: float) -> None:
    """A loop blocked longer than the 5 s deadline gives 503 whether the
    overdue tick or the probe runs first once it is free; counting a tick as a
    stall only when later than the whole deadline let a 2.5 s beat pass stalls
    of up to 7.5 s."""
    for tick_first in (True, False):
        clock = FakeClock()
        server = HttpServer(HttpSettings(listen="127.0.0.1:0"), metrics=bytes,
                            readiness=lambda: (True, []), clock=clock)
        beat = server.heartbeat
        beat.start()
        clock.advance(stall_s)  # the loop blocked right after a tick
        if tick_first:
            beat.tick()
        assert beat.problem() is not None, (stall_s, tick_first)
