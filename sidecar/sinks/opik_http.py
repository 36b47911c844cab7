"""The Opik sink's HTTP client: headers, TLS and request compression.

- Headers as the Opik SDK sends them: ``Comet-Workspace`` always, and the
  raw API key as ``authorization`` when there is one.
- TLS (an ``https://`` URL; a plain ``http://`` one loads no trust store)
  is verified against the system's trust store
  (``ssl.create_default_context()``: the OpenSSL default paths, which honour
  ``SSL_CERT_FILE``/``SSL_CERT_DIR``), not certifi's bundle, so a self-hosted
  Opik behind a private CA that the host trusts just works.
  ``opik.ca_bundle`` trusts one PEM bundle instead; ``opik.verify_tls: false``
  (or the SDK's ``OPIK_CHECK_TLS_CERTIFICATE=false``) switches checking off.
- Bodies are gzipped (level 1) according to ``opik.compress``: ``always``,
  ``never``, or ``auto``: bodies of at least ``MIN_GZIP_BYTES`` when Opik is
  not on this machine. Measured on this project's 2-core machine, level 1
  turns a 1000-span request of 1.0-1.2 MB into 13-39 % of its size for
  3-10 ms of CPU (3-10 us a span, against ~400 us a span for the rest of
  the Opik path); level 6 saves 2-3 points more for twice the CPU. Over any
  real network the saved bytes cost more time than the CPU; on loopback
  nothing is saved.
- The connections are aiohttp's, under httpx's client: ``opik_transport.py``
  says why and what that module makes good.
"""

from __future__ import annotations

import gzip
import ipaddress
import ssl
from urllib.parse import urlsplit

import httpx

from sidecar.config.settings import OpikSettings
from sidecar.sinks.opik_transport import OpikClient

MIN_GZIP_BYTES = 1024
GZIP_LEVEL = 1


def headers_for(settings: OpikSettings) -> dict[str, str]:
    """The headers of every request (the key only when there is one)."""
    headers = {"content-type": "application/json", "accept": "application/json",
               "Comet-Workspace": settings.workspace}
    key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    if key:
        headers["authorization"] = key
    return headers


def tls_verify(settings: OpikSettings) -> ssl.SSLContext | bool:
    """What the connections to Opik verify with: ``tls_trust``, or nothing.

    Nothing for a plain ``http://`` URL: no connection to it uses TLS
    (redirects are not followed; an ``https://`` proxy gets ``tls_trust``
    itself), and loading the system store again cost ~35 ms of CPU at every
    start and ~0.8 MB of RSS for as long as the daemon runs (measured in the
    daemon on this project's machine; aiohttp, loaded for the probe server,
    holds a store of its own from its import).
    """
    if urlsplit(settings.url).scheme.lower() == "http":
        return False
    return tls_trust(settings)


def tls_trust(settings: OpikSettings) -> ssl.SSLContext | bool:
    """What a TLS connection of the client verifies with: the system store, a
    CA bundle, or nothing (``opik.verify_tls: false``)."""
    if not settings.verify_tls:
        return False
    if settings.ca_bundle is not None:
        return ssl.create_default_context(cafile=str(settings.ca_bundle))
    return ssl.create_default_context()


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (``localhost`` or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Compressor:
    """Decides per body whether to gzip it, and does."""

    def __init__(self, settings: OpikSettings) -> None:
        mode = settings.compress
        self.enabled = mode == "always" or (mode == "auto" and not is_loopback(settings.url))
        self.min_bytes = 0 if mode == "always" else MIN_GZIP_BYTES

    def encode(self, body: bytes) -> tuple[bytes, dict[str, str]]:
        """The body to send and the extra headers it needs."""
        if not self.enabled or len(body) < self.min_bytes:
            return body, {}
        return gzip.compress(body, GZIP_LEVEL, mtime=0), {"content-encoding": "gzip"}


def client_for(settings: OpikSettings, max_connections: int | None = None) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` over aiohttp for Opik's API (base URL, headers, TLS, timeouts)."""
    n = max_connections or settings.max_in_flight + 1
    return OpikClient(
        proxy_tls=lambda: tls_trust(settings),
        base_url=settings.url.rstrip("/") + "/",
        headers=headers_for(settings),
        verify=tls_verify(settings),
        timeout=httpx.Timeout(settings.timeout_s),
        limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
    )
