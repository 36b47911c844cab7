"""Structured logs: JSON in production, a readable console in a terminal.

Every record goes through one stdlib handler whose formatter is structlog's
``ProcessorFormatter``: the sidecar's own structlog events and the stdlib
records of aiohttp, asyncio, httpx or the client writer come out in the same
format (one JSON object a line when not on a terminal), each with its logger
name. structlog's configuration (and the root handler it installs) is the
one global the process has; everything else is built once by the app and
passed to constructors.
Event names are ``component.noun.past_verb``; secrets are never logged.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from sidecar.settings import LoggingSettings

# The handler this module installed, so that configuring again replaces it.
_HANDLER_FLAG = "_span_sidecar_handler"
# The level in force; a SIGHUP reload changes it (``set_level``). structlog's
# loggers are cached on first use, so its events are filtered by the first
# processor rather than by the cached logger class; the stdlib's by the root.
_level = [logging.INFO]
_NAME_TO_LEVEL = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "msg": logging.INFO}


def set_level(level: str) -> None:
    """Log ``level`` and above from now on (``logging.level`` on reload)."""
    _level[0] = getattr(logging, level.upper())
    logging.getLogger().setLevel(_level[0])


def _below_level(logger: object, method: str, event: structlog.typing.EventDict
                 ) -> structlog.typing.EventDict:
    if _NAME_TO_LEVEL.get(method, logging.INFO) < _level[0]:
        raise structlog.DropEvent
    return event


def _shared(fmt: str) -> list[structlog.typing.Processor]:
    """What every record gets, whether it came from structlog or the stdlib."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks if fmt == "json" else structlog.dev.set_exc_info,
    ]


def _renderer(fmt: str, stream: TextIO) -> structlog.typing.Processor:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return structlog.processors.JSONRenderer()


def configure(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    """Route structlog and the stdlib's ``logging`` to ``stream`` (stderr)."""
    stream = stream or sys.stderr
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared = _shared(fmt)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    _renderer(fmt, stream)],
    ))
    setattr(handler, _HANDLER_FLAG, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_FLAG, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(settings.level)
    structlog.configure(
        processors=[_below_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
