"""Coerce what agents pass into the shapes the spool schema requires.

The client never raises into agent code, and the sidecar quarantines a record
with a wrong type, so values are made valid here instead: a non-object input is
wrapped (``{"input": value}``, as the Opik SDK does), token counts become ints,
an invalid cost or tier is dropped rather than the span.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

SPAN_TYPES = frozenset({"general", "llm", "tool", "guardrail"})
_USAGE_ALIASES = {"input_tokens": "prompt_tokens", "output_tokens": "completion_tokens"}
_MAX_TEXT = 32 * 1024
_MAX_TOKENS = 2**31  # Opik stores usage as int32
_log = logging.getLogger("sidecar.client")
_warned: set[str] = set()


def warn_once(where: str, exc: BaseException) -> None:
    """Log a call the client had to drop, once per API function and process."""
    if where not in _warned:
        _warned.add(where)
        _log.warning("client.api.call_dropped: %s: %s: %s (logged once)", where,
                     type(exc).__name__, _safe_str(exc))


def as_object(value: Any, key: str) -> dict[Any, Any] | None:
    """A JSON object: dicts as they are, anything else wrapped under ``key``."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, Mapping):
        return dict(value)
    return {key: value}


def name_of(value: Any, default: str = "unnamed") -> str:
    """A non-empty name (the schema requires one)."""
    text = value if isinstance(value, str) else _safe_str(value)
    return text or default


def str_list(values: Iterable[Any] | str | None) -> list[str] | None:
    """Tags as a list of strings; a lone string is one tag, not its letters."""
    if values is None:
        return None
    if isinstance(values, str):
        return [values]
    return [v if isinstance(v, str) else _safe_str(v) for v in values]


def usage_of(usage: Mapping[str, Any] | None) -> dict[str, int] | None:
    """Token counts as ints (others dropped); OpenAI and Anthropic names, total derived."""
    if not usage:
        return None
    out: dict[str, int] = {}
    for key, value in usage.items():
        if value.__class__ is not int:  # the common case costs one check
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            value = int(value) if value == value and abs(value) != math.inf else -1
        if 0 <= value < _MAX_TOKENS:
            out[_USAGE_ALIASES.get(key, key) if key.__class__ is str else str(key)] = value
    if "total_tokens" not in out and ("prompt_tokens" in out or "completion_tokens" in out):
        total = out.get("prompt_tokens", 0) + out.get("completion_tokens", 0)
        if total < _MAX_TOKENS:
            out["total_tokens"] = total
    return out or None


def real_number(value: Any, minimum: float = -math.inf) -> float | None:
    """A finite number not below ``minimum``, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) and number >= minimum else None


def tier_of(value: Any) -> int | None:
    """An integer agent tier that fits a Postgres integer, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    return None


def utc_time(value: datetime | float | None) -> datetime:
    """An aware UTC datetime: epoch seconds, aware or naive (local) datetimes, or now."""
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(float(value), UTC)


def error_info(exc: BaseException) -> dict[str, str]:
    """Opik's ``error_info`` for an exception, text capped at 32 KiB each."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "exception_type": type(exc).__name__ or "Exception",
        "message": _safe_str(exc)[:_MAX_TEXT],
        "traceback": text[-_MAX_TEXT:],
    }


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # an exception whose __str__ fails must not hide the error
        return object.__repr__(value)
