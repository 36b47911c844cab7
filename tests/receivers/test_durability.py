"""``receivers.fsync: always``: one fdatasync per request, after its last
line and before the answer; a failed sync is a 503, never a success."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import orjson
import pytest

from sidecar.config.settings import ReceiversSettings
from sidecar.receivers.server import ReceiverServer
from tests.receivers.test_refusals import SPANS, span, spool_bytes


async def send(server: ReceiverServer, n: int) -> tuple[int, str | None]:
    body = orjson.dumps({"spans": [span(i) for i in range(n)]})
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{server.port}{SPANS}", data=body,
            headers={"Content-Type": "application/json"}) as r:
        return r.status, r.headers.get("Retry-After")


async def test_one_sync_per_request_after_its_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []  # the file's size at each sync
    real = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    async with ReceiverServer(ReceiversSettings(listen="127.0.0.1:0"), tmp_path) as server:
        assert await send(server, 50) == (204, None)
        assert await send(server, 3) == (204, None)
    lines = spool_bytes(tmp_path).splitlines(keepends=True)
    assert synced[:2] == [sum(map(len, lines[:50])), sum(map(len, lines))]


async def test_a_failed_sync_is_a_503_with_retry_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    async with ReceiverServer(ReceiversSettings(listen="127.0.0.1:0"), tmp_path) as server:
        assert await send(server, 2) == (503, "5")
