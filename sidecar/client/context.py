"""The current span, carried by ``contextvars`` so nesting follows the code.

asyncio copies the context into every task it creates, so a task started
inside a span is its child. A plain ``threading.Thread`` starts with an empty
context: run its target through ``contextvars.copy_context().run`` (as
``asyncio.to_thread`` does), or pass ``parent=`` explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID


class ParentLike(Protocol):
    """What a child needs from its parent: a live span or a remote context."""

    @property
    def trace_id(self) -> UUID: ...
    @property
    def span_id(self) -> UUID: ...
    @property
    def vendor_state(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SpanContext:
    """A span seen from elsewhere: ids only (e.g. from ``extract(headers)``).

    ``vendor_state`` holds other vendors' ``tracestate`` entries, passed on
    unchanged as W3C Trace Context asks.
    """

    trace_id: UUID
    span_id: UUID
    vendor_state: str = ""


current: ContextVar[ParentLike | None] = ContextVar("span_sidecar_current", default=None)


def current_span_context() -> SpanContext | None:
    """The innermost active span of this context, as plain ids (or None)."""
    parent = current.get()
    if parent is None or isinstance(parent, SpanContext):
        return parent
    return SpanContext(parent.trace_id, parent.span_id, parent.vendor_state)


@contextmanager
def use_context(parent: ParentLike | None) -> Iterator[None]:
    """Make ``parent`` the current span inside the block (e.g. in a worker thread)."""
    token = current.set(parent)
    try:
        yield
    finally:
        current.reset(token)
