"""Structured logs: JSON in production, a readable console in a terminal.

Every record goes through one stdlib handler whose formatter is structlog's
``ProcessorFormatter``: the sidecar's own structlog events and the stdlib
records of aiohttp, asyncio, httpx or the client writer come out in the same
format (one JSON object a line when not on a terminal), each with its logger
name. structlog's configuration (and the root handler it installs) is the
one global the process has; everything else is built once by the app and
passed to constructors.
Event names are ``component.noun.past_verb``.

Secrets are never logged: tracebacks are rendered without local variables
(JSON and console alike), and every record, structlog's and the stdlib's,
passes last before rendering through ``sidecar.config.secrets.scrub_event``, which
masks the secrets ``register_secrets`` was given and anything shaped like a
credential, in every field, the exception's text and traceback included.
Warnings and uncaught exceptions are routed through the same handler.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from sidecar.config import secrets
from sidecar.config.settings import LoggingSettings

if TYPE_CHECKING:
    from sidecar.config.settings import Settings

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
        structlog.dev.set_exc_info,  # log.exception(): the exception being handled
    ]


def _final(fmt: str, stream: TextIO) -> list[structlog.typing.Processor]:
    """What every record gets last: its exception formatted (frames without
    their local variables), every field scrubbed, then rendered."""
    if fmt == "console":
        # A plain traceback string (never Rich's, which shows locals), which
        # the console renderer prints as it is.
        return [structlog.processors.format_exc_info, secrets.scrub_event,
                structlog.dev.ConsoleRenderer(colors=stream.isatty(),
                                              exception_formatter=structlog.dev.plain_traceback)]
    tracebacks = ExceptionDictTransformer(show_locals=False)
    return [structlog.processors.ExceptionRenderer(tracebacks), secrets.scrub_event,
            structlog.processors.JSONRenderer()]


def register_secrets(settings: Settings) -> None:
    """Mask the secrets these settings hold in every log line from now on."""
    secrets.register_settings(settings)


def _log_uncaught(kind: type[BaseException], value: BaseException,
                  tb: TracebackType | None) -> None:
    logging.getLogger("sidecar").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


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
                    *_final(fmt, stream)],
    ))
    setattr(handler, _HANDLER_FLAG, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_FLAG, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(settings.level)
    # "N changes detected" on every spool write is noise at info.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    # Warnings and uncaught exceptions go through the scrubbing handler too,
    # not straight to stderr.
    logging.captureWarnings(True)
    sys.excepthook, threading.excepthook = _log_uncaught, _log_uncaught_in_thread
    structlog.configure(
        processors=[_below_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
