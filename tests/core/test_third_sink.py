"""A third sink, declared here and nowhere else (issue 18's sink contract).

This module is the sink: a ``build(settings, context)`` function and a
settings section, ``ThirdSection``, whose ``SINK`` names this module. A
``Settings`` subclass adds the section; nothing under ``sidecar/`` knows of
it. The daemon ships to it, ``check-config --connect`` checks it (and names
it when it is down), and ``check-config`` masks its secrets by their type
whatever their names.

The sink sends each record's id as one line over TCP (loopback only) to
the host and port of its ``connect`` string (libpq's ``key=value`` shape,
with no "://": only its type says it holds a credential); ``check`` opens a
connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar

import pytest
from pydantic import SecretStr

from sidecar.app import App
from sidecar.commands.check_config import check_all, render_checks
from sidecar.config.secrets import SecretUrl, redacted
from sidecar.config.settings import Settings, SinkSection
from sidecar.records import Record
from sidecar.sinks.base import Delivered, Outcome, Retry, SinkContext
from sidecar.sinks.registry import enabled_sinks
from tests.ops.helpers import free_port
from tests.support import span, write_spans


class ThirdSection(SinkSection):
    SINK: ClassVar[str] = __name__
    enabled: bool | None = False
    connect: SecretUrl = "host=127.0.0.1 port=9"
    credential: SecretStr | None = None  # neither name says "secret"
    max_batch_records: int = 100

    def target(self) -> str:
        return redacted(self)["connect"]  # type: ignore[no-any-return]


class ThirdSettings(Settings):
    third: ThirdSection = ThirdSection()


def build(settings: Settings, context: SinkContext) -> ThirdSink:
    assert isinstance(settings, ThirdSettings)
    return ThirdSink(settings.third)


class ThirdSink:
    name = "third"

    def __init__(self, settings: ThirdSection) -> None:
        options = dict(pair.split("=", 1) for pair in settings.connect.split())
        self.host, self.port = options["host"], int(options["port"])
        self.max_batch_records = settings.max_batch_records

    async def __aenter__(self) -> ThirdSink:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def send(self, batch: Sequence[Record]) -> Outcome:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            return Retry(f"third: {exc}")
        writer.write(b"".join(f"{record.id}\n".encode() for record in batch))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        return Delivered()

    async def check(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True


class Receiver:
    """What listens where the third sink ships: the ids it got, in order."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.changed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.ids += (await reader.read()).decode().split()
        self.changed.set()
        writer.close()

    async def until(self, count: int) -> None:
        while len(self.ids) < count:
            self.changed.clear()
            await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    got = Receiver()
    server = await asyncio.start_server(got.handle, "127.0.0.1", 0)
    async with server:
        yield got, server.sockets[0].getsockname()[1]


def third_settings(tmp_path: Path, port: int) -> ThirdSettings:
    return ThirdSettings.model_validate({
        "spool": {"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state")},
        "batch": {"max_wait_ms": 20}, "postgres": {"enabled": False},
        "opik": {"enabled": False}, "http": {"enabled": False}, "health": {"enabled": False},
        "third": {"enabled": True,
                  "connect": f"host=127.0.0.1 port={port} user=ops password=hunter2-pw",
                  "credential": "third-sink-credential"}})


async def test_the_daemon_ships_to_a_sink_declared_in_a_test_module(
        tmp_path: Path, receiver: tuple[Receiver, int]) -> None:
    got, port = receiver
    settings = third_settings(tmp_path, port)
    assert enabled_sinks(settings) == ["third"]
    app = App(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await asyncio.wait_for(app.started.wait(), 30)
        ids = write_spans(tmp_path / "spool" / "a-h-1-0.jsonl", [span(i) for i in range(250)])
        await asyncio.wait_for(got.until(len(ids)), 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert got.ids == ids
    assert app.drain_report is not None and app.drain_report.drained


async def test_check_config_connect_checks_the_third_sink_and_names_it_when_down(
        tmp_path: Path, receiver: tuple[Receiver, int]) -> None:
    _, port = receiver
    up = {r.name: r for r in await check_all(third_settings(tmp_path, port))}
    assert up["third"].ok is True
    down = await check_all(third_settings(tmp_path, free_port()))
    report = render_checks(down)
    line = next(row for row in report.splitlines() if row.startswith("third "))
    assert line.split()[:2] == ["third", "DOWN"] and "password=***" in line, line
    assert "hunter2-pw" not in report
    assert [r.name for r in down if r.ok is False] == ["third"]


def test_check_config_masks_the_third_sinks_secrets_by_their_type(tmp_path: Path) -> None:
    shown = json.dumps(redacted(third_settings(tmp_path, 1234)))
    assert "hunter2-pw" not in shown and "third-sink-credential" not in shown
    third = redacted(third_settings(tmp_path, 1234))["third"]
    assert third["connect"] == "host=127.0.0.1 port=1234 user=ops password=***"
    assert third["credential"] == "***"
