"""Deterministic UUIDv7 ids for Opik, which accepts no other version.

Agents may write any UUID (``uuid4()`` is the usual habit). Opik answers 400
"Invalid UUID" unless every id is a version 7, so the Opik sink maps the
others with ``to_v7``. The mapping depends on the id alone (never on the
time of sending or on the record), which is what keeps it usable:

- the same input always gives the same output, so a resend is idempotent;
- every span of a trace maps its ``trace_id`` to the same v7 id, and a
  feedback score maps its target id to the one the span or trace got.

The 48-bit time field of the result is the id's own time for a version 1 or
6 UUID (which carry one); for any other version it is drawn from a hash of
the id into the years 2020-2054. Caveat: Opik can optionally refuse ids whose
embedded time is more than 24 h away from now (off when self-hosted, unknown
on Opik Cloud); with that check on, hash-timed ids are rejected. Agents that
want to be safe write version 7 ids, which pass through unchanged.
"""

from __future__ import annotations

from hashlib import blake2b as _blake2b
from uuid import UUID, SafeUUID

_EPOCH_2020_MS = 1_577_836_800_000
_HASH_SPAN_MS = 1 << 40  # about 34.8 years from 2020
_MAX_MS = (1 << 48) - 1
# 100 ns intervals between the Gregorian epoch (1582-10-15) and 1970-01-01.
_GREGORIAN_OFFSET = 0x01B21DD213814000
_RANDOM_80 = (1 << 80) - 1
_VERSION_MASK = 0xF << 76
_VARIANT_MASK = 0x3 << 62


_V7_BITS = (7 << 76) | (0b10 << 62)
# An id is a v7 when its bits under V7_MASK are V7_BITS.
V7_MASK, V7_BITS = _VERSION_MASK | _VARIANT_MASK, _V7_BITS


def is_v7(value: UUID) -> bool:
    """True for an RFC 9562 version 7 UUID (RFC variant, version nibble 7)."""
    return value.int & (_VERSION_MASK | _VARIANT_MASK) == _V7_BITS


def to_v7(value: UUID) -> UUID:
    """``value`` itself when it is a v7, else its deterministic v7 image."""
    i = value.int
    if i & (_VERSION_MASK | _VARIANT_MASK) == _V7_BITS:
        return value
    return uuid_of(mapped_bits(i))


# A hasher with the personalisation already set: a copy of it is cheaper than
# a new one from the arguments (0.29 against 0.42 us) and digests the same.
_HASHER = _blake2b(digest_size=16, person=b"span-sidecar-v7")
_KEEP = ~(_VERSION_MASK | _VARIANT_MASK)
# The version and variant bits of a v1 and a v6 (RFC variant), which carry a time.
_TIMED_BITS = frozenset({(1 << 76) | (0b10 << 62), (6 << 76) | (0b10 << 62)})
_KEEP_RANDOM = _RANDOM_80 & _KEEP
_HASH_SPAN_BITS = _HASH_SPAN_MS - 1  # the span is a power of two: % is a mask


def mapped_bits(i: int) -> int:
    """The v7 image of a non-v7 id, as its 128 bits (``to_v7``'s mapping).

    Not cached: span ids are unique, so a cache only held memory (64k
    entries, ~20 MB); callers that map one id often keep their own memo.
    Written for speed (0.70 against 0.88 us an id): one mask for the
    version test, the time's modulo as a mask, and an early return; the
    same bits as before (the time, the digest's last 10 bytes, then
    version 7 and the variant), pinned by the tests.
    """
    hasher = _HASHER.copy()
    hasher.update(i.to_bytes(16, "big"))
    digest = int.from_bytes(hasher.digest(), "big")
    if i & (_VERSION_MASK | _VARIANT_MASK) in _TIMED_BITS:
        ms = _embedded_ms(i)
        if ms is not None:
            return (ms << 80) | (digest & _KEEP_RANDOM) | _V7_BITS
    # no time of its own: the digest's first 6 bytes, into 2020-2054
    ms = _EPOCH_2020_MS + ((digest >> 80) & _HASH_SPAN_BITS)
    return (ms << 80) | (digest & _KEEP_RANDOM) | _V7_BITS


_UNKNOWN = SafeUUID.unknown  # an enum member lookup costs as much as the rest


def uuid_of(bits: int) -> UUID:
    """``UUID(int=bits)`` for bits known to be in range, without the checks
    of ``UUID.__init__`` (a third of the mapping's cost)."""
    value = object.__new__(UUID)
    object.__setattr__(value, "int", bits)
    object.__setattr__(value, "is_safe", _UNKNOWN)
    return value


def _embedded_ms(i: int) -> int | None:
    """Unix milliseconds of a time-based (v1 or v6) UUID, if plausible."""
    # UUID.version: the nibble counts only in the RFC variant (bits 10).
    version = (i >> 76) & 0xF if (i >> 62) & 0b11 == 0b10 else None
    if version == 1:
        ticks = (((i >> 64) & 0xFFF) << 48) | (((i >> 80) & 0xFFFF) << 32) | (i >> 96)
    elif version == 6:
        ticks = ((i >> 96) << 28) | (((i >> 80) & 0xFFFF) << 12) | ((i >> 64) & 0xFFF)
    else:
        return None
    ms = (ticks - _GREGORIAN_OFFSET) // 10_000
    return ms if 0 <= ms <= _MAX_MS else None
