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
_V7_BITS = 0x7 << 76 | _VARIANT
_getrandbits = _rng.getrandbits
_time_ns = time.time_ns
_new_object = object.__new__
_set_slot = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def _uuid_from_int_fast(value: int) -> UUID:
    # UUID(int=...) validates in Python and costs ~1 us more; this fills the
    # same slots. It is used only if it builds an identical UUID (see below).
    u = _new_object(UUID)
    _set_slot(u, "int", value)
    _set_slot(u, "is_safe", _UNKNOWN)
    return u


def _new_id_fast() -> UUID:
    r = _getrandbits(74)
    u = _new_object(UUID)
    ms = _time_ns() // 1_000_000
    _set_slot(u, "int", ms << 80 | _V7_BITS | (r >> 62) << 64 | (r & _RAND_B))
    _set_slot(u, "is_safe", _UNKNOWN)
    return u


def _uuid_from_int_checked(value: int) -> UUID:
    return UUID(int=value)


def _new_id_checked() -> UUID:
    r = _getrandbits(74)
    return UUID(int=(_time_ns() // 1_000_000) << 80 | _V7_BITS | (r >> 62) << 64 | (r & _RAND_B))


def _fast_path_works() -> bool:
    probe = 0x0190_0000_0000_7000_8000_0000_0000_0001
    try:
        fast = _uuid_from_int_fast(probe)
        return fast == UUID(int=probe) and str(fast) == str(UUID(int=probe)) and (
            hash(fast) == hash(UUID(int=probe)))
    except Exception:  # a Python whose UUID has other slots: use the safe path
        return False


_FAST = _fast_path_works()
uuid_from_int: Callable[[int], UUID] = _uuid_from_int_fast if _FAST else _uuid_from_int_checked
new_id: Callable[[], UUID] = _new_id_fast if _FAST else _new_id_checked
"""A new UUIDv7 (ms timestamp now, 74 random bits), for a span or a trace."""


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
