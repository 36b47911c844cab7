"""The tracing API agents call: spans, LLM calls, metrics and feedback.

It writes each span once, complete, when it ends (a partial first version
would be kept by Postgres, whose inserts are keyed on the span id). Nothing
here raises into agent code: bad arguments are coerced or the record is
dropped and logged once; an exception inside a traced block is recorded in
``error_info`` and propagates untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from sidecar.client import shape
from sidecar.client.context import ParentLike, SpanContext, current, current_span_context
from sidecar.client.ids import new_id
from sidecar.client.scope import UNSET, Span, SpanScope
from sidecar.client.writer import SpoolWriter

DEFAULT_SPOOL_DIR = "/var/spool/span-sidecar"
# The daemon's own variable first, so that one export moves both sides; the
# client's older name is still honoured. An empty variable counts as unset.
SPOOL_DIR_ENVS = ("SIDECAR_SPOOL_DIR", "SPAN_SIDECAR_SPOOL_DIR")
SPOOL_DIR_ENV = SPOOL_DIR_ENVS[1]  # the client's own name (before 0.2.0 the only one)


def default_spool_dir(env: Mapping[str, str] | None = None) -> str:
    """``$SIDECAR_SPOOL_DIR``, else ``$SPAN_SIDECAR_SPOOL_DIR``, else the default."""
    env = os.environ if env is None else env
    for name in SPOOL_DIR_ENVS:
        if env.get(name):
            return env[name]
    return DEFAULT_SPOOL_DIR


class Tracer:
    """Writes one agent's spans, metrics and feedback to the local spool.

    ``Tracer("planner")`` appends to ``spool_dir``, else ``$SIDECAR_SPOOL_DIR``,
    else ``$SPAN_SIDECAR_SPOOL_DIR``, else ``/var/spool/span-sidecar``
    (``default_spool_dir``); pass ``writer=`` to share or tune a writer.
    """

    def __init__(
        self,
        agent_name: str,
        spool_dir: str | os.PathLike[str] | None = None,
        *,
        agent_tier: int | None = None,
        project_name: str | None = None,
        writer: SpoolWriter | None = None,
    ) -> None:
        self.agent_name = shape.name_of(agent_name, "agent")[:512]  # the schema's limit
        self.writer = writer or SpoolWriter(spool_dir or default_spool_dir(), self.agent_name)
        static: dict[str, Any] = {"agent_name": self.agent_name}
        if shape.tier_of(agent_tier) is not None:
            static["agent_tier"] = agent_tier
        if project_name:
            static["project_name"] = project_name
        self._static = static

    def trace_agent(
        self,
        name: str,
        *,
        type: str = "general",
        input: Any = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        parent: ParentLike | None = UNSET,
    ) -> SpanScope:
        """A span around a block: ``with`` or ``async with``, yielding a ``Span``.

        Its parent is the current span of this context (or ``parent=``, e.g.
        ``extract(headers)``; ``None`` starts a new trace). An exception in the
        block is recorded and re-raised unchanged.
        """
        return SpanScope(self._write_span, name, type, input, metadata, tags, parent)

    def trace_llm_call(
        self,
        model: str,
        provider: str | None = None,
        input: Any = None,
        output: Any = None,
        usage: Mapping[str, Any] | None = None,
        cost: float | None = None,
        *,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_time: datetime | float | None = None,
        end_time: datetime | float | None = None,
    ) -> str:
        """Log a finished LLM call as a ``type="llm"`` child of the current span.

        ``start_time``/``end_time`` (datetimes or epoch seconds) default to now;
        pass the start so latency is right. Returns the new span's id ("" if
        the arguments made no span).
        """
        try:
            span = Span(name or model, "llm", current.get(), shape.utc_time(start_time))
            span.update(input=input, output=output, metadata=metadata, model=model,
                        provider=provider, usage=usage, cost=cost)
            self._write_span(span, shape.utc_time(end_time) if end_time is not None else None)
            return str(span.span_id)
        except Exception as exc:  # never into the agent
            shape.warn_once("trace_llm_call", exc)
            return ""

    def log_metric(
        self,
        name: str,
        value: float,
        *,
        unit: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a measurement as an event of the current span.

        The event is ``{"name": name, "attributes": {"metric.value": value,
        "metric.unit": unit, **attributes}}``. Outside any live span it becomes
        a zero-duration span of its own, tagged ``metric``, carrying that event.
        """
        try:
            self._log_metric(name, value, unit, attributes)
        except Exception as exc:
            shape.warn_once("log_metric", exc)

    def _log_metric(self, name: str, value: float, unit: str | None,
                    attributes: Mapping[str, Any] | None) -> None:
        if shape.real_number(value) is None:
            raise ValueError(f"metric {name!r}: value is not a finite number")
        attrs: dict[str, Any] = {"metric.value": value}
        if unit is not None:
            attrs["metric.unit"] = unit
        if attributes:
            attrs.update(attributes)
        now = datetime.now(UTC)
        event = {"name": shape.name_of(name), "time": now, "attributes": attrs}
        parent = current.get()
        if isinstance(parent, Span) and not parent.ended:
            parent.events.append(event)
            return
        span = Span(name, "general", parent, now)
        span.events.append(event)
        span.fields["tags"] = ["metric"]
        self._write_span(span, now)

    def log_feedback(
        self,
        target_id: str | UUID,
        name: str,
        value: float,
        reason: str | None = None,
        *,
        target: Literal["span", "trace"] = "span",
    ) -> None:
        """Write a feedback score for a span (or, with ``target="trace"``, a trace)."""
        try:
            number = shape.real_number(value)
            if number is None:
                raise ValueError(f"feedback {name!r}: value is not a finite number")
            record: dict[str, Any] = {
                "kind": "feedback", "v": 1, "target": "trace" if target == "trace" else "span",
                "id": target_id if isinstance(target_id, UUID) else UUID(str(target_id)),
                "name": shape.name_of(name), "value": number,
            }
            if reason is not None:
                record["reason"] = shape.name_of(reason, "")
            if "project_name" in self._static:
                record["project_name"] = self._static["project_name"]
        except Exception as exc:
            shape.warn_once("log_feedback", exc)
            return
        self.writer.write(record)

    def current(self) -> SpanContext | None:
        """The current span's ids, to hand to a thread or ``inject``."""
        return current_span_context()

    def new_trace_id(self) -> UUID:
        """A fresh UUIDv7, for callers that want to choose a trace id up front."""
        return new_id()

    def close(self) -> None:
        """Close the writer: its current file becomes ``.jsonl.done``."""
        self.writer.close()

    def _write_span(self, span: Span, end: datetime | None = None) -> None:
        end = end or datetime.now(UTC)
        span.ended = True
        record: dict[str, Any] = {
            "v": 1, "id": span.span_id, "trace_id": span.trace_id,
            "parent_span_id": span.parent_span_id, "name": span.name, "type": span.type,
            "start_time": span.start_time, "end_time": end, "last_updated_at": end,
        }
        record.update(self._static)
        if span.fields:
            record.update(span.fields)
        if span.events:
            record["events"] = span.events
        self.writer.write(record)
