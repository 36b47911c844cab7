"""Span and trace ids: UUIDv7, and the mapping between W3C/OTel ids and UUIDs.

Why a local UUIDv7 generator instead of ``uuid6.uuid7()``: on the reference
machine that function costs ~8.5 us (more than the whole write budget), and it
moves its timestamp 1 ms ahead on every call made within the same millisecond,
so an agent emitting 100k spans quickly gets ids minutes in the future. This one
is RFC 9562 section 5.7 (48-bit ms timestamp, 74 random bits), ~1.5 us.

W3C trace context carries a 16-byte trace id (a trace UUID maps 1:1) and an
8-byte span id (our span ids are 16-byte UUIDs). The mapping, in both
directions, is ``span_uuid(trace_id, w3c_id)`` / ``w3c_span_id(uuid)``:

* ``w3c_span_id(u)`` takes the 64 low bits of ``u`` that are not version or
  variant bits (2 low bits of ``rand_a`` and the 62 bits of ``rand_b``); for a
  UUIDv7 these are random.
* ``span_uuid(t, s)`` builds a UUID from the trace id and the 8-byte id, so any
  process that sees the same ``(trace id, span id)`` pair computes the same
  UUID: the 48 timestamp bits and 10 more bits come from the trace id, the
  other 64 bits are ``s``. It is a version-7 UUID (timestamp = the trace's
  start) when the trace id is one, else version 8 (the sidecar maps non-v7
  ids to v7 deterministically). ``w3c_span_id(span_uuid(t, s)) == s``.

The span's own start time cannot go into the timestamp bits: a child only
knows its parent's 8-byte id, and must compute the same UUID as the parent.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable
from uuid import UUID

_RAND_B = (1 << 62) - 1
_VARIANT = 0b10 << 62
_rng = random.Random()
# A forked child must not repeat its parent's ids.
os.register_at_fork(after_in_child=_rng.seed)


def _uuid_from_int_checked(value: int) -> UUID:
    return UUID(int=value)


def _uuid_from_int_fast(value: int) -> UUID:
    # UUID(int=...) validates in Python and costs ~1 us more; this fills the
    # same slots. It is enabled only if it builds an identical UUID (below).
    u = object.__new__(UUID)
    object.__setattr__(u, "int", value)
    object.__setattr__(u, "is_safe", uuid.SafeUUID.unknown)
    return u


def _pick_uuid_builder() -> Callable[[int], UUID]:
    probe = 0x0190_0000_0000_7000_8000_0000_0000_0001
    try:
        fast = _uuid_from_int_fast(probe)
        if fast == UUID(int=probe) and str(fast) == str(UUID(int=probe)):
            return _uuid_from_int_fast
    except Exception:  # a Python whose UUID has other slots: use the safe path
        pass
    return _uuid_from_int_checked


uuid_from_int = _pick_uuid_builder()


def new_id() -> UUID:
    """A new UUIDv7 (ms timestamp now, 74 random bits), for a span or a trace."""
    r = _rng.getrandbits(74)
    ms = time.time_ns() // 1_000_000
    return uuid_from_int(
        (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (r >> 62) << 64 | _VARIANT | (r & _RAND_B)
    )


def new_w3c_span_id() -> int:
    """A random non-zero 64-bit span id (W3C forbids zero)."""
    return _rng.getrandbits(64) or 1


def w3c_span_id(span_id: UUID) -> int:
    """The 8-byte W3C parent id that stands for ``span_id`` on the wire."""
    x = span_id.int
    return (((x >> 64) & 0x3) << 62 | (x & _RAND_B)) or 1


def span_uuid(trace_id: UUID, w3c_id: int) -> UUID:
    """The UUID of the span ``w3c_id`` of trace ``trace_id``; deterministic."""
    t = trace_id.int
    version = 7 if trace_id.version == 7 else 8
    rand_a = ((t >> 64) & 0x3FF) << 2 | (w3c_id >> 62) & 0x3
    return uuid_from_int(
        (t >> 80) << 80 | version << 76 | rand_a << 64 | _VARIANT | (w3c_id & _RAND_B)
    )
