"""An Opik emulator on a loopback port, for the sink's and the daemon's tests.

It serves Opik's four ingestion endpoints under ``base_url``
(``http://127.0.0.1:PORT/api``) from its own thread and event loop, so that
async tests in this process and a daemon subprocess can both reach it::

    with OpikEmulator() as emu:              # or emu.start() ... emu.stop()
        settings = OpikSettings(url=emu.base_url)
        emu.fail(503)                        # modes: fail, rate_limit, stall,
        emu.healthy()                        #   refuse_connections, reject_ids
        emu.wait_for(lambda: len(emu.spans()) == 10, timeout=5)
        emu.spans()[span_id]["name"]         # what it stored, by id

Every body is checked as the real server does: with the ``opik`` package's
own REST models, plus the server's rules those models miss: v7 UUIDs,
timestamps with an offset, enums, int32 usage, cost >= 0, non-blank
error_info, 1..1000 items. Stored rows follow ClickHouse's ReplacingMergeTree:
one per id, the newest ``last_updated_at`` wins (ties: the last write).
Bodies sent with ``Content-Encoding: gzip`` are accepted (aiohttp inflates
them; ``SeenRequest.size`` is the inflated size, the ``content-length``
header the size on the wire). ``ssl_context=`` serves HTTPS instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

# The opik package would report errors and usage over the network outside
# pytest; nothing here may leave loopback, whoever imports this module.
os.environ.setdefault("OPIK_SENTRY_ENABLE", "false")
os.environ.setdefault("OPIK_ANALYTICS_ENABLE", "false")
from opik.rest_api.types import FeedbackScoreBatchItem, SpanWrite, TraceWrite

# kind -> (method, path under /api, key of the item list, the SDK's item model)
ROUTES: dict[str, tuple[str, str, str, type[BaseModel]]] = {
    "spans": ("POST", "/v1/private/spans/batch", "spans", SpanWrite),
    "traces": ("POST", "/v1/private/traces/batch", "traces", TraceWrite),
    "trace_scores": ("PUT", "/v1/private/traces/feedback-scores", "scores", FeedbackScoreBatchItem),
    "span_scores": ("PUT", "/v1/private/spans/feedback-scores", "scores", FeedbackScoreBatchItem),
}
_UUID_FIELDS = {"spans": ("id", "trace_id", "parent_span_id"), "traces": ("id",)}
_TIME_FIELDS = ("start_time", "end_time", "last_updated_at")
_TYPES = {"general", "tool", "llm", "guardrail"}
_INT32 = range(-(2**31), 2**31)
_SCORE_LIMIT = 999_999_999.999999999


class HttpError(Exception):
    """An answer other than 204; ``body`` in Opik's shape."""

    def __init__(self, status: int, message: str | list[str],
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.headers = headers or {}
        self.body = {"errors": message} if isinstance(message, list) else {
            "code": status, "message": message}


def _blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def _parse_time(value: Any) -> datetime | None:
    """An ISO 8601 instant with ``T`` and an offset, as Java's Instant wants."""
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _deserialize_errors(kind: str, item: Any, where: str) -> None:
    """What Jackson refuses while reading the body: 400."""
    if not isinstance(item, dict):
        raise HttpError(400, f"Unable to process JSON: {where} is not an object")
    for name in _TIME_FIELDS if kind in _UUID_FIELDS else ():
        if item.get(name) is not None and _parse_time(item[name]) is None:
            raise HttpError(400, f"Unable to process JSON: {where}.{name}: invalid instant "
                                 f"{item[name]!r} (needs Z or an offset)")


def _validation_errors(kind: str, item: dict[str, Any], where: str) -> list[str]:
    """Bean validation and the SDK model's own checks: 422 with every message."""
    try:
        model: Any = ROUTES[kind][3].model_validate(item)
    except ValidationError as exc:
        return [f"{where}.{'.'.join(map(str, e['loc']))} {e['msg']}" for e in exc.errors()]
    # The validated fields and the extra ones the models allow (a trace's
    # "type" or "usage" is checked all the same); getattr would find both,
    # through pydantic's __getattr__, at microseconds a field.
    fields = {**model.__dict__, **(model.__pydantic_extra__ or {})}
    usage = fields.get("usage") or {}
    info = fields.get("error_info")
    span_type = fields.get("type")
    checks = {
        "project_name must not be blank": "project_name" in item and _blank(item["project_name"]),
        f"type must be one of {sorted(_TYPES)}": span_type is not None and span_type not in _TYPES,
        "usage values must be int32": any(
            type(item["usage"][k]) is not int or v not in _INT32 for k, v in usage.items()),
        "total_estimated_cost must be greater than or equal to 0":
            (fields.get("total_estimated_cost") or 0) < 0,
        "error_info exception_type and traceback must not be blank": info is not None and (
            _blank(info.exception_type) or _blank(info.traceback)),
    }
    if kind.endswith("scores"):
        checks["name must not be blank"] = _blank(model.name)
        checks["value out of range"] = not -_SCORE_LIMIT <= model.value <= _SCORE_LIMIT
        checks["source must be one of ui, sdk, online_scoring"] = model.source not in (
            "ui", "sdk", "online_scoring")
    return [f"{where}.{message}" for message, failed in checks.items() if failed]


def _service_errors(kind: str, item: dict[str, Any], where: str, id_time: bool) -> None:
    """The service layer's checks: v7 ids (400), a span's trace id (5xx)."""
    for name in _UUID_FIELDS.get(kind, ("id",)):
        value = item.get(name)
        try:
            parsed = None if value is None else UUID(value)
        except (TypeError, ValueError, AttributeError):
            parsed = UUID(int=0)
        if parsed is not None and parsed.version != 7:
            raise HttpError(400, f"Invalid UUID: {where}.{name}={value!r} is not a version 7 UUID")
        if parsed is not None and id_time and abs((parsed.int >> 80) - time.time() * 1000) > 864e5:
            raise HttpError(400, f"Invalid UUID: {where}.{name} time is more than 24h from now")
    if kind == "spans" and item.get("trace_id") is None:  # inferred from Opik's code
        raise HttpError(500, "Internal Server Error")


def validate(kind: str, body: bytes, check_id_time: bool = False) -> list[dict[str, Any]]:
    """The items of a request body, or HttpError as the real server answers."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"Unable to process JSON: {exc}") from None
    key = ROUTES[kind][2]
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= 1000:
        raise HttpError(422, [f"{key} size must be between 1 and 1000"])
    for i, item in enumerate(items):
        _deserialize_errors(kind, item, f"{key}[{i}]")
    errors = [error for i, item in enumerate(items)
              for error in _validation_errors(kind, item, f"{key}[{i}]")]
    if errors:
        raise HttpError(422, errors)
    for i, item in enumerate(items):
        _service_errors(kind, item, f"{key}[{i}]", check_id_time)
    return items


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """One request as received (headers lower-cased) and how it was answered."""

    kind: str
    method: str
    status: int
    headers: dict[str, str]
    items: int
    size: int
    arrived: float = 0.0  # the emulator's clock when the request arrived
    seq: int = 0  # arrival order (``requests()`` is in order of answering)


@dataclass(slots=True)
class _Mode:
    kind: str = "ok"  # ok | fail | rate_limit | stall
    status: int = 503
    reset_s: float = 1.0  # the time a 429 names
    header: str | None = "RateLimit-Reset"  # the header that names it (None: none)
    hold_s: float | None = None  # how long a stall holds (None: until released)
    retry_after: float | None = None  # Retry-After header of a failure
    times: int | None = None  # None: until the next mode change
    then_store: bool = False


class OpikEmulator:
    """The emulated server. Thread-safe: modes and accessors work from any thread.

    Modes (each applies to the next requests; ``times=N`` to only N of them):
    ``fail(status)``, ``rate_limit(reset_s)`` (429 + ``RateLimit-Reset``, or
    ``header="Retry-After"``, or ``header=None``: no time named),
    ``stall()`` (hold requests until ``healthy()``, ``hold_s`` or ``stop()``,
    then answer 503, or store them with ``then_store=True``: processed but
    never answered in time), ``refuse_connections()`` (listener closed, open
    connections dropped; ``accept_connections()`` reopens the same port),
    ``reject_ids(ids, status)`` (any request holding one of these ids is
    refused whole, as the real server refuses a batch with one bad item),
    ``require_api_key(key, workspace)``. ``healthy()`` undoes all but the key.
    """

    def __init__(self, *, api_key: str | None = None, workspace: str | None = None,
                 max_body_bytes: int = 64 << 20, check_id_time: bool = False,
                 ssl_context: ssl.SSLContext | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api_key, self.workspace = api_key, workspace
        self.ssl_context = ssl_context  # serve HTTPS with this certificate
        self.max_body_bytes = max_body_bytes
        self.check_id_time = check_id_time  # Opik's optional "id time within 24 h"
        self.port = 0
        # What ``SeenRequest.arrived`` reads: a test's FakeClock.monotonic
        # compares arrivals with the times the sink under test waits on.
        self.clock = clock
        self._arrivals = 0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._mode = _Mode()
        self._rejects: dict[str, tuple[int, str]] = {}
        self._rows: dict[str, dict[Any, tuple[datetime, dict[str, Any]]]] = {k: {} for k in ROUTES}
        self._accepted: Counter[str] = Counter()  # kind -> items, duplicates included
        self._per_id: Counter[tuple[str, str]] = Counter()  # (kind, id) -> times accepted
        self._requests: list[SeenRequest] = []
        self._stalled = 0
        self._in_flight = self._peak_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._unstall = asyncio.Event()

    @property
    def base_url(self) -> str:
        """What ``opik.url`` / ``OPIK_URL_OVERRIDE`` should be."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/api"

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> OpikEmulator:
        """Start the server thread and listen on an ephemeral loopback port."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="opik-emulator",
                                        daemon=True)
        self._thread.start()
        self._call(self._open())
        return self

    def stop(self) -> None:
        """Release stalled requests, close every connection, end the thread."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> OpikEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- modes -------------------------------------------------------------
    def healthy(self) -> None:
        """Answer normally again: no failure mode, no rejected ids, listening."""
        with self._changed:
            self._mode, self._rejects = _Mode(), {}
        self._call(self._release())
        self.accept_connections()

    def fail(self, status: int = 503, times: int | None = None,
             retry_after: float | None = None) -> None:
        self._set_mode(_Mode("fail", status=status, times=times, retry_after=retry_after))

    def rate_limit(self, reset_s: float = 1.0, times: int | None = None,
                   header: str | None = "RateLimit-Reset") -> None:
        self._set_mode(_Mode("rate_limit", status=429, reset_s=reset_s, times=times,
                             header=header))

    def stall(self, hold_s: float | None = None, then_store: bool = False,
              times: int | None = None) -> None:
        self._call(self._rearm())
        self._set_mode(_Mode("stall", hold_s=hold_s, times=times, then_store=then_store))

    def refuse_connections(self) -> None:
        self._call(self._unlisten())

    def accept_connections(self) -> None:
        self._call(self._listen())

    def reject_ids(self, ids: Iterable[str | UUID], status: int = 400,
                   reason: str = "rejected by the emulator") -> None:
        with self._lock:
            self._rejects.update({str(UUID(str(i))): (status, reason) for i in ids})

    def require_api_key(self, key: str | None, workspace: str | None = None) -> None:
        with self._lock:
            self.api_key, self.workspace = key, workspace

    # -- what it saw and stored ---------------------------------------------
    def spans(self) -> dict[str, dict[str, Any]]:
        """Stored spans by id: the surviving version of each."""
        return self._rows_of("spans")

    def traces(self) -> dict[str, dict[str, Any]]:
        return self._rows_of("traces")

    def scores(self, target: str = "trace") -> dict[tuple[str, str], dict[str, Any]]:
        """Stored feedback scores of ``target`` ("trace" | "span") by (id, name)."""
        return self._rows_of(f"{target}_scores")

    def stored(self, kind: str = "spans") -> int:
        """How many distinct items of ``kind`` are stored (cheap: no copy)."""
        with self._lock:
            return len(self._rows[kind])

    def accepted(self, kind: str | None = None) -> int:
        """Items accepted (of one kind, or all), every resend counted again."""
        with self._lock:
            return self._accepted[kind] if kind else sum(self._accepted.values())

    def times_accepted(self, item_id: str | UUID, kind: str = "spans") -> int:
        with self._lock:
            return self._per_id[(kind, str(item_id))]

    def requests(self, kind: str | None = None) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self._requests if kind is None or r.kind == kind]

    def stalled(self) -> int:
        """Requests being held right now by ``stall()``."""
        with self._lock:
            return self._stalled

    def peak_in_flight(self) -> int:
        """The most ingestion requests ever handled at the same time."""
        with self._lock:
            return self._peak_in_flight

    def reset(self) -> None:
        """Forget what was stored and seen (modes stay)."""
        with self._changed:
            for rows in self._rows.values():
                rows.clear()
            self._accepted.clear()
            self._per_id.clear()
            self._requests.clear()
            self._peak_in_flight = self._in_flight

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0,
                 what: str = "condition") -> None:
        """Block until ``condition()`` holds, re-checking on every request;
        AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"opik emulator: no {what} within {timeout}s; "
                                         f"accepted {dict(self._accepted)}, "
                                         f"{len(self._requests)} requests")
                self._changed.wait(left)

    async def wait_for_async(self, condition: Callable[[], bool], timeout: float = 5.0,  # noqa: ASYNC109
                             what: str = "condition") -> None:
        """``wait_for`` without blocking the caller's event loop."""
        await asyncio.to_thread(self.wait_for, condition, timeout, what)

    # -- internals -----------------------------------------------------------
    def _call(self, coro: Any) -> Any:
        assert self._loop is not None, "emulator not started"
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(10)

    def _set_mode(self, mode: _Mode) -> None:
        with self._changed:
            self._mode = mode

    def _take_mode(self) -> _Mode:
        with self._lock:
            mode = self._mode
            if mode.times is not None:
                left = mode.times - 1
                self._mode = _Mode() if left <= 0 else replace(mode, times=left)
            return mode

    def _rows_of(self, kind: str) -> dict[Any, dict[str, Any]]:
        with self._lock:
            return {key: item for key, (_, item) in self._rows[kind].items()}

    def _routes(self, app: web.Application) -> None:
        """The paths served; a subclass may add its own."""
        for kind, (method, path, _, _) in ROUTES.items():
            app.router.add_route(method, "/api" + path, self._handler(kind))
        app.router.add_get("/api/is-alive/ping", self._ping)

    async def _open(self) -> None:
        self._unstall = asyncio.Event()
        app = web.Application(client_max_size=self.max_body_bytes)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        if self._site is not None:
            return
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))  # 0 the first time, then the same port
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock, ssl_context=self.ssl_context)
        await self._site.start()

    async def _unlisten(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
        assert self._runner is not None and self._runner.server is not None
        for connection in list(self._runner.server.connections):
            connection.force_close()  # keep-alive connections too: a dead server

    async def _close(self) -> None:
        await self._release()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None  # a later start() listens on the same port

    async def _release(self) -> None:
        self._unstall.set()

    async def _rearm(self) -> None:
        if self._unstall.is_set():
            self._unstall = asyncio.Event()

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({"healthy": True})

    def _handler(self, kind: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            with self._lock:
                self._in_flight += 1
                self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
                self._arrivals += 1
                seq, arrived = self._arrivals, self.clock()
            response, size, stored = _error(HttpError(500, "emulator bug")), 0, 0
            try:
                body = await request.read()
                size = len(body)
                stored = len(await self._answer(kind, request, body))
                response = web.Response(status=204)
            except web.HTTPRequestEntityTooLarge:
                response = _error(HttpError(413, "Request Entity Too Large"))
            except HttpError as exc:
                response = _error(exc)
            finally:
                headers = {k.lower(): v for k, v in request.headers.items()}
                with self._changed:
                    self._in_flight -= 1
                    self._requests.append(SeenRequest(kind, request.method, response.status,
                                                      headers, stored, size, arrived, seq))
                    self._changed.notify_all()
            return response
        return handle

    async def _answer(self, kind: str, request: web.Request, body: bytes) -> list[dict[str, Any]]:
        """Modes first (they stand for the infrastructure), then the server's checks."""
        mode = self._take_mode()
        if mode.kind == "stall":
            await self._hold(mode.hold_s)
            if not mode.then_store:
                raise HttpError(503, "stalled")
        elif mode.kind == "fail":
            after = {} if mode.retry_after is None else {"Retry-After": f"{mode.retry_after:g}"}
            raise HttpError(mode.status, f"emulated {mode.status}", after)
        elif mode.kind == "rate_limit":
            named = {} if mode.header is None else {mode.header: f"{mode.reset_s:g}"}
            raise HttpError(429, "Too Many Requests", named)
        self._check_auth(request)
        items = validate(kind, body, self.check_id_time)
        with self._lock:
            rejects = dict(self._rejects)
        for item in items:
            status, reason = rejects.get(str(item.get("id")), (0, ""))
            if status:
                raise HttpError(status, [reason] if status == 422 else reason)
        self._store(kind, items)
        return items

    async def _hold(self, hold_s: float | None) -> None:
        with self._changed:
            self._stalled += 1
            self._changed.notify_all()
        try:
            await asyncio.wait_for(self._unstall.wait(), hold_s)
        except TimeoutError:
            pass
        finally:
            with self._changed:
                self._stalled -= 1

    def _check_auth(self, request: web.Request) -> None:
        with self._lock:
            key, workspace = self.api_key, self.workspace
        if key is not None and request.headers.get("authorization") != key:
            raise HttpError(401, "User not allowed to access workspace")
        if key is not None and workspace is not None and (
                request.headers.get("Comet-Workspace") != workspace):
            raise HttpError(403, "User has no access to the workspace")

    def _store(self, kind: str, items: list[dict[str, Any]]) -> None:
        """ReplacingMergeTree: the newest ``last_updated_at`` (else now) wins."""
        now = datetime.now(UTC)
        with self._changed:
            rows = self._rows[kind]
            for item in items:
                key = (item["id"], item["name"]) if kind.endswith("scores") else item.get("id")
                version = _parse_time(item.get("last_updated_at")) or now
                if key not in rows or rows[key][0] <= version:
                    rows[key] = (version, item)
                self._per_id[(kind, str(item.get("id")))] += 1
            self._accepted[kind] += len(items)
            self._changed.notify_all()


def _error(exc: HttpError) -> web.Response:
    return web.json_response(exc.body, status=exc.status, headers=exc.headers)
