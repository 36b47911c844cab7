"""``GET /stats`` is safe to expose: no agent name reaches the all-agents cache
entry, windows are capped at ``stats.max_window`` (400 naming it), and no query
string answers 500. Against the real handler: the probe server with the read
side's ``stats_http`` on a real Postgres and Redis."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from sidecar.clock import SystemClock
from sidecar.config.settings import HttpSettings
from sidecar.health.http import HttpServer
from sidecar.read.cache import ALL_AGENTS, agent_key
from sidecar.read.service import ReadSide
from tests.read.conftest import REDIS_URL, connect, make_settings, seed
from tests.support import PG_DSN, REPO


@dataclass
class Served:
    port: int
    read: ReadSide
    prefix: str

    def get(self, query: str) -> tuple[int, Any]:
        """A GET of ``/stats?{query}`` as written (a client library would re-encode it)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", f"/stats?{query}")
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


async def serve(schema: str, prefix: str, **sections: dict[str, Any]) -> AsyncIterator[Served]:
    conn = await connect(schema)
    await seed(conn, schema, "alpha", datetime.now(UTC), 50, 1.0)
    await seed(conn, schema, "beta", datetime.now(UTC), 20, 1.0)
    await conn.close()
    settings = make_settings(schema, prefix, REDIS_URL, **sections)
    http_settings = HttpSettings(listen="127.0.0.1:0")
    async with ReadSide(settings, SystemClock()) as read, \
            HttpServer(http_settings, lambda: b"", lambda: (True, [])) as server:
        server.set_stats_handler(read.stats_http)
        yield Served(server.port, read, prefix)


@pytest.fixture
async def served(pg_schema: str, redis_prefix: str) -> AsyncIterator[Served]:
    async for s in serve(pg_schema, redis_prefix):
        yield s


def names(body: dict[str, Any]) -> list[str | None]:
    return [a["agent_name"] for a in body["agents"]]


async def test_agent_star_neither_reads_nor_writes_the_all_agents_entry(served: Served) -> None:
    """``agent=*`` (the old poisoning: an empty answer cached as "all agents" for
    10 minutes) answers for an agent named ``*`` under its own key."""
    for window in ("1h", "24h", "7d"):
        status, body = await asyncio.to_thread(served.get, f"window={window}&agent=%2A")
        assert (status, body["agents"]) == (200, [])
        status, body = await asyncio.to_thread(served.get, f"window={window}")
        assert status == 200 and names(body) == ["alpha", "beta"]
    redis = Redis.from_url(REDIS_URL)
    keys = sorted([k.decode() async for k in redis.scan_iter(match=f"{served.prefix}*")])
    await redis.aclose()
    assert keys == sorted(f"{served.prefix}obs_metrics:{w}:{n}"
                          for w in ("1h", "24h", "7d") for n in ("*", "%2A"))


@given(st.text(max_size=40), st.text(max_size=40))
def test_no_agent_name_has_the_all_agents_key_and_no_two_share_one(a: str, b: str) -> None:
    assert agent_key(a) != ALL_AGENTS
    assert (agent_key(a) == agent_key(b)) == (a == b)
    assert agent_key(None) == ALL_AGENTS


def test_plain_agent_names_keep_the_contract_key_shape() -> None:
    for name in ("alpha", "web-frontend", "billing.v2", "team:agent", "span-sidecar"):
        assert agent_key(name) == name
    assert agent_key("a b") == "a%20b" and agent_key("100%") == "100%25"


async def test_windows_past_max_window_get_400_naming_the_limit(served: Served) -> None:
    for window in ("32d", "745h", "9999d", "999999d", "44641m"):
        status, body = await asyncio.to_thread(served.get, f"window={window}")
        assert status == 400, (window, body)
        assert body["error"] == f"window {window} is longer than stats.max_window (31d)"
    for window in ("31d", "744h", "44640m"):
        status, body = await asyncio.to_thread(served.get, f"window={window}")
        assert status == 200 and names(body) == ["alpha", "beta"]


async def test_equal_windows_share_the_configured_entry(served: Served) -> None:
    """``60m`` is ``1h``: it is answered from (and cached as) the 1h entry, with its TTL."""
    first = await served.read.stats.report("60m")
    assert first.window == "1h" and served.read.cache_stats().misses == 1
    await served.read.stats.report("1h")
    assert served.read.cache_stats().hits == 1


async def test_a_configured_cap_beyond_the_calendar_answers_not_500(
        pg_schema: str, redis_prefix: str) -> None:
    """With ``stats.max_window: 999999d`` (~2,700 years), that window means every span."""
    async for s in serve(pg_schema, redis_prefix, stats={"max_window": "999999d"}):
        status, body = await asyncio.to_thread(s.get, "window=999999d")
        assert status == 200 and names(body) == ["alpha", "beta"]
        status, body = await asyncio.to_thread(s.get, "window=99999m&agent=beta")
        assert status == 200 and names(body) == ["beta"]


TOKENS = ["window", "agent", "=", "&", ";", "+", "%", "%2", "%2A", "%00", "%ED%A0%80", "%FF",
          "%C3%A9", "%0A", "*", "1", "0", "9", "31", "32", "999999", "h", "d", "m", "w", "-",
          "alpha", "span-sidecar", "%25", "%3D", "%26"]
raw_queries = st.lists(st.sampled_from(TOKENS), max_size=12).map("".join)
windows = st.one_of(
    st.text(max_size=30),
    st.builds("{}{}".format, st.one_of(st.integers(-1, 2_000_000), st.integers()),
              st.sampled_from(["m", "h", "d", "w", ""])))
agents = st.one_of(st.text(max_size=30), st.sampled_from(["*", "span-sidecar", "\x00", "", "%"]))
encoded_queries = st.fixed_dictionaries(
    {}, optional={"window": windows, "agent": agents, "other": st.text(max_size=5)},
).map(urlencode)


async def test_no_query_string_gives_a_500(served: Served) -> None:
    """Any window and agent text, percent-encoded or raw bytes: 200 or 400, and a
    400 says what was wrong."""
    seen: set[int] = set()

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(raw_queries, encoded_queries))
    @example("window=999999d")  # the first release: OverflowError, 500
    @example("window=1h&agent=%00")
    def prop(query: str) -> None:
        status, body = served.get(query)
        assert status in (200, 400), (query, status, body)
        assert status == 200 or body["error"]
        seen.add(status)

    await asyncio.to_thread(prop)
    assert seen == {200, 400}


def test_stats_command_refuses_a_window_past_the_cap(tmp_path: Path, pg_schema: str) -> None:
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(yaml.safe_dump({
        "postgres": {"dsn": PG_DSN, "schema": pg_schema}, "redis": {"url": REDIS_URL},
        "opik": {"enabled": False}, "stats": {"max_window": "7d"},
        "spool": {"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state")}}))
    for window, code in (("8d", 2), ("9999d", 2), ("999999d", 2), ("7d", 0)):
        out = subprocess.run([sys.executable, "-m", "sidecar", "stats", "--window", window,
                              "--config", str(cfg)], capture_output=True, text=True, cwd=REPO,
                             timeout=60, env=dict(os.environ))
        assert out.returncode == code, (window, out.stderr)
        if code == 2:
            assert out.stderr.strip() == (f"span-sidecar stats: window {window} is longer than "
                                          "stats.max_window (7d)")
    bad = subprocess.run([sys.executable, "-m", "sidecar", "stats", "--agent", "a\x01" * 300,
                          "--config", str(cfg)], capture_output=True, text=True, cwd=REPO,
                         timeout=60, env=dict(os.environ))
    assert bad.returncode == 2 and "invalid agent" in bad.stderr
