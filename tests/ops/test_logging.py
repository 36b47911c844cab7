"""Every log line, the sidecar's own and the stdlib's, is one JSON object with its logger."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from sidecar.config import secrets
from sidecar.config.settings import LoggingSettings
from sidecar.logging import configure


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()  # not a terminal: "auto" means JSON
    configure(LoggingSettings(level="info", format="auto"), out)
    yield out
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_span_sidecar_handler", False)]:
        root.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in stream.getvalue().splitlines() if x]


def test_a_stdlib_log_line_comes_out_as_json_with_its_logger_name(stream: io.StringIO) -> None:
    logging.getLogger("aiohttp.server").error("Error handling request from %s", "127.0.0.1")
    logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "<Task>", 0.25)
    first, second = lines(stream)
    assert first["logger"] == "aiohttp.server" and first["level"] == "error"
    assert first["event"] == "Error handling request from 127.0.0.1"
    assert second["logger"] == "asyncio" and "took 0.250 seconds" in str(second["event"])
    assert "timestamp" in first


def test_the_client_writers_stdlib_logger_goes_through_structlog_too(
        stream: io.StringIO) -> None:
    logging.getLogger("sidecar.client.writer").warning("spool write failed: %s", "ENOSPC")
    (record,) = lines(stream)
    assert record["logger"] == "sidecar.client.writer" and record["level"] == "warning"


def test_structlog_events_carry_their_logger_name_and_fields(stream: io.StringIO) -> None:
    structlog.get_logger("sidecar.test").info("test.event.logged", sink="postgres", n=3)
    (record,) = lines(stream)
    assert record == {**record, "event": "test.event.logged", "logger": "sidecar.test",
                      "sink": "postgres", "n": 3, "level": "info"}


def test_records_below_the_level_are_dropped(stream: io.StringIO) -> None:
    logging.getLogger("aiohttp.access").debug("noise")
    structlog.get_logger("sidecar.test").debug("test.noise.logged")
    assert lines(stream) == []


def test_an_exception_becomes_a_structured_traceback(stream: io.StringIO) -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    (record,) = lines(stream)
    assert record["logger"] == "asyncio"
    assert "ValueError" in orjson.dumps(record["exception"]).decode()


# -- secrets -----------------------------------------------------------------------------------

SECRET = "hunter2-Qx7"


@pytest.fixture
def registered() -> Iterator[str]:
    secrets.register([SECRET])
    yield SECRET
    secrets.forget()


def _fails_holding(password: str, dsn: str) -> None:
    raise ValueError(f"cannot parse {dsn}")


def test_json_tracebacks_have_frames_but_no_locals(stream: io.StringIO, registered: str) -> None:
    try:
        _fails_holding(registered, f"postgresql://app:{registered}@h:5x32/db")
    except ValueError:
        structlog.get_logger("sidecar.test").exception("test.send.crashed")
    text = stream.getvalue()
    (record,) = lines(stream)
    frames = record["exception"][0]["frames"]  # type: ignore[index]
    assert [f["name"] for f in frames][-1] == "_fails_holding"
    assert all("locals" not in f for f in frames)
    assert registered not in text and "postgresql://app:***@h:5x32/db" in text


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure(LoggingSettings(level="info", format="console"), out)
    yield out
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_span_sidecar_handler", False)]:
        root.removeHandler(handler)


def test_console_tracebacks_have_no_locals_and_no_secret(console: io.StringIO,
                                                         registered: str) -> None:
    try:
        _fails_holding(registered, "host=db password=other-secret-9")
    except ValueError:
        logging.getLogger("asyncpg").exception("connect failed for %s", registered)
    text = console.getvalue()
    assert "Traceback" in text and "_fails_holding" in text
    assert registered not in text and "other-secret-9" not in text


def test_every_field_of_every_record_is_scrubbed(stream: io.StringIO, registered: str) -> None:
    log = structlog.get_logger("sidecar.test")
    log.warning("test.redis.failed", error=f"AUTH {registered} refused",
                target=f"redis://u:{registered}@h:6379/0", nested={"token": "tok-abc-123"},
                obj=RuntimeError(registered))
    logging.getLogger("httpx").info("HTTP Request: POST %s", "http://h/api?api_key=k-55&x=1")
    text = stream.getvalue()
    assert registered not in text and "tok-abc-123" not in text and "k-55" not in text
    first, second = lines(stream)
    assert first["target"] == "redis://u:***@h:6379/0" and first["nested"] == {"token": "***"}
    assert second["event"] == "HTTP Request: POST http://h/api?api_key=***&x=1"


def test_watchfiles_change_counts_are_not_logged_at_info(stream: io.StringIO) -> None:
    logging.getLogger("watchfiles.main").info("%d changes detected", 3)
    assert lines(stream) == []
