"""The probe server under idle and slow clients, on a real loopback port (issue 17).

A client that opens a connection and never completes its request head holds
a descriptor for as long as the server lets it. Before, that was the whole
keep-alive (aiohttp's default, an hour): 50 such clients and the file limit
stopped the daemon.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
from collections.abc import Sequence
from typing import Any

import aiohttp

from sidecar.config.settings import HttpSettings
from sidecar.health.http import IDLE_TIMEOUT_S, HttpServer

LOOPBACK = HttpSettings(listen="127.0.0.1:0")
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def ready() -> tuple[bool, Sequence[str]]:
    return True, []


async def healthz(port: int) -> int:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as client, \
            client.get(f"http://127.0.0.1:{port}/healthz") as resp:
        return resp.status


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server closed the connection (EOF or reset)."""
    try:
        return await reader.read(4096) == b""
    except ConnectionResetError:
        return True


async def test_idle_clients_with_a_partial_head_are_closed_and_healthz_answers() -> None:
    """200 connections that send half a request head: /healthz answers while
    they are open, and the server closes every one within the idle timeout."""
    idle_s = 1.0
    async with HttpServer(LOOPBACK, metrics=bytes, readiness=ready,
                          idle_timeout_s=idle_s) as server:
        conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(200)]
        for _, writer in conns:
            writer.write(PARTIAL_HEAD)
        await asyncio.gather(*(writer.drain() for _, writer in conns))
        assert await healthz(server.port) == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        # The deadline is a failure bound, generous for a loaded machine;
        # the old server kept them for an hour.
        async with asyncio.timeout(idle_s + 10):
            closed = await asyncio.gather(*(closed_by_server(r) for r, _ in conns))
        assert all(closed)
        assert loop.time() - started >= idle_s * 0.5  # closed by the timer, not at once
        assert await healthz(server.port) == 200
        for _, writer in conns:
            writer.close()


async def test_keep_alive_is_short() -> None:
    """After a response the connection is closed after the idle timeout, not an hour."""
    async with HttpServer(LOOPBACK, metrics=bytes, readiness=ready,
                          idle_timeout_s=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        async with asyncio.timeout(10):
            while await reader.read(4096):  # the body, then EOF from the server
                pass
        writer.close()
    assert IDLE_TIMEOUT_S <= 10  # the default is short too


async def test_accept_out_of_descriptors_is_retried_not_fatal() -> None:
    """With the file limit reached, accept fails with EMFILE: asyncio reports it
    and retries; once descriptors are free again the waiting client is served."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        async with HttpServer(LOOPBACK, metrics=bytes, readiness=ready) as server:
            client = socket.socket()
            client.setblocking(False)
            resource.setrlimit(resource.RLIMIT_NOFILE, (_open_fds() + 8, hard))
            fillers = _fill_descriptors()
            await loop.sock_connect(client, ("127.0.0.1", server.port))
            async with asyncio.timeout(10):
                while not reported:  # noqa: ASYNC110 - waiting on the loop's report
                    await asyncio.sleep(0.02)
            for fd in fillers:
                _close(fd)
            fillers = []
            await loop.sock_sendall(client, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(10):
                answer = await loop.sock_recv(client, 4096)
            client.close()
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert await healthz(server.port) == 200
    finally:
        for fd in fillers:
            _close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        loop.set_exception_handler(previous)
    (context,) = reported[:1]
    assert context["message"] == "socket.accept() out of system resource"
    assert context["exception"].errno == errno.EMFILE


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fill_descriptors() -> list[int]:
    """Open /dev/null until the limit is reached; return the descriptors."""
    fds = []
    while True:
        try:
            fds.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
            return fds


def _close(fd: int) -> None:
    os.close(fd)
