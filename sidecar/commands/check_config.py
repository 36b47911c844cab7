"""``span-sidecar check-config --connect``: can each backend be reached?

Like Filebeat's ``test output``: Postgres (connect and ``SELECT 1``), Opik
(the ping endpoint, with the sink's own TLS settings and headers) and Redis
(``PING``, only when the config has a Redis URL). Disabled sinks are skipped.
Targets are shown with their credentials masked (``mask_url``: userinfo
password, secret-named query parameters) and errors pass through the one
scrub of ``sidecar.config.secrets`` (the configured secrets registered at start,
and anything shaped like a credential) before they are shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sidecar.config.secrets import mask_url, scrub
from sidecar.config.settings import Settings

TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    target: str  # masked
    ok: bool | None  # None: not checked (disabled or not configured)
    detail: str


async def _timed(name: str, target: str, probe: Callable[[], Awaitable[str]]) -> CheckResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            detail = await probe()
    except TimeoutError:
        return CheckResult(name, target, False, f"no answer within {TIMEOUT_S:g} s")
    except Exception as exc:
        return CheckResult(name, target, False, scrub(f"{type(exc).__name__}: {exc}")[:300])
    ms = (time.monotonic() - started) * 1000
    return CheckResult(name, target, True, f"{detail} in {ms:.0f} ms")


async def _postgres(settings: Settings) -> str:
    import asyncpg

    pg = settings.postgres
    password = pg.password.get_secret_value() if pg.password else None
    conn = await asyncpg.connect(pg.dsn, timeout=min(pg.connect_timeout_s, TIMEOUT_S),
                                 password=password or None)
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return f"connected, PostgreSQL {version}"


async def _opik(settings: Settings) -> str:
    from sidecar.sinks.opik_http import client_for

    async with client_for(settings.opik) as client:
        response = await client.get("is-alive/ping", timeout=TIMEOUT_S)
    return f"HTTP {response.status_code} from is-alive/ping"


async def _redis(url: str) -> str:
    import redis.asyncio as aioredis

    client: Any = aioredis.from_url(url, socket_connect_timeout=TIMEOUT_S)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "PING answered"


def _redis_url(settings: Settings) -> str | None:
    """The Redis URL when the config has a ``redis`` section (it arrives with
    the statistics cache)."""
    section = getattr(settings, "redis", None)
    url = getattr(section, "url", None)
    return str(url) if url else None


async def check_all(settings: Settings) -> list[CheckResult]:
    """Try every configured backend at once; never raises."""
    checks: list[Awaitable[CheckResult]] = []
    pg, opik = settings.postgres, settings.opik
    if pg.enabled:
        checks.append(_timed("postgres", mask_url(pg.dsn), lambda: _postgres(settings)))
    if opik.enabled:
        checks.append(_timed("opik", mask_url(opik.url), lambda: _opik(settings)))
    url = _redis_url(settings)
    if url:
        checks.append(_timed("redis", mask_url(url), lambda: _redis(url)))
    results = list(await asyncio.gather(*checks))
    if not pg.enabled:
        results.append(CheckResult("postgres", mask_url(pg.dsn), None, "disabled"))
    if not opik.enabled:
        results.append(CheckResult("opik", mask_url(opik.url), None, "disabled"))
    return results


def render_checks(results: list[CheckResult]) -> str:
    """One line per backend: name, verdict, target, detail."""
    verdict = {True: "ok", False: "DOWN", None: "skipped"}
    return "\n".join(f"{r.name:<9} {verdict[r.ok]:<8} {r.target}: {r.detail}" for r in results)
