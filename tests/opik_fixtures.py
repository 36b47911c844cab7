"""Builders shared by the Opik tests: records of every shape, and settings.

Records go through JSON, as they come from the spool.

Plain functions rather than pytest fixtures, so that test modules import them
without shadowing (each module declares its own small fixtures).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from uuid6 import uuid7

from sidecar.config.settings import OpikSettings
from sidecar.records import FeedbackRecord, Rejected, SpanRecord, TraceRecord, parse_line
from tests.opik_emulator import OpikEmulator

R = TypeVar("R", SpanRecord, TraceRecord, FeedbackRecord)
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _parsed(values: dict[str, Any], kind: type[R]) -> R:
    """The record, read from its line as the sidecar reads it."""
    record = parse_line(as_json(values).encode())
    assert isinstance(record, kind), record.reason if isinstance(record, Rejected) else record
    return record


def as_json(values: dict[str, Any]) -> str:
    """JSON as an agent writes it (stdlib json keeps big ints, which orjson refuses)."""
    return json.dumps(values, default=_plain)


def _plain(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every request on loopback, whatever the environment says."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def settings_for(emu: OpikEmulator, **overrides: Any) -> OpikSettings:
    """Opik settings pointing at the emulator, with short timeouts for tests."""
    values: dict[str, Any] = {"enabled": True, "url": emu.base_url, "timeout_s": 2.0}
    values.update(overrides)
    return OpikSettings.model_validate(values)


def span(**fields: Any) -> SpanRecord:
    """A minimal valid child span (v7 ids), with ``fields`` overriding."""
    values: dict[str, Any] = {
        "id": uuid7(), "trace_id": uuid7(), "parent_span_id": uuid7(), "name": "step",
        "start_time": T0,
        "end_time": T0 + timedelta(seconds=1),
    }
    values.update(fields)
    return _parsed(values, SpanRecord)


def full_span(**fields: Any) -> SpanRecord:
    """A span with every field the spool format has."""
    values: dict[str, Any] = {
        "parent_span_id": uuid7(), "type": "llm", "input": {"prompt": "hi", "n": [1, 2]},
        "output": {"text": "hello"}, "metadata": {"env": "test", "nested": {"a": 1}},
        "tags": ["a", "b", "a"], "model": "gpt-4o", "provider": "openai",
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        "total_estimated_cost": 0.0012, "project_name": "agents", "agent_name": "planner",
        "agent_tier": 2,
        "events": [{"name": "retry", "time": T0 + timedelta(milliseconds=5),
                    "attributes": {"attempt": 1}}, {"name": "no-time"}],
        "last_updated_at": T0 + timedelta(seconds=2),
    }
    values.update(fields)
    return span(**values)


def error_span(**fields: Any) -> SpanRecord:
    """A failed span whose error_info has no traceback (Opik needs one)."""
    return span(error_info={"exception_type": "ValueError", "message": "bad input"}, **fields)


def legacy_span(**fields: Any) -> SpanRecord:
    """A span with uuid4 ids, as most agents write them."""
    values: dict[str, Any] = {"id": uuid.uuid4(), "trace_id": uuid.uuid4(),
                              "parent_span_id": uuid.uuid4()}
    return span(**(values | fields))


def trace(**fields: Any) -> TraceRecord:
    """An explicit trace record with every field."""
    values: dict[str, Any] = {
        "kind": "trace", "id": uuid7(), "name": "conversation", "start_time": T0,
        "end_time": T0 + timedelta(seconds=3), "input": {"q": "?"}, "output": {"a": "!"},
        "metadata": {"k": "v"}, "tags": ["t"], "thread_id": "thread-1",
        "error_info": {"exception_type": "Timeout", "traceback": "Traceback ..."},
    }
    values.update(fields)
    return _parsed(values, TraceRecord)


def feedback(target: str, target_id: uuid.UUID, **fields: Any) -> FeedbackRecord:
    """A feedback score on a trace or a span."""
    values: dict[str, Any] = {"kind": "feedback", "target": target, "id": target_id,
                              "name": "helpfulness", "value": 0.75, "reason": "clear"}
    values.update(fields)
    return _parsed(values, FeedbackRecord)
