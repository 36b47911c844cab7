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


def configure(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console"
        else structlog.processors.JSONRenderer())
    level = getattr(logging, settings.level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if fmt == "json"
            else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
