"""Field size limits on raw JSON: a value over the limit becomes a marker.

The marker keeps the field's JSON shape, so Postgres (jsonb) and Opik take it
and the record still validates: an object becomes
``{"_truncated": true, "_original_bytes": N, "_cut_bytes": C, "_head": "..."}``
(``_head``: the first bytes of the value's JSON text), a list of events
becomes one event ``{"name": "_truncated", "attributes": <that object>}``, and
``error_info`` keeps its three fields with the message's head and the
traceback's tail (the end of a traceback says most). The result is never
longer than the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

# Space kept for the marker's own keys and for escapes in the head.
_OVERHEAD = 160
_TYPE_BYTES = 256


def truncate_json(field: str, raw: bytes, limit: int) -> bytes | None:
    """The marker for ``raw`` (the JSON of ``field``), or None when it fits."""
    if len(raw) <= limit:
        return None
    if field == "events":
        return _fit(lambda n: orjson.dumps([{"name": "_truncated",
                                             "attributes": _marker(raw, n)}]), limit)
    if field == "error_info":
        info = orjson.loads(raw)
        if isinstance(info, dict):
            return _fit(lambda n: orjson.dumps(_short_error(info, len(raw), n)), limit)
    return _fit(lambda n: orjson.dumps(_marker(raw, n)), limit)


def _marker(raw: bytes, head: int) -> dict[str, Any]:
    text = raw[:head].decode("utf-8", "ignore")
    return {"_truncated": True, "_original_bytes": len(raw),
            "_cut_bytes": len(raw) - len(text.encode()), "_head": text}


def _short_error(info: dict[str, Any], size: int, budget: int) -> dict[str, Any]:
    kind = _cut(str(info.get("exception_type") or "Error"), _TYPE_BYTES, tail=False)
    message, traceback = info.get("message"), info.get("traceback")
    share = max(0, (budget - len(kind)) // 2)
    out: dict[str, Any] = {"exception_type": kind}
    if isinstance(message, str):
        out["message"] = _cut(message, share, tail=False)
    if isinstance(traceback, str):
        out["traceback"] = _cut(traceback, share, tail=True)
    if "message" not in out and "traceback" not in out:
        out["message"] = f"[truncated: error_info was {size} bytes]"
    return out


def _cut(text: str, budget: int, tail: bool) -> str:
    data = text.encode()
    if len(data) <= budget:
        return text
    kept = (data[-budget:] if tail else data[:budget]).decode("utf-8", "ignore") if budget else ""
    note = f"[truncated: {len(data) - len(kept.encode())} bytes cut]"
    return f"{note} {kept}" if tail else f"{kept} {note}"


def _fit(build: Callable[[int], bytes], limit: int) -> bytes:
    """Build with a head budget that makes the result fit (escapes may grow it)."""
    budget = max(0, limit - _OVERHEAD)
    while True:
        out = build(budget)
        if len(out) <= limit or budget == 0:
            return out
        budget = max(0, budget * limit // len(out) - 16)
