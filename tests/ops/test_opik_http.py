"""The Opik client: parity with the SDK (workspace header, gzip, TLS from the
system store), and its transport's edges (aiohttp under httpx): failures named
for what they are, a server that stops reading, proxies from the environment."""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from sidecar.config.settings import OpikSettings
from sidecar.sinks import opik as opik_sink
from sidecar.sinks.base import Delivered, Retry
from sidecar.sinks.opik import REQUEST_TIMEOUTS, OpikSink
from sidecar.sinks.opik_http import MIN_GZIP_BYTES, Compressor, is_loopback, tls_verify
from tests.opik_emulator import OpikEmulator
from tests.opik_fixtures import no_proxies, settings_for, span
from tests.ops.helpers import free_port  # nothing listens on it


async def test_bodies_are_gzipped_when_told_and_the_emulator_stores_them(
        emu: OpikEmulator) -> None:
    records = [span() for _ in range(50)]
    async with OpikSink(settings_for(emu, compress="always")) as opik:
        assert await opik.send(records) == Delivered()
    (seen,) = emu.requests("spans")
    assert seen.headers["content-encoding"] == "gzip"
    assert int(seen.headers["content-length"]) < seen.size / 3  # on the wire vs inflated
    assert set(emu.spans()) == {str(r.id) for r in records}


async def test_auto_does_not_compress_for_an_opik_on_this_machine(emu: OpikEmulator) -> None:
    async with OpikSink(settings_for(emu, compress="auto")) as opik:
        assert await opik.send([span() for _ in range(50)]) == Delivered()
    assert "content-encoding" not in emu.requests("spans")[0].headers


def test_auto_compresses_large_bodies_for_a_remote_opik() -> None:
    remote = Compressor(OpikSettings(url="https://opik.example/api", compress="auto"))
    small = b"{" + b" " * (MIN_GZIP_BYTES - 3) + b"}"  # one byte short
    assert remote.encode(small) == (small, {})
    large = b'{"spans": [' + b'{"name": "step"},' * 200 + b"{}]}"
    body, headers = remote.encode(large)
    assert headers == {"content-encoding": "gzip"} and gzip.decompress(body) == large
    never = Compressor(OpikSettings(url="https://opik.example/api", compress="never"))
    assert never.encode(large) == (large, {})


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:5173/api", True), ("http://localhost:5173/api", True),
    ("http://[::1]:5173/api", True), ("https://www.comet.com/opik/api", False),
    ("http://10.0.0.5/api", False), ("http://opik.internal/api", False),
])
def test_what_counts_as_this_machine(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


# -- TLS -----------------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and a certificate it signed for 127.0.0.1 (ca.pem, srv.pem, srv.key)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=span-sidecar test CA", cwd=d)
    _openssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1",
             cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d


@pytest.fixture
def tls_emu(private_ca: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpikEmulator]:
    no_proxies(monkeypatch)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(private_ca / "srv.pem", private_ca / "srv.key")
    with OpikEmulator(ssl_context=context) as server:
        yield server


async def test_a_private_ca_is_refused_by_default_and_trusted_through_ca_bundle(
        tls_emu: OpikEmulator, private_ca: Path) -> None:
    assert tls_emu.base_url.startswith("https://")
    async with OpikSink(settings_for(tls_emu)) as opik:
        refused = await opik.send([span()])
    assert isinstance(refused, Retry) and refused.failure and not tls_emu.spans()
    settings = settings_for(tls_emu, ca_bundle=private_ca / "ca.pem")
    async with OpikSink(settings) as opik:
        assert await opik.send([span()]) == Delivered()
    assert len(tls_emu.spans()) == 1


async def test_verification_can_be_switched_off(tls_emu: OpikEmulator) -> None:
    async with OpikSink(settings_for(tls_emu, verify_tls=False)) as opik:
        assert await opik.send([span()]) == Delivered()


def test_the_default_trusts_the_system_store_not_certifi(
        private_ca: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSL's default paths honour SSL_CERT_FILE: a CA the host trusts is trusted."""
    monkeypatch.setenv("SSL_CERT_FILE", str(private_ca / "ca.pem"))
    context = tls_verify(OpikSettings(url="https://opik.example/api"))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    names = [dict(x[0] for x in c["subject"]).get("commonName") for c in context.get_ca_certs()]
    assert "span-sidecar test CA" in names
    assert tls_verify(OpikSettings(url="https://opik.example/api", verify_tls=False)) is False


@pytest.mark.parametrize("url", ["http://localhost:5173/api", "HTTP://opik.internal:8080/api"])
def test_a_plain_http_url_loads_no_trust_store(url: str, private_ca: Path) -> None:
    """No connection of an http:// client uses TLS: the system store (~0.8 MB
    and ~35 ms in the daemon) is not loaded, and a CA bundle is not read either."""
    assert tls_verify(OpikSettings(url=url)) is False
    assert tls_verify(OpikSettings(url=url, ca_bundle=private_ca / "ca.pem")) is False


async def test_the_system_store_reaches_the_sink(
        tls_emu: OpikEmulator, private_ca: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(private_ca / "ca.pem"))
    async with OpikSink(settings_for(tls_emu)) as opik:
        assert await opik.send([span()]) == Delivered()
    with pytest.raises(httpx.ConnectError):  # certifi's bundle, what httpx uses by default
        async with httpx.AsyncClient(trust_env=False) as plain:
            await plain.get(tls_emu.base_url + "/is-alive/ping")


# -- the transport's edges -----------------------------------------------------------------

async def test_a_refused_connection_is_named_a_connection_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The aiohttp transport maps it to httpx's ConnectTimeout; the reason must
    not send an operator looking for a slow server."""
    no_proxies(monkeypatch)
    settings = OpikSettings(enabled=True, url=f"http://127.0.0.1:{free_port()}/api")
    async with OpikSink(settings) as opik:
        outcome = await opik.send([span()])
        assert not await opik.check()
    assert isinstance(outcome, Retry) and outcome.failure
    assert outcome.reason == "opik: connection error: ClientConnectorError"


@asynccontextmanager
async def _serve(answer: bytes | None) -> AsyncIterator[int]:
    """A TCP server on loopback: ``answer`` to whatever arrives, or (None)
    never a byte read, its receive buffer as small as the kernel allows."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answer is not None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        await closed.wait()
        writer.close()

    closed = asyncio.Event()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted sockets
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handle, sock=sock)
    try:
        yield int(sock.getsockname()[1])
    finally:
        closed.set()
        server.close()


def _sockets_to(port: int) -> int:
    """This process's sockets connected to ``port`` on loopback (the client side)."""
    found = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            with socket.socket(fileno=os.dup(int(name))) as s:
                found += s.getpeername()[1] == port
        except (OSError, ValueError, IndexError, TypeError):
            continue  # not a socket, not connected, gone, or not TCP
    return found


async def _until(condition: Callable[[], bool], deadline_s: float) -> None:
    """Poll ``condition`` (the kernel's state: there is no event to wait on) until it holds."""
    async with asyncio.timeout(deadline_s):
        while not condition():  # noqa: ASYNC110 - polling interval of a condition wait
            await asyncio.sleep(0.01)


def _send_buffer_max() -> int:
    """The most a TCP socket of this host buffers for sending (tcp_wmem's maximum)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


async def test_a_server_that_stops_reading_cannot_hold_a_request_or_its_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp has no write timeout: a body larger than the kernel's socket
    buffers, to a peer that reads nothing, would wait forever without the
    sink's bound. Then the connection must go at once, with the unsent rest
    of the body: asyncio's close() would keep both while the peer lives."""
    no_proxies(monkeypatch)
    monkeypatch.setattr(opik_sink, "MIN_UPLOAD_BYTES_PER_S", 8 << 20)
    size = _send_buffer_max() + (3 << 20)
    records = [span(input={"text": "x" * 25_000}) for _ in range(size // 25_000 + 1)]
    async with _serve(None) as port:
        settings = OpikSettings(enabled=True, url=f"http://127.0.0.1:{port}/api",
                                timeout_s=0.5, max_request_bytes=size + (2 << 20))
        async with OpikSink(settings) as opik:
            outcome = await asyncio.wait_for(opik.send(records), 60)
            await _until(lambda: _sockets_to(port) == 0, 5)  # TimeoutError: the socket stayed
    assert isinstance(outcome, Retry) and outcome.failure
    words = outcome.reason.split()
    assert words[:5] == ["opik:", "timeout:", "no", "answer", "within"], words
    body = size + 400 * len(records)  # the text, and each item's envelope (an overestimate)
    assert 0.5 * REQUEST_TIMEOUTS + size / (8 << 20) <= float(words[5]) <= \
        0.5 * REQUEST_TIMEOUTS + body / (8 << 20) + 0.1


async def test_a_malformed_answer_is_a_connection_error_not_a_crash(
        monkeypatch: pytest.MonkeyPatch) -> None:
    no_proxies(monkeypatch)
    async with _serve(b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as port:
        settings = OpikSettings(enabled=True, url=f"http://127.0.0.1:{port}/api")
        async with OpikSink(settings) as opik:
            outcome = await opik.send([span()])
    assert isinstance(outcome, Retry) and outcome.failure
    assert outcome.reason.startswith("opik: connection error: "), outcome.reason


async def test_a_proxy_from_the_environment_carries_the_requests(
        emu: OpikEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY is honoured as the Opik SDK's httpx client honours it: the
    emulator, standing in for the proxy, gets the request for a host that
    does not resolve (``.invalid``) and stores its spans."""
    monkeypatch.setenv("HTTP_PROXY", emu.base_url.removesuffix("/api"))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    records = [span() for _ in range(3)]
    async with OpikSink(OpikSettings(enabled=True, url="http://opik.invalid/api")) as opik:
        assert await opik.send(records) == Delivered()
    assert set(emu.spans()) == {str(r.id) for r in records}
    assert emu.requests("spans")[0].headers["host"] == "opik.invalid"


@pytest.mark.parametrize(("variable", "proxy", "problem"), [
    ("ALL_PROXY", "socks5://127.0.0.1:{port}",
     "a socks5 proxy (only http:// and https:// proxies are supported)"),
    ("HTTP_PROXY", "http://ops%3Ateam:s3cr3t-XYZ@127.0.0.1:{port}",
     "proxy credentials Basic auth cannot carry"),
    ("HTTP_PROXY", "http://ops:s3cr3t-\u20ac@127.0.0.1:{port}",
     "proxy credentials Basic auth cannot carry"),
])
async def test_a_proxy_aiohttp_cannot_use_fails_with_its_reason_not_a_crash(
        variable: str, proxy: str, problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SOCKS, a ':' in the user name, a password outside Latin-1: httpcore
    took the credentials, aiohttp's Basic auth raises ValueError or
    UnicodeEncodeError in the middle of a request (which would have killed
    the start-up probe). The reason never names the credentials."""
    no_proxies(monkeypatch)
    monkeypatch.setenv(variable, proxy.format(port=free_port()))
    async with OpikSink(OpikSettings(enabled=True, url="http://opik.invalid/api")) as opik:
        assert not await opik.check()
        outcome = await opik.send([span()])
    assert isinstance(outcome, Retry) and outcome.failure
    assert outcome.reason.startswith(f"opik: connection error: {problem}"), outcome.reason
    assert "s3cr3t" not in outcome.reason and "ops" not in outcome.reason


async def test_an_https_proxy_is_verified_even_for_a_plain_http_opik(
        tls_emu: OpikEmulator, private_ca: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's certificate is checked against the store Opik's own
    connections would use: refused by default (a private CA), trusted once
    the host trusts that CA. The API key would otherwise cross an
    unverified TLS hop."""
    monkeypatch.setenv("HTTP_PROXY", tls_emu.base_url.removesuffix("/api"))
    settings = OpikSettings(enabled=True, url="http://opik.invalid/api")
    async with OpikSink(settings) as opik:
        refused = await opik.send([span()])
    assert isinstance(refused, Retry) and refused.failure and not tls_emu.spans()
    monkeypatch.setenv("SSL_CERT_FILE", str(private_ca / "ca.pem"))
    records = [span() for _ in range(2)]
    async with OpikSink(settings) as opik:
        assert await opik.send(records) == Delivered()
    assert set(tls_emu.spans()) == {str(r.id) for r in records}


async def test_a_cookie_the_server_sets_comes_back_and_answers_without_one_are_not_parsed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A load balancer's affinity cookie works as with httpx's own jar; an
    answer without ``Set-Cookie`` (all of Opik's) skips the standard
    library's cookie parsing, which cost ~3 % of a daemon at 100 spans/s."""
    from aiohttp import web

    from sidecar.sinks.opik_transport import OpikClient

    sent: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        sent.append(request.headers.get("Cookie"))
        response = web.Response(text="{}")
        if len(sent) == 2:
            response.set_cookie("AWSALB", "node-7")
        return response

    app = web.Application()
    app.router.add_get("/api/is-alive/ping", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    parsed: list[int] = []
    extract = httpx.Cookies.extract_cookies

    def counted(self: httpx.Cookies, response: httpx.Response) -> None:
        parsed.append(response.status_code)
        extract(self, response)

    monkeypatch.setattr(httpx.Cookies, "extract_cookies", counted)
    try:
        async with OpikClient(proxy_tls=lambda: False,
                              base_url=f"http://127.0.0.1:{port}/api/") as client:
            for _ in range(4):
                assert (await client.get("is-alive/ping")).status_code == 200
            assert dict(client.cookies) == {"AWSALB": "node-7"}
    finally:
        await runner.cleanup()
    assert sent == [None, None, "AWSALB=node-7", "AWSALB=node-7"]
    assert parsed == [200]  # only the answer that set it
