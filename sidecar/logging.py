"""Structured logs: JSON in production, a readable console in a terminal.

structlog's configuration is the one global the process has; everything else is
built once by the app and passed to constructors.
Event names are ``component.noun.past_verb``; secrets are never logged.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from sidecar.settings import LoggingSettings

# The level in force; a SIGHUP reload changes it (``set_level``). Loggers are
# cached on first use, so the level is checked by the first processor rather
# than baked into the cached logger class.
_level = [logging.INFO]


def set_level(level: str) -> None:
    """Log ``level`` and above from now on (``logging.level`` on reload)."""
    _level[0] = getattr(logging, level.upper())


def _below_level(logger: object, method: str, event: structlog.typing.EventDict
                 ) -> structlog.typing.EventDict:
    if _NAME_TO_LEVEL.get(method, logging.INFO) < _level[0]:
        raise structlog.DropEvent
    return event


_NAME_TO_LEVEL = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
                  "critical": logging.CRITICAL, "msg": logging.INFO}


def configure(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console"
        else structlog.processors.JSONRenderer())
    set_level(settings.level)
    structlog.configure(
        processors=[
            _below_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if fmt == "json"
            else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
