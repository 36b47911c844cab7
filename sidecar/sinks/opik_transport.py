"""What moves the Opik client's bytes: aiohttp's connections under httpx's client.

``httpx-aiohttp`` puts aiohttp, which every sidecar loads for its probe
server, where httpcore would be. Measured on this project's machine: 0.86 ->
0.50 ms of CPU an Opik request back to back, 3.0 -> 1.7 ms at one request
every 0.25 s (a daemon's rhythm at 100 spans/s), and httpcore, h11 and anyio
never load (2.3 MB less RSS). Three things httpcore did that aiohttp does
not are made good here:

- **A connection given up is dropped at once.** asyncio's ``close()`` keeps
  a socket until its buffered bytes are sent, so a request cut short by the
  sink's bound, to a server that stopped reading, kept its descriptor and
  the unsent rest of its body (megabytes) for as long as that server stayed
  up, one more with every retry. The connector aborts instead.
- **An ``https://`` proxy is verified**, with the trust Opik's own
  connections get (the system store, or ``opik.ca_bundle``; nothing with
  ``opik.verify_tls: false``), even when Opik's URL is plain ``http://``.
- **A proxy aiohttp cannot use is refused with a reason** rather than
  spoken to wrongly or raised through the daemon: SOCKS, and credentials
  Basic auth cannot carry here (a ``:`` in the user name, a character
  outside Latin-1). Its requests fail as connection errors, logged once at
  start as ``sink.opik.proxy.unsupported``; Postgres ships on.

And one thing httpx does that costs without use: it hands every answer to
the standard library's cookie jar, through urllib request and response
wrappers it builds for the purpose (~0.1 ms a request, ~3 % of a daemon's
CPU at 100 spans/s). Opik's API sets no cookies; the client's jar
(``OpikClient.cookies``) reads only answers that carry ``Set-Cookie`` (a
load balancer's affinity cookie, say), so cookies work as before.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import structlog
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

log = structlog.get_logger("sidecar.sinks.opik")

_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class AbortingConnector(aiohttp.TCPConnector):
    """A TCP connector that aborts the connections it closes (see the module docstring)."""

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        if should_close or protocol.should_close:
            protocol.abort()  # the unsent bytes go with it; close() would wait for them
        super()._release(key, protocol, should_close=should_close)


class Transport(AiohttpTransport):
    """httpx-aiohttp's transport on an ``AbortingConnector``, without a cookie jar."""

    def get_client(self) -> aiohttp.ClientSession:
        connector = AbortingConnector(limit=self.limits.max_connections or 0,
                                      keepalive_timeout=self.limits.keepalive_expiry,
                                      ssl=self.ssl_context)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


class Refused(httpx.AsyncBaseTransport):
    """Fails every request through a proxy aiohttp cannot use."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ProxyError(self.reason, request=request)


def proxy_problem(proxy: httpx.Proxy) -> str | None:
    """Why aiohttp cannot use ``proxy``, or None. Never names its credentials."""
    scheme = proxy.url.scheme
    if scheme not in ("http", "https"):
        return f"a {scheme} proxy (only http:// and https:// proxies are supported)"
    if proxy.auth is not None:  # aiohttp's BasicAuth: no ':' in the user, Latin-1 only
        user, password = proxy.auth
        if ":" in user or not _latin1(user + password):
            return ("proxy credentials Basic auth cannot carry "
                    "(a ':' in the user name, or a character outside Latin-1)")
    return None


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


class SetCookieJar(httpx.Cookies):
    """httpx's cookies, read from an answer only when it sets some."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class OpikClient(HttpxAiohttpClient):
    """httpx's client over ``Transport``; an https proxy verified by ``proxy_tls``;
    cookies in a ``SetCookieJar``."""

    def __init__(self, *, proxy_tls: Callable[[], ssl.SSLContext | bool],
                 **kwargs: Any) -> None:
        self._proxy_tls = proxy_tls
        self._jar = SetCookieJar(kwargs.get("cookies"))
        super().__init__(**kwargs)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:  # whatever httpx.Cookies takes
        self._jar = SetCookieJar(cookies)

    def _init_transport(
            self, verify: ssl.SSLContext | str | bool = True, cert: Any = None,
            trust_env: bool = True, http1: bool = True, http2: bool = False,
            limits: httpx.Limits = _DEFAULT_LIMITS,
            transport: httpx.AsyncBaseTransport | None = None,
            **kwargs: Any) -> httpx.AsyncBaseTransport:
        if transport is not None:
            return transport
        return Transport(verify=verify, trust_env=trust_env, limits=limits)

    def _init_proxy_transport(
            self, proxy: httpx.Proxy, verify: ssl.SSLContext | str | bool = True,
            cert: Any = None, trust_env: bool = True, http1: bool = True,
            http2: bool = False, limits: httpx.Limits = _DEFAULT_LIMITS,
            **kwargs: Any) -> httpx.AsyncBaseTransport:
        problem = proxy_problem(proxy)
        if problem is not None:
            log.warning("sink.opik.proxy.unsupported", sink="opik", problem=problem,
                        note="requests through it fail; Postgres ships on")
            return Refused(problem)
        if proxy.url.scheme == "https":
            verify = self._proxy_tls()
        return Transport(verify=verify, trust_env=trust_env, limits=limits, proxy=proxy)
