"""Record -> one JSON line, with orjson (~1 us), never losing a record to a type.

Agent payloads carry whatever the agent had at hand (sets, dataclasses, numpy
scalars, exceptions, huge ints). Rather than drop such a record, unknown values
are written as their ``str()``; orjson's few hard failures (an int beyond 64
bits, a circular structure) fall back to the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

import orjson

_OPTIONS = (
    orjson.OPT_APPEND_NEWLINE
    | orjson.OPT_NAIVE_UTC
    | orjson.OPT_UTC_Z
    | orjson.OPT_NON_STR_KEYS
    | orjson.OPT_SERIALIZE_NUMPY
)


def _default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _std_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return _default(value)


def dumps_line(record: Mapping[str, Any]) -> bytes:
    """One JSON object followed by ``\\n``; raises only for a circular record."""
    try:
        return orjson.dumps(record, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        text = json.dumps(record, default=_std_default, ensure_ascii=False,
                          separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8", "replace") + b"\n"  # lone surrogates become "?"
