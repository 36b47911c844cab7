"""W3C Trace Context between agents: ``inject`` into and ``extract`` from headers.

``traceparent`` is ``00-<trace UUID hex>-<w3c_span_id(span UUID)>-01``. Since a
W3C parent id has 8 bytes and our span ids 16, ``tracestate`` carries the full
span UUID as ``spansidecar=<32 hex>`` whenever the 8 bytes alone would not
give it back. ``extract`` trusts that entry only if it matches the parent id
(an OTel hop in between changes the parent id but passes our entry on);
otherwise it uses ``span_uuid(trace id, parent id)``, which is exactly the id
the OTel exporter gives that hop's span. See ``sidecar.client.ids``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import TypeVar
from uuid import UUID

from sidecar.client.context import ParentLike, SpanContext, current
from sidecar.client.ids import span_uuid, w3c_span_id
from sidecar.client.shape import warn_once

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
VENDOR_KEY = "spansidecar"
_MAX_OTHER_ENTRIES = 31  # W3C allows 32 list members, one is ours
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
H = TypeVar("H", bound=MutableMapping[str, str])


def inject(headers: H, context: ParentLike | None = None) -> H:
    """Add ``traceparent`` (and ``tracestate`` when needed) for the current span.

    ``context`` defaults to the current span; without one, ``headers`` is
    returned unchanged. Returns ``headers`` for chaining.
    """
    ctx = context if context is not None else current.get()
    if ctx is None:
        return headers
    parent_id = w3c_span_id(ctx.span_id)
    entries = []
    if span_uuid(ctx.trace_id, parent_id) != ctx.span_id:
        entries.append(f"{VENDOR_KEY}={ctx.span_id.hex}")
    if ctx.vendor_state:
        entries.append(ctx.vendor_state)
    try:
        headers[TRACEPARENT] = f"00-{ctx.trace_id.hex}-{parent_id:016x}-01"
        if entries:
            headers[TRACESTATE] = ",".join(entries)
    except Exception as exc:  # e.g. a read-only headers object
        warn_once("inject", exc)
    return headers


def extract(headers: Mapping[str, str]) -> SpanContext | None:
    """The remote parent described by ``headers``, or None when absent or invalid.

    Header names are matched case-insensitively. Never raises.
    """
    try:
        parsed = parse_traceparent(_header(headers, TRACEPARENT))
        if parsed is None:
            return None
        trace_id, parent_id = parsed
        ours, others = split_tracestate(_header(headers, TRACESTATE))
        return SpanContext(trace_id, resolve_parent(trace_id, parent_id, ours), others)
    except Exception:  # headers come from the network: anything may be in them
        return None


def parse_traceparent(value: str | None) -> tuple[UUID, int] | None:
    """(trace UUID, 8-byte parent id) from a ``traceparent`` value, or None."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_hex, parent_hex, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_int, parent_id = int(trace_hex, 16), int(parent_hex, 16)
    if trace_int == 0 or parent_id == 0:
        return None
    return UUID(int=trace_int), parent_id


def split_tracestate(value: str | None) -> tuple[str | None, str]:
    """(our entry's value or None, the other entries as one string, in order)."""
    if not isinstance(value, str):
        return None, ""
    ours: str | None = None
    others: list[str] = []
    for member in value.split(","):
        member = member.strip(" \t")
        key, sep, val = member.partition("=")
        if not sep:
            continue
        if key == VENDOR_KEY:
            ours = ours or val
        elif len(others) < _MAX_OTHER_ENTRIES:
            others.append(member)
    return ours, ",".join(others)


def resolve_parent(trace_id: UUID, parent_id: int, carried: str | None) -> UUID:
    """The parent span's UUID: the carried one if it matches ``parent_id``, else derived."""
    if carried:
        try:
            candidate = UUID(hex=carried)
        except ValueError:
            candidate = None
        if candidate is not None and w3c_span_id(candidate) == parent_id:
            return candidate
    return span_uuid(trace_id, parent_id)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == name:
                return candidate
    return value
