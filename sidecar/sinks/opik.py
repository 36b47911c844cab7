"""The Opik sink: spans, traces and feedback scores over Opik's REST API.

It speaks HTTP with one shared ``httpx.AsyncClient`` over aiohttp's
connections (HTTP/1.1 keep-alive; headers, TLS and gzip as the Opik SDK does
them: ``opik_http.py``) and never imports the ``opik`` package (about 50 MB
and 400 MB of dependencies for a few JSON requests). A batch becomes up to
four kinds of requests (spans, traces, trace scores, span scores), each cut
to at most ``max_batch_records`` items and ``max_request_bytes``; spans and
traces go concurrently (up to ``max_in_flight``), scores after them.

Outcomes: every request 2xx -> Delivered. 429 -> Retry(failure=False) after
``RateLimit-Reset`` (else ``Retry-After``, else a backoff), and every request
of the sink, of any batch, waits until then (``opik_limits.RateGate``).
408, 409, 5xx, 401/402/403/404 (a configuration or account problem, not a
record's: quarantining every record would be wrong), timeouts and connection
errors -> Retry(failure=True). ``timeout_s`` bounds connecting and each wait
for the server's bytes; a request as a whole gets ``REQUEST_TIMEOUTS`` times
that plus a second for each ``MIN_UPLOAD_BYTES_PER_S`` of its body, which is
what ends a send to a server that stopped reading (aiohttp has no write
timeout) while a slow link still gets a whole body through. Any other 4xx means
invalid data: the request is split in halves until the refused records are
found, and those come back in PartlyRejected with the server's error text.
A Retry after a partial success resends the requests that already
succeeded, which is safe: every payload is a function of its record alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from types import TracebackType

import aiohttp
import httpx
import orjson
import structlog

from sidecar.clock import Clock, SystemClock, yield_to_loop
from sidecar.config.settings import OpikSettings, Settings
from sidecar.records import Record, SpanRecord
from sidecar.sinks.base import (
    Delivered,
    Outcome,
    PartlyRejected,
    RejectError,
    Retry,
    SinkContext,
    isolate_rejects,
)
from sidecar.sinks.opik_http import Compressor, client_for
from sidecar.sinks.opik_limits import RateGate, TokenBucket
from sidecar.sinks.opik_payloads import ROUTES, Group, Plan, plan_in_slices

log = structlog.get_logger("sidecar.sinks.opik")

# Not the record's fault: retrying (and the breaker) is the right answer.
_RETRY_STATUSES = frozenset({401, 402, 403, 404, 408, 409})
_MAX_ERROR_TEXT = 500
# Records encoded between two turns of the event loop (~0.06 ms of CPU since
# plan costs ~7 us a bench span, ~0.1 ms before): short slices leave a
# concurrent Postgres stream most of the CPU. Measured with both sinks on 200k
# spans, Postgres against its rate alone (single runs, at ~0.1 ms a slice):
# 8 records, 0.85-0.87; 16, 0.77-0.83; 64, 0.63; 256, 0.60. Opik alone pays ~4 % for 8.
PLAN_SLICE_RECORDS = 8
# A smaller batch (a trickle's: under ~1.5 ms) is encoded in one go.
PLAN_WHOLE_BELOW = 200
# A request as a whole: connect, send and answer, each opik.timeout_s, plus
# the body at no less than 256 kbit/s (a slow link's upload still finishes).
REQUEST_TIMEOUTS = 3
MIN_UPLOAD_BYTES_PER_S = 32 << 10


class _RetryNow(Exception):
    """Raised inside a request: abandon the batch with this outcome."""

    def __init__(self, outcome: Retry) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


class _Abandoned(Exception):
    """A request not sent because another one already asked for a retry."""


def build(settings: Settings, context: SinkContext) -> OpikSink:
    """The sink registry's entry point."""
    return OpikSink(settings.opik, context.clock)


class OpikSink:
    """Sink to Opik; ``async with OpikSink(settings.opik) as sink: ...``."""

    name = "opik"

    def __init__(self, settings: OpikSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.max_batch_records = settings.max_batch_records
        self.batches_in_flight = settings.max_batches_in_flight
        self.clock = clock or SystemClock()
        limit = settings.max_events_per_minute
        self._bucket = None if limit is None else TokenBucket(limit, self.clock)
        self._gate = RateGate(self.clock)  # one per sink: a 429 holds every batch
        self._client: httpx.AsyncClient | None = None
        self._urls: dict[str, httpx.URL] = {}
        self._compressor = Compressor(settings)

    async def __aenter__(self) -> OpikSink:
        # One connection more than max_in_flight: check() never waits behind a send.
        self._client = client_for(self.settings)
        # Whole URLs, made once: a path httpx joins to the base URL anew is
        # parsed at each request (~0.2 ms of a trickle's ~1 ms a request).
        self._urls = {endpoint: self._client.base_url.join(path)
                      for endpoint, (_, path, _) in ROUTES.items() if "{" not in path}
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check(self) -> bool:
        """Any HTTP answer from the ping endpoint means Opik is reachable;
        inside a 429's window it was (the 429 was an answer) and nothing is sent."""
        if self._gate.remaining() > 0:
            return True
        try:
            await self._http().get("is-alive/ping", timeout=min(self.settings.timeout_s, 5.0))
        except Exception:  # any failure of the transport: not reachable
            return False
        return True

    async def send(self, batch: Sequence[Record]) -> Outcome:
        """Deliver a batch (see the module docstring); raises only on cancellation."""
        work = await self._plan(batch)
        # Every item is an event to Opik's quota; tokens stay spent if the send
        # then fails, as the server may have counted the events anyway.
        wait = self._bucket.take(work.items) if self._bucket and work.items else 0.0
        if wait > 0:
            return Retry("opik: client-side rate limit", after_s=wait, failure=False)
        try:
            rejects = await self._deliver(work.groups, batch)
        except _RetryNow as exc:
            return exc.outcome
        except Exception as exc:  # a bug must not kill the pipeline; the breaker sees it
            log.exception("sink.send.crashed", sink=self.name, error_type=type(exc).__name__)
            return Retry(f"opik: unexpected {type(exc).__name__}: {exc}")
        rejects.update(work.rejects)
        return PartlyRejected(dict(sorted(rejects.items()))) if rejects else Delivered()

    async def _plan(self, batch: Sequence[Record]) -> Plan:
        """Encode in slices, letting the loop run in between: a 1000-span
        batch is ~7 ms of CPU, which would otherwise hold up the Postgres
        stream, the HTTP probes and the other batch in flight."""
        s = self.settings
        size = len(batch) if len(batch) < PLAN_WHOLE_BELOW else PLAN_SLICE_RECORDS
        for step in plan_in_slices(batch, s.project_name, s.max_batch_records,
                                   s.max_request_bytes, max(1, size)):
            if step is not None:
                return step
            await yield_to_loop()
        raise AssertionError("plan_in_slices ends with the plan")

    async def _deliver(self, groups: list[Group], batch: Sequence[Record]) -> dict[int, str]:
        """Spans and traces first, then scores (they refer to them)."""
        rejects: dict[int, str] = {}
        first = [g for g in groups if g.endpoint in ("spans", "traces")]
        later = [g for g in groups if g.endpoint not in ("spans", "traces")]
        for phase in (first, later):
            for group, found in zip(phase, await self._gather(phase), strict=True):
                for pos, reason in found.items():
                    index = group.indices[pos]
                    derived = group.endpoint == "traces" and isinstance(batch[index], SpanRecord)
                    text = f"derived trace: {reason}" if derived else reason
                    rejects[index] = f"{rejects[index]}; {text}" if index in rejects else text
        return rejects

    async def _gather(self, groups: list[Group]) -> list[dict[int, str]]:
        """Run the groups' requests, at most ``max_in_flight`` at a time.

        Once a request says "retry the batch", no further request of the
        batch starts; those under way finish (each within ``timeout_s``).
        Nothing is cancelled and no exception leaves a task: an exception
        group, or a cancelled request's ``CancelledError`` (its traceback
        runs through httpx's frames, one of which holds the task), forms a
        reference cycle that keeps the failed attempt's plan and request
        bodies (~1 MB each) until a full collection (+20 MB while Opik was
        down).
        """
        gate = asyncio.Semaphore(self.settings.max_in_flight)
        retries: list[Retry] = []

        async def one(group: Group) -> dict[int, str]:
            async def attempt(records: Sequence[Record]) -> None:
                async with gate:
                    if not retries:  # a 429 of any batch holds this request too
                        await self._gate.wait()
                    if retries:  # the batch goes again whole: send no more of it
                        raise _Abandoned
                    await self._request(group, records)

            try:
                return await isolate_rejects(group.records, attempt)
            except _RetryNow as exc:
                retries.append(exc.outcome)
            except _Abandoned:
                pass
            return {}

        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(one(g)) for g in groups]
        if retries:
            raise _RetryNow(_merged(retries))
        return [task.result() for task in running]

    async def _request(self, group: Group, records: Sequence[Record]) -> None:
        """One request; raises RejectError (invalid data) or _RetryNow."""
        method, path, _ = ROUTES[group.endpoint]
        url: httpx.URL | str = self._urls[group.endpoint] if group.target is None else \
            path.format(id=group.target)  # an update: PATCH .../{id}
        body, headers = self._compressor.encode(group.body(records))
        limit = self.settings.timeout_s * REQUEST_TIMEOUTS + len(body) / MIN_UPLOAD_BYTES_PER_S
        try:
            async with asyncio.timeout(limit):
                response = await self._http().request(method, url, content=body,
                                                      headers=headers)
        except TimeoutError:
            raise _RetryNow(Retry(f"opik: timeout: no answer within {limit:.1f} s")) from None
        except Exception as exc:  # whatever the transport raised: retried, named
            raise _RetryNow(Retry(f"opik: {_transport_failure(exc)}")) from None
        # httpx links a read response and its stream both ways: a cycle that
        # would keep the request body (~1 MB) until the collector's next full
        # pass. Unlinked, the response and its request go when this returns.
        response.stream = httpx.ByteStream(b"")
        if response.is_success:
            self._gate.passed()
            return
        self._fail(response)

    def _fail(self, response: httpx.Response) -> None:
        """Turn a non-2xx answer into RejectError or _RetryNow."""
        status = response.status_code
        text = f"opik {status}: {_error_text(response)}"
        if status == 429:
            named = _seconds(response.headers.get("RateLimit-Reset"), self.clock.wall())
            named = named if named is not None else self._retry_after(response)
            held = self._gate.hold(named)  # None: the gate's own backoff
            log.info("sink.rate_limit.held", sink=self.name, hold_s=round(held, 3),
                     backoff=named is None)
            raise _RetryNow(Retry(text, after_s=self._gate.remaining(), failure=False))
        if status >= 500 or status in _RETRY_STATUSES:
            raise _RetryNow(Retry(text, after_s=self._retry_after(response)))
        raise RejectError(text)

    def _retry_after(self, response: httpx.Response) -> float | None:
        return _seconds(response.headers.get("Retry-After"), self.clock.wall())

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("OpikSink used outside 'async with'")
        return self._client


def _transport_failure(exc: Exception) -> str:
    """"timeout: <name>" or "connection error: <name>", after aiohttp's own exception.

    The transport maps every aiohttp connection error, a refused connection
    included, to httpx's ``ConnectTimeout``; what aiohttp raised says which.
    An aiohttp error the transport does not map (a malformed answer) comes as
    is; a refused proxy says why (``opik_transport.py``).
    """
    if isinstance(exc, httpx.ProxyError) and exc.__cause__ is None:
        return f"connection error: {exc}"
    cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
    timed_out = isinstance(cause, (TimeoutError, httpx.TimeoutException))
    return f"{'timeout' if timed_out else 'connection error'}: {type(cause).__name__}"


def _merged(outcomes: list[Retry]) -> Retry:
    """One Retry for concurrent failures: the longest wait, a failure if any is."""
    waits = [o.after_s for o in outcomes if o.after_s is not None]
    worst = next((o for o in outcomes if o.failure), outcomes[0])
    return Retry(worst.reason, after_s=max(waits, default=None),
                 failure=any(o.failure for o in outcomes))


def _seconds(value: str | None, now_wall: float) -> float | None:
    """Delay-seconds or an HTTP date (Retry-After) as seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now_wall)
    except (TypeError, ValueError):
        return None


def _error_text(response: httpx.Response) -> str:
    """The server's reason: Opik's ``errors`` list or ``message``, else the text."""
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:_MAX_ERROR_TEXT] or response.reason_phrase
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e) for e in errors)[:_MAX_ERROR_TEXT]
        if data.get("message"):
            return str(data["message"])[:_MAX_ERROR_TEXT]
    return response.text[:_MAX_ERROR_TEXT]
