"""The probe and scrape server: ``/healthz``, ``/readyz``, ``/metrics``, ``/stats``,
``/status`` (each sink's snapshot and catch-up pace, for ``span-sidecar status``).

``/healthz`` answers "is the event loop alive?". A handler cannot run while
the loop is blocked, so a blocked loop shows to the prober first as a timeout
(the kubelet's ``timeoutSeconds``). To make it *also* fail once the loop is
free again, a heartbeat task ticks every ``heartbeat_s`` (1 s) and the handler
answers 503 when either

- the last tick is older than ``stale_after_s`` (the handler ran before the
  heartbeat caught up, or the heartbeat task died), or
- the heartbeat saw a stall longer than ``stale_after_s`` (a tick arriving
  that late, less one beat: a stall that began between two ticks may be
  counted from up to one beat short of the deadline) within the last
  ``stale_after_s``.

Either order of "handler" and "heartbeat" after the loop unblocks therefore
yields 503 for the first probe after a stall, and 200 again once the loop has
been responsive for ``stale_after_s``.

Idle and slow clients cost a descriptor each, so none is kept long: a
connection has ``idle_timeout_s`` (default 5 s) to send a complete request head
after it opens, and as long again after each response before it is closed.
Both are aiohttp's ``keepalive_timeout``: recent aiohttp (3.14, what the tests
run) starts that timer at ``connection_made`` and closes the connection when it
fires with no complete request (aio-libs/aiohttp#13681); older releases start
it only after a first response. An accept that fails for lack of descriptors
(EMFILE, ENFILE, ENOBUFS, ENOMEM) is reported by asyncio to the loop's
exception handler and retried a second later; it never reaches this code and
cannot stop the daemon.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web

from sidecar.clock import Clock, SystemClock, every
from sidecar.config.settings import HttpSettings, SpoolSettings
from sidecar.health.metrics import CONTENT_TYPE
from sidecar.health.verdict import describe
from sidecar.snapshots import SinkStats

log = structlog.get_logger("sidecar.http")

ReadyResult = tuple[bool, Sequence[str]]
Readiness = Callable[[], ReadyResult | Awaitable[ReadyResult]]
# Gets the query parameters; returns JSON-serialisable data. Raises
# ValueError for a bad parameter (answered 400 with its message).
StatsHandler = Callable[[Mapping[str, str]], Awaitable[Any]]
# Probes and scrapes are GETs; nobody needs to send us a body.
MAX_REQUEST_BYTES = 4096
# How long a connection may stay open without a complete request head: after
# it opens, and after each response (keep-alive).
IDLE_TIMEOUT_S = 5.0


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` to (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


# The beat an idle sidecar wakes for most; a stall is a tick later than the
# deadline less one beat (Heartbeat.tick), so the beat hides none.
HEARTBEAT_S = 1.0


class Heartbeat:
    """Records when the loop last ran a tick and the worst recent stall."""

    def __init__(self, clock: Clock, interval_s: float, stale_after_s: float) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._stale_after_s = stale_after_s
        self.last_tick = clock.monotonic()
        self._stall_end = -float("inf")  # when the last long stall ended

    def start(self) -> None:
        """Forget the past: the server starts now, not when it was built."""
        self.last_tick = self._clock.monotonic()
        self._stall_end = -float("inf")

    def tick(self) -> None:
        """Note that the loop ran now, and whether it ran late."""
        now = self._clock.monotonic()
        # Blocked right after the last tick for S seconds, the loop runs this
        # tick S - interval late: every stall past the deadline is caught, and
        # one that began later within the beat may be counted from up to one
        # interval before the deadline.
        late = now - self.last_tick - self._interval_s
        if late > self._stale_after_s - self._interval_s:
            self._stall_end = now
            log.warning("health.loop.stalled", stalled_s=round(late, 3))
        self.last_tick = now

    def problem(self) -> str | None:
        """Why the loop is not healthy, or None."""
        now = self._clock.monotonic()
        age = now - self.last_tick
        if age > self._stale_after_s:
            return f"event loop heartbeat is {age:.1f} s old"
        if now - self._stall_end <= self._stale_after_s:
            return "event loop was blocked longer than the deadline"
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop``; a late wake-up is exactly what we measure."""
        await every(self._clock, self._interval_s, stop, self.tick)


async def start_runner(app: web.Application, host: str, port: int, *,
                       shutdown_timeout_s: float,
                       idle_timeout_s: float = IDLE_TIMEOUT_S) -> web.AppRunner:
    """Serve ``app`` on ``host:port``; cleaned up when the bind fails.

    The keep-alive is short: aiohttp (>= 3.14) starts its timer when a
    connection opens, so an idle client, or one that never finishes its request
    head, is closed after ``idle_timeout_s`` instead of holding a descriptor for
    an hour.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=shutdown_timeout_s, keepalive_timeout=idle_timeout_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


class HttpServer:
    """aiohttp server: entered as an async context manager (listen, stop
    listening); ``run(stop)`` keeps the heartbeat that ``/healthz`` reads,
    in the app's TaskGroup."""

    def __init__(
        self,
        settings: HttpSettings,
        metrics: Callable[[], bytes],
        readiness: Readiness,
        clock: Clock | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = 5.0,
        status: Callable[[], Any] | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self._host, self._wanted_port = parse_listen(settings.listen)
        self._idle_timeout_s = idle_timeout_s
        self._metrics = metrics
        self._readiness = readiness
        self._status = status
        self._stats: StatsHandler | None = None
        self.heartbeat = Heartbeat(clock or SystemClock(), heartbeat_s, stale_after_s)
        self._runner: web.AppRunner | None = None

    def set_stats_handler(self, handler: StatsHandler | None) -> None:
        """Serve ``GET /stats`` with ``handler`` (404 while none is set)."""
        self._stats = handler

    @property
    def port(self) -> int:
        """The bound port (useful with ``listen: 127.0.0.1:0``)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the HTTP server is not started")
        return int(self._runner.addresses[0][1])

    async def __aenter__(self) -> HttpServer:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/stats", self._stats_page)
        app.router.add_get("/status", self._status_page)
        self._runner = await start_runner(app, self._host, self._wanted_port,
                                          shutdown_timeout_s=2.0,
                                          idle_timeout_s=self._idle_timeout_s)
        self.heartbeat.start()
        log.info("http.server.started", host=self._host, port=self.port)
        return self

    async def run(self, stop: asyncio.Event) -> None:
        """Beat the heartbeat until ``stop`` (``/healthz`` fails without it)."""
        await self.heartbeat.run(stop)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = self.heartbeat.problem()
        if problem is not None:
            return _json(503, {"status": "unhealthy", "reasons": [problem]})
        return _json(200, {"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            result = self._readiness()
            ok, reasons = await result if inspect.isawaitable(result) else result
        except Exception as exc:
            log.error("http.readiness.failed", error_type=type(exc).__name__)
            ok, reasons = False, [f"readiness check failed: {type(exc).__name__}"]
        return _json(200 if ok else 503, {"ready": ok, "reasons": list(reasons)})

    async def _metrics_page(self, request: web.Request) -> web.Response:
        try:
            body = self._metrics()
        except Exception as exc:
            log.error("http.metrics.failed", error_type=type(exc).__name__)
            return web.Response(status=500, text="metrics unavailable\n")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _status_page(self, request: web.Request) -> web.Response:
        if self._status is None:
            return _json(404, {"error": "status is not available"})
        try:
            return _json(200, self._status())
        except Exception as exc:
            log.error("http.status.failed", error_type=type(exc).__name__)
            return _json(500, {"error": "status failed"})

    async def _stats_page(self, request: web.Request) -> web.Response:
        if self._stats is None:
            return _json(404, {"error": "stats are not available"})
        try:
            data = await self._stats(dict(request.query))
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        except Exception as exc:
            log.error("http.stats.failed", error_type=type(exc).__name__)
            return _json(500, {"error": "stats failed"})
        return _json(200, data)


def _json(status: int, data: Any) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, default=str), content_type="application/json"
    )


def readiness_check(
    spool: SpoolSettings, sinks: Callable[[], Sequence[SinkStats]],
    health: Callable[[], Mapping[str, Any]] | None = None,
) -> Callable[[], ReadyResult]:
    """The default ``/readyz`` check for the app.

    Ready means what restarting the sidecar or taking its pod out of service
    could fix: the configuration was loaded (or there would be no settings to
    pass), the spool is readable and the state directory writable. A sink's
    breaker being open is not a reason: in a pod, every container's readiness
    gates the pod's, so failing here would unroute the agent during a backend
    outage that the spool exists to buffer. Open and half-open breakers, and a
    sidecar with no sink enabled, are listed after the reasons, marked as
    information, so that a person reading the body still sees them; so is
    each reason of a health verdict that is not healthy (``health``, the
    monitor's ``explain``), with when it clears.
    """

    def check() -> ReadyResult:
        reasons = []
        if not (spool.dir.is_dir() and os.access(spool.dir, os.R_OK | os.X_OK)):
            reasons.append(f"spool directory {spool.dir} is not readable")
        state = spool.state_dir
        if not (state.is_dir() and os.access(state, os.W_OK | os.X_OK)):
            reasons.append(f"state directory {state} is not writable")
        notes = _sink_notes(sinks()) + (_health_notes(health()) if health else [])
        return not reasons, reasons + notes

    return check


def _health_notes(verdict: Mapping[str, Any]) -> list[str]:
    """The verdict's reasons (none when healthy), as information."""
    return [f"information: health {verdict['status']}: {describe(r)}"
            for r in verdict.get("reasons") or ()]


def _sink_notes(stats: Sequence[SinkStats]) -> list[str]:
    """Sink states worth a look, none of which makes the sidecar unready."""
    if not stats:
        return ["information: no sink is enabled; records stay in the spool"]
    return [f"information: sink {s.sink} breaker is {s.breaker.state}; the spool buffers "
            "its records until it recovers" for s in stats if s.breaker.state != "closed"]
