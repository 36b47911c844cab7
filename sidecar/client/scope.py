"""A live span and the context manager that opens and ends it.

Kept apart from the tracer so the hot path (enter, exit, one write) stays
small: a span is a slotted object holding only what was set on it, and the
record is built once, at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextvars import Token
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal
from uuid import UUID

from sidecar.client import shape
from sidecar.client.context import ParentLike, SpanContext, current
from sidecar.client.ids import new_id

UNSET: Any = object()  # "parent not given": use the context's current span
WriteSpan = Callable[["Span", "datetime | None"], None]


class Span:
    """An open span: add output, usage, metadata or events before it ends."""

    __slots__ = ("ended", "events", "fields", "name", "parent_span_id", "span_id",
                 "start_time", "trace_id", "type", "vendor_state")

    def __init__(self, name: str, type: str, parent: ParentLike | None, start: datetime) -> None:
        self.span_id: UUID = new_id()
        if parent is None:
            self.trace_id: UUID = new_id()
            self.parent_span_id: UUID | None = None
            self.vendor_state = ""
        else:
            self.trace_id = parent.trace_id
            self.parent_span_id = parent.span_id
            self.vendor_state = parent.vendor_state
        self.name = name if name.__class__ is str and name else shape.name_of(name)
        self.type = type if type.__class__ is str and type in shape.SPAN_TYPES else "general"
        self.start_time = start
        self.fields: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.ended = False

    @property
    def id(self) -> str:
        """The span id as text, e.g. for ``log_feedback`` later."""
        return str(self.span_id)

    @property
    def context(self) -> SpanContext:
        """This span's ids, e.g. to pass to another thread as ``parent=``."""
        return SpanContext(self.trace_id, self.span_id, self.vendor_state)

    def update(
        self,
        *,
        input: Any = None,
        output: Any = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        model: str | None = None,
        provider: str | None = None,
        usage: Mapping[str, Any] | None = None,
        cost: float | None = None,
    ) -> None:
        """Set fields of the span record; metadata is merged, tags are added."""
        try:
            self._update(input, output, metadata, tags, model, provider, usage, cost)
        except Exception as exc:  # e.g. metadata that is not a mapping
            shape.warn_once("Span.update", exc)

    def _update(self, input: Any, output: Any, metadata: Mapping[str, Any] | None,
                tags: Iterable[str] | None, model: str | None, provider: str | None,
                usage: Mapping[str, Any] | None, cost: float | None) -> None:
        fields = self.fields
        if input is not None:
            fields["input"] = shape.as_object(input, "input")
        if output is not None:
            fields["output"] = shape.as_object(output, "output")
        if metadata:
            fields["metadata"] = {**fields.get("metadata", {}), **metadata}
        if tags:
            fields["tags"] = [*fields.get("tags", ()), *(shape.str_list(tags) or ())]
        if model is not None:
            fields["model"] = model if model.__class__ is str else shape.name_of(model)
        if provider is not None:
            fields["provider"] = provider if provider.__class__ is str else shape.name_of(provider)
        if usage is not None and (tokens := shape.usage_of(usage)) is not None:
            fields["usage"] = tokens
        if cost is not None and (amount := shape.real_number(cost, 0.0)) is not None:
            fields["total_estimated_cost"] = amount

    def log_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        """Add a timestamped event (``{name, time, attributes}``) to this span."""
        try:
            self.events.append({"name": shape.name_of(name), "time": datetime.now(UTC),
                                "attributes": dict(attributes) if attributes else {}})
        except Exception as exc:
            shape.warn_once("Span.log_event", exc)


class SpanScope:
    """``with``/``async with``: opens a child of the current span, ends it on exit.

    Use each scope once; ``Tracer.trace_agent`` returns a new one per call.
    """

    __slots__ = ("_args", "_parent", "_token", "_write", "span")

    def __init__(self, write: WriteSpan, name: str, type: str, input: Any,
                 metadata: Mapping[str, Any] | None, tags: Iterable[str] | None,
                 parent: ParentLike | None) -> None:
        self._write = write
        self._args = (name, type, input, metadata, tags)
        self._parent = parent
        self._token: Token[ParentLike | None] | None = None
        self.span: Span | None = None

    def __enter__(self) -> Span:
        name, type, input, metadata, tags = self._args
        parent = current.get() if self._parent is UNSET else self._parent
        try:
            span = Span(name, type, parent, datetime.now(UTC))
        except Exception as exc:  # e.g. a parent= that is not a span context
            shape.warn_once("trace_agent", exc)
            parent, span = None, Span(name, type, None, datetime.now(UTC))
        self._parent, self.span = parent, span
        if input is not None or metadata is not None or tags is not None:
            span.update(input=input, metadata=metadata, tags=tags)
        self._token = current.set(span)
        return span

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        span = self.span
        if span is None:
            return False
        self._restore_parent(span)
        try:
            if exc is not None and not isinstance(exc, GeneratorExit):  # a closed generator
                span.fields["error_info"] = shape.error_info(exc)
            self._write(span, None)
        except Exception as error:  # a bug here must not replace the agent's exception
            shape.warn_once("trace_agent", error)
        return False  # never swallow the block's exception

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> Literal[False]:
        return self.__exit__(et, exc, tb)

    def _restore_parent(self, span: Span) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        try:
            current.reset(token)
        except ValueError:  # exited in another context (e.g. a generator finalised elsewhere)
            if current.get() is span:
                current.set(self._parent)
