"""``span-sidecar check-config --connect``: can each backend be reached?

Like Filebeat's ``test output``: every enabled sink is built through the
registry (``sidecar/sinks/registry.py``), entered, and asked its own
``check()``, the probe the daemon runs at start; so a sink added by its
module and its settings section is checked with nothing changed here. The
check is the daemon's, side effects included: the Postgres sink's connects
and, when the schema is missing or old and ``postgres.auto_migrate`` allows,
migrates it, as ``run`` would at start. The statistics cache's Redis gets a
``PING`` whenever the cache uses it (``cache.backend: redis``, the default).
Disabled sinks are listed as skipped.

Targets are shown as each section's ``target()`` (credentials masked) and
errors pass through the one scrub of ``sidecar.config.secrets`` (the
configured secrets registered at start, and anything shaped like a
credential) before they are shown; a sink's own log line says why its check
failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sidecar.clock import SystemClock
from sidecar.config.secrets import mask_url, scrub
from sidecar.config.settings import Settings
from sidecar.sinks.base import SinkContext
from sidecar.sinks.registry import build_sink, sink_sections

TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    target: str  # masked
    ok: bool | None  # None: not checked (disabled or not used)
    detail: str


async def _timed(name: str, target: str, probe: Callable[[], Awaitable[str | None]]) -> CheckResult:
    """``probe`` answers a detail when the backend answered, None when it did not."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            detail = await probe()
    except TimeoutError:
        return CheckResult(name, target, False, f"no answer within {TIMEOUT_S:g} s")
    except Exception as exc:
        return CheckResult(name, target, False, scrub(f"{type(exc).__name__}: {exc}")[:300])
    if detail is None:
        return CheckResult(name, target, False, "its check failed")
    ms = (time.monotonic() - started) * 1000
    return CheckResult(name, target, True, f"{detail} in {ms:.0f} ms")


async def _sink(name: str, settings: Settings) -> str | None:
    """The sink's own ``check()``, with the sink built and entered as the app does."""
    context = SinkContext(SystemClock(), probe_only=True)
    async with build_sink(name, settings, context) as sink:
        return "check passed" if await sink.check() else None


async def _redis(url: str) -> str:
    import redis.asyncio as aioredis

    client: Any = aioredis.from_url(url, socket_connect_timeout=TIMEOUT_S)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "PING answered"


async def check_all(settings: Settings) -> list[CheckResult]:
    """Check every enabled sink and the cache at once; never raises."""
    sections = sink_sections(settings)
    checks: list[Awaitable[CheckResult]] = [
        _timed(name, section.target(), partial(_sink, name, settings))
        for name, section in sections.items() if section.enabled]
    if settings.cache.backend == "redis":
        url = settings.redis.url
        checks.append(_timed("redis", mask_url(url), lambda: _redis(url)))
    results = list(await asyncio.gather(*checks))
    results += [CheckResult(name, section.target(), None, "disabled")
                for name, section in sections.items() if not section.enabled]
    return results


def render_checks(results: list[CheckResult]) -> str:
    """One line per backend: name, verdict, target, detail."""
    verdict = {True: "ok", False: "DOWN", None: "skipped"}
    return "\n".join(f"{r.name:<9} {verdict[r.ok]:<8} {r.target}: {r.detail}" for r in results)
