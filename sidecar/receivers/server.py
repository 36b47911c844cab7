"""The receivers' HTTP server: Opik's REST write paths under ``/api/``, OTLP at
``/v1/traces``, every answer after the append.

Checked in this order, each refusal with its reason in the body and nothing
appended: the bearer token (401), the body's declared size
(``receivers.max_request_bytes``, 413; read bodies, gzip undone, are held to
it too), the bytes of all bodies being handled at once
(``receivers.max_inflight_bytes``, 503 with Retry-After), the content type
(415), the body (400). A path the receiver does not implement answers 501
naming it, never a silent 200: an SDK that depends on it fails loudly.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import orjson
import structlog
from aiohttp import web

from sidecar.config.settings import ReceiversSettings
from sidecar.health.http import parse_listen, start_runner
from sidecar.receivers import opik_api
from sidecar.receivers.appender import Appender
from sidecar.receivers.errors import BadRequest, Refused
from sidecar.snapshots import QuotaStats

log = structlog.get_logger("sidecar.receivers")


class OtlpResult(Protocol):
    """What ``sidecar/receivers/otlp.py: parse_otlp`` answers: 200 with the
    records to append and the body to answer after, or a client error. The
    records are appended as they are, not parsed again: a parser mounted
    here makes only records the spool takes (``Appender.mapped_lines``)."""

    @property
    def status(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def content_type(self) -> str: ...
    @property
    def records(self) -> list[dict[str, Any]]: ...
    @property
    def reason(self) -> str | None: ...


# body, Content-Type, Content-Encoding still applying (None: aiohttp inflated it)
OtlpParser = Callable[[bytes, str, str | None], OtlpResult]
RETRY_INFLIGHT_S = 1
_JSON = "application/json"


def _answer(status: int, data: Any = None, retry_after_s: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    if data is None:
        return web.Response(status=status, headers=headers)
    return web.Response(status=status, body=orjson.dumps(data), content_type=_JSON,
                        headers=headers)


class ReceiverServer:
    """Entered as an async context manager: listen, then stop listening and
    mark the receiver's spool file done."""

    def __init__(self, settings: ReceiversSettings, spool_dir: Path,
                 quota: Callable[[], QuotaStats] | None = None,
                 otlp: OtlpParser | None = None) -> None:
        self.settings = settings
        self._host, self._wanted_port = parse_listen(settings.listen)
        self._token = settings.token.get_secret_value().encode() if settings.token else None
        self.appender = Appender(spool_dir, settings.fsync, quota)
        self._otlp = otlp
        self.inflight_bytes = 0
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the receiver is not started")
        return int(self._runner.addresses[0][1])

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_bytes,
                              middlewares=[self._guard])
        app.router.add_get("/api/is-alive/ping", self._ping)
        app.router.add_get("/api/is-alive/ver", self._version)
        for (method, path), handler in opik_api.ROUTES.items():
            app.router.add_route(method, "/api" + path, self._opik(handler))
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_route("*", "/{tail:.*}", self._not_implemented)
        return app

    async def __aenter__(self) -> ReceiverServer:
        self._runner = await start_runner(self.app(), self._host, self._wanted_port,
                                          shutdown_timeout_s=5.0)
        log.info("receivers.server.started", host=self._host, port=self.port,
                 token=self._token is not None)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening, let the requests being handled finish (up to 5 s),
        mark the spool file done. The app calls it at the stop, before the
        drain takes its snapshot of the spool; again on exit, a no-op."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            log.info("receivers.server.stopped")
        self.appender.close()

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
        try:
            self._authorize(request)
            size = request.content_length
            if size is not None and size > self.settings.max_request_bytes:
                raise Refused(f"the body is larger than {self.settings.max_request_bytes} "
                              "bytes (receivers.max_request_bytes)", 413)
            reserved = size if size is not None else self.settings.max_request_bytes
            if request.body_exists and \
                    self.inflight_bytes + reserved > self.settings.max_inflight_bytes:
                raise Refused("too many bytes in flight (receivers.max_inflight_bytes); "
                              "retry later", 503, RETRY_INFLIGHT_S)
            self.inflight_bytes += reserved
            try:
                return await handler(request)
            finally:
                self.inflight_bytes -= reserved
        except Refused as exc:
            log.info("receivers.request.refused", method=request.method, path=request.path,
                     status=exc.status, reason=exc.reason)
            return _answer(exc.status, {"errors": [exc.reason]}, exc.retry_after_s)

    def _authorize(self, request: web.Request) -> None:
        if self._token is None:
            return
        # "Bearer <token>", or the token alone: what the Opik SDK sends (OPIK_API_KEY)
        given = request.headers.get("Authorization", "").strip()
        scheme, _, rest = given.partition(" ")
        value = rest.strip() if scheme.lower() == "bearer" else given
        if not hmac.compare_digest(value.encode(), self._token):
            raise Refused("a bearer token is required (Authorization: Bearer <token>)", 401)

    async def _body(self, request: web.Request, types: tuple[str, ...] | None) -> bytes:
        """The body, inflated; ``types``: the content types taken (None: any)."""
        if types is not None and request.content_type not in types:
            raise Refused(f"content type {request.content_type or 'none'} is not "
                          f"accepted here; send {' or '.join(types)}", 415)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refused(f"the body is larger than {self.settings.max_request_bytes} "
                          "bytes (receivers.max_request_bytes)", 413) from None
        except Exception as exc:  # a broken gzip stream, a dropped connection
            raise BadRequest(f"unreadable body: {type(exc).__name__}") from None

    def _opik(self, handler: opik_api.Handler) -> Callable[[web.Request],
                                                            Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            raw = await self._body(request, (_JSON,))
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"not JSON: {exc}") from None
            items = handler(body, request.match_info, request.headers.get("Comet-Workspace"))
            await self._store(items, request.path)
            return _answer(204)
        return route

    async def _traces(self, request: web.Request) -> web.Response:
        """OTLP/HTTP: the parser decides the answer; records are appended first."""
        if self._otlp is None:
            return await self._not_implemented(request)
        raw = await self._body(request, None)
        result = self._otlp(raw, request.headers.get("Content-Type", ""), None)
        if result.status != 200:  # its body is the google.rpc.Status the exporters read
            log.info("receivers.request.refused", method=request.method, path=request.path,
                     status=result.status, reason=result.reason)
            return web.Response(status=result.status, body=result.body,
                                headers={"Content-Type": result.content_type})
        lines = self.appender.mapped_lines(result.records)  # built by parse_otlp: no re-check
        if lines:
            await self.appender.append(lines)
        log.debug("receivers.request.stored", path=request.path, records=len(lines))
        return web.Response(status=200, body=result.body,
                            headers={"Content-Type": result.content_type})

    async def _store(self, items: list[dict[str, Any]], path: str) -> None:
        lines = self.appender.lines(items, [f"item {i}" for i in range(len(items))])
        if lines:
            await self.appender.append(lines)
        log.debug("receivers.request.stored", path=path, records=len(lines))

    async def _ping(self, request: web.Request) -> web.Response:
        return _answer(200, {"healthy": True})

    async def _version(self, request: web.Request) -> web.Response:
        from sidecar import __version__

        return _answer(200, {"version": f"span-sidecar {__version__}"})

    async def _not_implemented(self, request: web.Request) -> web.Response:
        reason = f"{request.method} {request.path} is not implemented by span-sidecar's receiver"
        log.warning("receivers.path.not_implemented", method=request.method, path=request.path)
        return _answer(501, {"errors": [reason]})
