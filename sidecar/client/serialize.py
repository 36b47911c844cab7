"""Record -> one JSON line, with orjson (~1 us), never losing a record to a type.

Agent payloads carry whatever the agent had at hand (sets, dataclasses, numpy
scalars, exceptions, huge ints, broken unicode, deep or circular structures).
Rather than drop such a record, unknown values are written as their ``str()``;
the rare values orjson refuses outright (ints beyond 64 bits, lone surrogates,
nesting deeper than it allows) are rewritten by a slower second pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

_OPTIONS = (
    orjson.OPT_APPEND_NEWLINE
    | orjson.OPT_NAIVE_UTC
    | orjson.OPT_UTC_Z
    | orjson.OPT_NON_STR_KEYS
    | orjson.OPT_SERIALIZE_NUMPY
)
_MAX_DEPTH = 100  # orjson stops at 254 levels; a circular structure never ends
_INT_RANGE = range(-(2**63), 2**64)


def _default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    try:
        return str(value)
    except Exception:
        return object.__repr__(value)


def dumps_line(record: Mapping[str, Any]) -> bytes:
    """One JSON object followed by ``\\n``; raises only on a bug in the sanitiser."""
    try:
        return orjson.dumps(record, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return orjson.dumps(_sanitize(record, 0), default=_default, option=_OPTIONS)


def _sanitize(value: Any, depth: int) -> Any:
    """A copy of ``value`` that orjson accepts (the slow path, for odd records only)."""
    if depth > _MAX_DEPTH:
        return _default(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value in _INT_RANGE else str(value)
    if isinstance(value, Mapping):
        return {_key(k): _sanitize(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_sanitize(v, depth + 1) for v in value]
    return value


def _key(key: Any) -> Any:
    if isinstance(key, str):
        return key.encode("utf-8", "replace").decode("utf-8")
    if isinstance(key, int | float | bool) or key is None:
        return key if not isinstance(key, int) or key in _INT_RANGE else str(key)
    return _default(key)
