"""Spans as agents write them, for the strict benchmark (issue 22).

``tests.support.span`` is one shape repeated: v4 ids, every timestamp in
``Z``, no events, no error, ``kind``/``v`` never present. A parser's fast
path can look better on that than on what agents send. This mix is what
the client and the agents' own writers produce: UUIDv7 ids, a seventh of
the timestamps with a ``+02:00`` offset, an ``events`` array,
``last_updated_at``, 3 % with ``error_info``, ``kind``/``v`` present on
most lines and absent on some; about 800 bytes a line. Seeded, so every run
and every variant ships the same lines.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

_EPOCH = datetime(2026, 11, 1, tzinfo=UTC)
_PLUS_TWO = timezone(timedelta(hours=2))


def uuid7(ms: int, rng: random.Random) -> UUID:
    """A version-7 UUID for the unix time ``ms`` with seeded random bits."""
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | rng.getrandbits(12) << 64
    return UUID(int=value | 0b10 << 62 | rng.getrandbits(62))


def _stamp(t: datetime, offset: bool) -> str:
    return t.astimezone(_PLUS_TWO).isoformat() if offset else \
        t.isoformat(timespec="microseconds").replace("+00:00", "Z")


def agent_span(i: int, rng: random.Random) -> dict[str, Any]:
    """Span number ``i``: the mix described in the module docstring."""
    start = _EPOCH + timedelta(milliseconds=i, microseconds=rng.randrange(1000))
    end = start + timedelta(milliseconds=120 + rng.randrange(400))
    ms = int(start.timestamp() * 1000)
    offset = i % 7 == 3
    rec: dict[str, Any] = {}
    if i % 10 != 9:  # most writers say what the line is; some leave it to the default
        rec.update(kind="span", v=1)
    rec.update({
        "id": str(uuid7(ms, rng)), "trace_id": str(uuid7(ms, rng)),
        "parent_span_id": str(uuid7(ms, rng)) if i % 4 else None,
        "name": "llm.call", "type": "llm", "agent_name": f"agent-{i % 20}", "agent_tier": 1 + i % 3,
        "start_time": _stamp(start, offset), "end_time": _stamp(end, offset),
        "input": {"prompt": "Summarise the customer's last three tickets in one paragraph. "},
        "output": {"text": "The customer reported intermittent login failures. "},
        "metadata": {"run": i, "region": "eu-west-1"}, "tags": ["bench", "llm"],
        "model": "gpt-4o-mini", "provider": "openai",
        "usage": {"prompt_tokens": 120 + i % 90, "completion_tokens": 48,
                  "total_tokens": 168 + i % 90},
        "total_estimated_cost": 0.00042,
        "events": [{"name": "first_token", "attributes": {"ttft_ms": 40},
                    "time": _stamp(start + timedelta(milliseconds=40), offset)}],
        "last_updated_at": _stamp(end, offset),
    })
    if rng.random() < 0.03:
        rec["error_info"] = {"exception_type": "RateLimitError", "message": "429 Too Many Requests"}
    return rec
