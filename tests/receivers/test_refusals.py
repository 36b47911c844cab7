"""Requests the receiver refuses: each gets a 4xx/5xx naming its reason, and
the spool is left as it was (nothing half appended)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from sidecar.config.settings import ReceiversSettings
from sidecar.health.http import IDLE_TIMEOUT_S
from sidecar.receivers.server import ReceiverServer
from sidecar.snapshots import QuotaStats

T = "2026-01-02T03:04:05.000006Z"
TRACE = "01a24f98-6bec-75b7-a6b6-d5a0f6097d37"


def span(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": f"01a24f98-6c13-7425-b84c-{i:012d}", "trace_id": TRACE, "name": "s",
            "start_time": T, "source": "sdk", **extra}


def spool_bytes(spool: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(spool.glob("*.jsonl*")))


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ReceiverServer, str]]:
    settings = ReceiversSettings(enabled=True, listen="127.0.0.1:0", token="s3cret-token",
                                 max_request_bytes=64 << 10, max_inflight_bytes=128 << 10)
    async with ReceiverServer(settings, tmp_path) as server:
        yield server, f"http://127.0.0.1:{server.port}"


AUTH = {"Authorization": "Bearer s3cret-token"}
SPANS = "/api/v1/private/spans/batch"


async def post(url: str, data: bytes, headers: dict[str, str] | None = None,
               method: str = "POST") -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.request(
            method, url, data=data, headers={"Content-Type": "application/json", **AUTH,
                                             **(headers or {})}) as r:
        body = await r.read()
        return r.status, orjson.loads(body) if body else {}, dict(r.headers)


async def test_a_good_batch_is_appended_before_the_answer(
        served: tuple[ReceiverServer, str], tmp_path: Path) -> None:
    _, base = served
    status, _, _ = await post(base + SPANS, orjson.dumps({"spans": [span(1), span(2)]}))
    assert status == 204
    lines = spool_bytes(tmp_path).splitlines()
    assert [orjson.loads(x)["id"] for x in lines] == [span(1)["id"], span(2)["id"]]
    assert "source" not in orjson.loads(lines[0])


async def test_gzip_bodies_are_read(served: tuple[ReceiverServer, str], tmp_path: Path) -> None:
    _, base = served
    body = gzip.compress(orjson.dumps({"spans": [span(3)]}))
    status, _, _ = await post(base + SPANS, body, {"Content-Encoding": "gzip"})
    assert status == 204 and spool_bytes(tmp_path).count(b"\n") == 1


@pytest.mark.parametrize(("case", "status", "reason"), [
    ("no token", 401, "bearer token"),
    ("wrong token", 401, "bearer token"),
    ("token without bearer, wrong", 401, "bearer token"),
    ("not json", 400, "not JSON"),
    ("no list", 400, '"spans"'),
    ("one bad record", 400, "item 1"),
    ("wrong type", 415, "content type text/plain"),
    ("oversized", 413, "receivers.max_request_bytes"),
    ("gzip bomb", 413, "receivers.max_request_bytes"),
    ("unknown path", 501, "GET /api/v1/private/projects is not implemented"),
])
async def test_refused_requests_name_their_reason_and_change_nothing(
        served: tuple[ReceiverServer, str], tmp_path: Path,
        case: str, status: int, reason: str) -> None:
    _, base = served
    url, body, headers, method = base + SPANS, orjson.dumps({"spans": [span(1)]}), {}, "POST"
    if case == "no token":
        headers = {"Authorization": ""}
    elif case == "wrong token":
        headers = {"Authorization": "Bearer nope"}
    elif case == "token without bearer, wrong":
        headers = {"Authorization": "s3cret-tokenX"}
    elif case == "not json":
        body = b'{"spans": ['
    elif case == "no list":
        body = b'{"traces": []}'
    elif case == "one bad record":  # the first is fine, and is not appended either
        body = orjson.dumps({"spans": [span(1), {**span(2), "start_time": "yesterday"}]})
    elif case == "wrong type":
        headers = {"Content-Type": "text/plain"}
    elif case == "oversized":
        body = orjson.dumps({"spans": [span(1, input={"x": "a" * (70 << 10)})]})
    elif case == "gzip bomb":  # small on the wire, past the limit once inflated
        body = gzip.compress(orjson.dumps({"spans": [span(1, input={"x": "a" * (1 << 20)})]}))
        headers = {"Content-Encoding": "gzip"}
    elif case == "unknown path":
        url, method = base + "/api/v1/private/projects", "GET"
    got, answer, _ = await post(url, body, headers, method)
    assert got == status
    assert reason in answer["errors"][0]
    assert spool_bytes(tmp_path) == b""


async def test_the_token_alone_is_taken_as_the_opik_sdk_sends_its_api_key(
        served: tuple[ReceiverServer, str], tmp_path: Path) -> None:
    _, base = served
    status, _, _ = await post(base + SPANS, orjson.dumps({"spans": [span(1)]}),
                              {"Authorization": "s3cret-token"})
    assert status == 204


async def test_the_token_never_appears_in_an_answer(served: tuple[ReceiverServer, str]) -> None:
    _, base = served
    _, answer, _ = await post(base + SPANS, b"{", {"Authorization": "Bearer s3cret-tokenX"})
    assert "s3cret" not in orjson.dumps(answer).decode()


async def test_in_flight_bytes_past_the_bound_get_503_with_retry_after(
        served: tuple[ReceiverServer, str], tmp_path: Path) -> None:
    server, base = served
    server.inflight_bytes = server.settings.max_inflight_bytes - 10  # others being handled
    status, answer, headers = await post(base + SPANS, orjson.dumps({"spans": [span(1)]}))
    assert (status, headers["Retry-After"]) == (503, "1")
    assert "max_inflight_bytes" in answer["errors"][0]
    server.inflight_bytes = 0
    assert (await post(base + SPANS, orjson.dumps({"spans": [span(1)]})))[0] == 204


async def test_a_full_spool_answers_503_with_retry_after_and_appends_nothing(
        tmp_path: Path) -> None:
    usage = QuotaStats(max_bytes=1 << 20, bytes=(1 << 20) - 10, on_full="keep")
    settings = ReceiversSettings(enabled=True, listen="127.0.0.1:0")
    async with ReceiverServer(settings, tmp_path, quota=lambda: usage) as server:
        status, answer, headers = await post(f"http://127.0.0.1:{server.port}{SPANS}",
                                             orjson.dumps({"spans": [span(1)]}))
    assert (status, headers["Retry-After"]) == (503, "5")
    assert "spool is full" in answer["errors"][0]
    assert spool_bytes(tmp_path) == b""


async def test_a_patch_is_appended_as_an_update_record(
        served: tuple[ReceiverServer, str], tmp_path: Path) -> None:
    _, base = served
    span_id = span(1)["id"]
    body = orjson.dumps({"trace_id": TRACE, "end_time": T, "output": {"b": 2}, "source": "sdk"})
    status, _, _ = await post(f"{base}/api/v1/private/spans/{span_id}", body,
                              {"Comet-Workspace": "team-a"}, method="PATCH")
    assert status == 204
    (line,) = spool_bytes(tmp_path).splitlines()
    record = orjson.loads(line)
    assert record.pop("last_updated_at")  # the time it came: the SDK sends none
    # no metadata: the workspace is not sent alone (it would replace the span's)
    assert record == {"kind": "span_update", "id": span_id, "trace_id": TRACE,
                      "end_time": T, "output": {"b": 2}}


async def test_a_patch_of_an_id_that_is_no_uuid_is_refused(
        served: tuple[ReceiverServer, str], tmp_path: Path) -> None:
    _, base = served
    status, answer, _ = await post(f"{base}/api/v1/private/traces/nope", b"{}", method="PATCH")
    assert status == 400 and "id" in answer["errors"][0]
    assert spool_bytes(tmp_path) == b""


@dataclass
class Parsed:
    status: int
    body: bytes
    content_type: str
    records: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None


async def test_otlp_is_501_until_a_parser_is_mounted_then_appended_before_the_answer(
        served: tuple[ReceiverServer, str], tmp_path: Path) -> None:
    _, base = served
    status, answer, _ = await post(base + "/v1/traces", b"x",
                                   {"Content-Type": "application/x-protobuf"})
    assert status == 501 and "POST /v1/traces" in answer["errors"][0]
    seen: list[tuple[bytes, str, str | None]] = []

    def parser(body: bytes, content_type: str, encoding: str | None) -> Parsed:
        seen.append((body, content_type, encoding))
        if body == b"bad":
            return Parsed(400, b'{"message":"bad"}', "application/json", reason="bad")
        return Parsed(200, b"", "application/x-protobuf", [span(7)])

    settings = ReceiversSettings(enabled=True, listen="127.0.0.1:0")
    async with ReceiverServer(settings, tmp_path, otlp=parser) as server:
        url = f"http://127.0.0.1:{server.port}/v1/traces"
        proto = {"Content-Type": "application/x-protobuf"}
        assert (await post(url, b"bad", proto))[0] == 400
        assert spool_bytes(tmp_path) == b""
        got = await post(url, gzip.compress(b"good"), {**proto, "Content-Encoding": "gzip"})
        assert got[0] == 200
    assert seen[-1] == (b"good", "application/x-protobuf", None)  # inflated by the server
    assert orjson.loads(spool_bytes(tmp_path))["id"] == span(7)["id"]


async def test_a_client_that_never_finishes_its_request_head_is_closed(tmp_path: Path) -> None:
    """The receiver's keep-alive is the probe server's short one: 50 connections
    holding half a request head are closed by the timer, not kept for an hour."""
    async with ReceiverServer(ReceiversSettings(listen="127.0.0.1:0"), tmp_path) as server:
        conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(50)]
        for _, writer in conns:
            writer.write(b"POST " + SPANS.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await asyncio.gather(*(writer.drain() for _, writer in conns))
        async with asyncio.timeout(IDLE_TIMEOUT_S + 10):  # a failure bound; aiohttp's default: 1 h
            closed = await asyncio.gather(*(_closed_by_server(r) for r, _ in conns))
        assert all(closed)
        for _, writer in conns:
            writer.close()


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(4096) == b""
    except ConnectionResetError:
        return True
