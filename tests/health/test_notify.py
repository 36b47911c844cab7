"""sd_notify against a real AF_UNIX datagram socket, as systemd would listen."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar.health.notify import Notifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


async def receive(sock: socket.socket, deadline_s: float = 2.0) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), deadline_s)
    return data.decode()


async def test_messages_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready()
    notifier.status("shipping\nto 2 sinks")
    notifier.watchdog()
    notifier.stopping()
    got = [await receive(sock) for _ in range(4)]
    notifier.close()
    assert got == ["READY=1", "STATUS=shipping to 2 sinks", "WATCHDOG=1", "STOPPING=1"]


async def test_abstract_namespace_socket() -> None:
    name = f"span-sidecar-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        assert await receive(sock) == "READY=1"
        notifier.close()


async def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_s is None
    notifier.ready()
    notifier.status("x")
    notifier.stopping()
    assert notifier.send("READY=1") is False
    await asyncio.wait_for(notifier.run_watchdog(asyncio.Event()), 1.0)  # returns at once


async def test_watchdog_pings_until_stopped(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env)
    assert notifier.watchdog_s == pytest.approx(0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop))
    assert [await receive(sock) for _ in range(3)] == ["WATCHDOG=1"] * 3
    stop.set()
    await asyncio.wait_for(task, 1.0)
    notifier.close()


def test_watchdog_interval_rules() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=7) is None


def test_send_errors_never_raise_and_are_logged_once(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with capture_logs() as logs:
        assert notifier.send("READY=1") is False
        notifier.watchdog()
        notifier.stopping()
    notifier.close()
    levels = [e["log_level"] for e in logs if e["event"] == "notify.send.failed"]
    assert levels == ["warning", "debug", "debug"]
