"""Tracer: nesting through contextvars (tasks, threads), errors, LLM calls, metrics, feedback."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from sidecar.client import SpoolWriter, Tracer, current_span_context, inject, use_context
from sidecar.schema import FeedbackRecord, SpanRecord

from .helpers import spool_lines, spool_records


def spans_by_name(spool: Path) -> dict[str, SpanRecord]:
    records = spool_records(spool)
    out = {r.name: r for r in records if isinstance(r, SpanRecord)}
    assert len(out) == len([r for r in records if isinstance(r, SpanRecord)]), "names repeat"
    return out


def test_nested_blocks_make_a_tree_in_one_trace(tracer: Tracer, spool: Path) -> None:
    with tracer.trace_agent("root", input={"q": 1}) as root:
        with tracer.trace_agent("child", type="tool") as child:
            assert current_span_context() == child.context
            with tracer.trace_agent("grandchild"):
                pass
        assert current_span_context() == root.context
    assert current_span_context() is None
    with tracer.trace_agent("other-root"):
        pass
    spans = spans_by_name(spool)
    assert spans["root"].parent_span_id is None
    assert spans["child"].parent_span_id == spans["root"].id == root.span_id
    assert spans["grandchild"].parent_span_id == spans["child"].id
    assert {spans[n].trace_id for n in ("root", "child", "grandchild")} == {root.trace_id}
    assert spans["other-root"].trace_id != root.trace_id
    assert spans["child"].type == "tool"
    assert spans["root"].agent_name == "tester" and spans["root"].agent_tier == 1
    assert spans["root"].project_name == "proj" and spans["root"].input == {"q": 1}
    assert spans["root"].id.version == 7 and spans["root"].trace_id.version == 7


def test_spans_carry_utc_rfc3339_times_and_last_updated_at(tracer: Tracer, spool: Path) -> None:
    before = datetime.now(UTC)
    with tracer.trace_agent("timed"):
        pass
    (line,) = spool_lines(spool)
    assert b'"start_time":"' in line and b'Z","end_time"' in line
    span = spans_by_name(spool)["timed"]
    assert span.end_time is not None and span.last_updated_at == span.end_time
    assert before <= span.start_time <= span.end_time <= datetime.now(UTC)
    assert span.start_time.utcoffset() == timedelta(0)


async def test_asyncio_tasks_inherit_the_span_they_were_started_in(
    tracer: Tracer, spool: Path
) -> None:
    async def worker(n: int) -> None:
        async with tracer.trace_agent(f"task-{n}"):
            await asyncio.sleep(0)  # let the siblings interleave
            async with tracer.trace_agent(f"task-{n}-inner"):
                await asyncio.sleep(0)

    async with tracer.trace_agent("root") as root:
        await asyncio.gather(*(worker(n) for n in range(3)))
        async with asyncio.TaskGroup() as group:
            group.create_task(worker(3))
    await asyncio.gather(worker(9))  # started outside any span
    spans = spans_by_name(spool)
    for n in range(4):
        assert spans[f"task-{n}"].parent_span_id == root.span_id
        assert spans[f"task-{n}-inner"].parent_span_id == spans[f"task-{n}"].id
        assert spans[f"task-{n}-inner"].trace_id == root.trace_id
    assert spans["task-9"].parent_span_id is None and spans["task-9"].trace_id != root.trace_id


async def test_to_thread_carries_the_context_into_the_thread(tracer: Tracer, spool: Path) -> None:
    def blocking() -> None:
        with tracer.trace_agent("in-thread"):
            pass

    async with tracer.trace_agent("root") as root:
        await asyncio.to_thread(blocking)
    assert spans_by_name(spool)["in-thread"].parent_span_id == root.span_id


def test_threads_follow_the_context_they_are_given(tracer: Tracer, spool: Path) -> None:
    def work(name: str) -> None:
        with tracer.trace_agent(name):
            pass

    def explicit() -> None:
        with use_context(root.context), tracer.trace_agent("explicit"):
            pass

    with tracer.trace_agent("root") as root:
        ctx = contextvars.copy_context()
        threads = [
            threading.Thread(target=ctx.run, args=(work, "copied")),
            threading.Thread(target=work, args=("plain",)),  # a new thread has an empty context
            threading.Thread(target=explicit),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    spans = spans_by_name(spool)
    assert spans["copied"].parent_span_id == root.span_id
    assert spans["explicit"].parent_span_id == root.span_id
    assert spans["plain"].parent_span_id is None


def test_an_exception_is_recorded_and_reraised_untouched(tracer: Tracer, spool: Path) -> None:
    error = ValueError("bad input")

    def fail() -> None:
        raise error

    with pytest.raises(ValueError) as caught, tracer.trace_agent("outer"):
        with tracer.trace_agent("failing"):
            fail()
    assert caught.value is error
    assert caught.traceback[-1].name == "fail"  # the original traceback, not ours
    assert current_span_context() is None
    spans = spans_by_name(spool)
    info = spans["failing"].error_info
    assert info is not None and info.exception_type == "ValueError"
    assert info.message == "bad input" and info.traceback is not None
    assert "raise error" in info.traceback
    assert spans["outer"].error_info is not None  # it passed through the outer block too


async def test_async_exceptions_and_cancellation_are_recorded(tracer: Tracer, spool: Path) -> None:
    started = asyncio.Event()

    async def hang() -> None:
        async with tracer.trace_agent("cancelled"):
            started.set()
            await asyncio.Event().wait()

    with pytest.raises(KeyError):
        async with tracer.trace_agent("async-failing"):
            raise KeyError("k")
    task = asyncio.create_task(hang())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    spans = spans_by_name(spool)
    assert spans["async-failing"].error_info is not None
    assert spans["async-failing"].error_info.exception_type == "KeyError"
    assert spans["cancelled"].error_info is not None
    assert spans["cancelled"].error_info.exception_type == "CancelledError"


def test_llm_call_is_an_llm_child_with_usage_and_cost(tracer: Tracer, spool: Path) -> None:
    started = datetime.now(UTC) - timedelta(seconds=2)
    with tracer.trace_agent("agent") as agent:
        span_id = tracer.trace_llm_call(
            "gpt-4o", "openai", [{"role": "user", "content": "hi"}], "hello",
            {"input_tokens": 12, "output_tokens": 3.0, "cached": True}, 0.0021,
            start_time=started, metadata={"temperature": 0},
        )
    llm = spans_by_name(spool)["gpt-4o"]
    assert str(llm.id) == span_id and llm.parent_span_id == agent.span_id
    assert llm.type == "llm" and llm.model == "gpt-4o" and llm.provider == "openai"
    assert llm.usage == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert llm.total_estimated_cost == 0.0021 and llm.metadata == {"temperature": 0}
    assert llm.input == {"input": [{"role": "user", "content": "hi"}]}
    assert llm.output == {"output": "hello"}
    assert llm.duration_ms is not None and llm.duration_ms >= 2000


def test_span_update_and_events(tracer: Tracer, spool: Path) -> None:
    with tracer.trace_agent("agent", tags=["a"], metadata={"x": 1}) as span:
        span.update(output={"answer": 42}, metadata={"y": 2}, tags=["b"], usage={"total_tokens": 7},
                    cost=-1.0)
        span.log_event("retrieved", {"docs": 3})
    agent = spans_by_name(spool)["agent"]
    assert agent.output == {"answer": 42} and agent.metadata == {"x": 1, "y": 2}
    assert agent.tags == ["a", "b"] and agent.usage == {"total_tokens": 7}
    assert agent.total_estimated_cost is None  # a negative cost is dropped, not the span
    assert agent.events is not None and agent.events[0].name == "retrieved"
    assert agent.events[0].attributes == {"docs": 3} and agent.events[0].time is not None


def test_metrics_are_events_of_the_current_span_or_spans_of_their_own(
    tracer: Tracer, spool: Path
) -> None:
    with tracer.trace_agent("agent") as agent:
        tracer.log_metric("retrieval.hits", 4, unit="docs", attributes={"index": "main"})
    tracer.log_metric("queue.depth", 17.5)
    tracer.log_metric("broken", float("nan"))  # dropped with a warning, no exception
    spans = spans_by_name(spool)
    events = spans["agent"].events
    assert events is not None and events[0].name == "retrieval.hits"
    assert events[0].attributes == {"metric.value": 4, "metric.unit": "docs", "index": "main"}
    standalone = spans["queue.depth"]
    assert standalone.tags == ["metric"] and standalone.parent_span_id is None
    assert standalone.events is not None
    assert standalone.events[0].attributes == {"metric.value": 17.5}
    assert standalone.duration_ms == 0 and agent.span_id != standalone.id
    assert "broken" not in spans


def test_feedback_records_target_a_span_or_a_trace(tracer: Tracer, spool: Path) -> None:
    with tracer.trace_agent("agent") as span:
        pass
    tracer.log_feedback(span.id, "helpfulness", 0.75, "clear answer")
    tracer.log_feedback(span.trace_id, "resolved", True, target="trace")
    tracer.log_feedback("not-a-uuid", "x", 1.0)  # dropped with a warning
    tracer.log_feedback(span.id, "x", "high")  # type: ignore[arg-type]
    feedback = [r for r in spool_records(spool) if isinstance(r, FeedbackRecord)]
    assert [(f.target, f.id, f.name, f.value, f.reason) for f in feedback] == [
        ("span", span.span_id, "helpfulness", 0.75, "clear answer"),
    ]


def test_the_api_never_raises_even_when_the_spool_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    tracer = Tracer("broken", tmp_path / "file" / "spool")
    with tracer.trace_agent("a") as span:
        tracer.trace_llm_call("m", "p", object(), object(), {"prompt_tokens": "x"}, "free")  # type: ignore[arg-type]
        tracer.log_metric("m", 1)
    tracer.log_feedback(span.id, "f", 1)
    tracer.close()
    assert tracer.writer.stats().records_dropped == 3
    assert tracer.writer.stats().records_written == 0


def test_bad_names_types_and_tiers_are_coerced_into_valid_records(spool: Path) -> None:
    tracer = Tracer("", writer=SpoolWriter(spool, "x"), agent_tier=True)
    with tracer.trace_agent("", type="unknown", tags="single") as span:
        span.update(input=42, metadata={1: "int key"})  # type: ignore[dict-item]
    tracer.close()
    (record,) = spool_records(spool)
    assert isinstance(record, SpanRecord)
    assert record.name == "unnamed" and record.type == "general" and record.tags == ["single"]
    assert record.agent_name == "agent" and record.agent_tier is None
    assert record.input == {"input": 42} and record.metadata == {"1": "int key"}
    assert isinstance(record.id, UUID)


def test_numbers_beyond_any_column_are_dropped_not_raised(spool: Path) -> None:
    tracer = Tracer("big", writer=SpoolWriter(spool, "big"), agent_tier=2**40)
    with tracer.trace_agent("a") as span:
        span.update(cost=2**2000, usage={"prompt_tokens": 2**70, "completion_tokens": 1})
        tracer.log_metric("huge", 2**2000)
    tracer.log_feedback(span.id, "huge", 2**2000)
    tracer.close()
    (record,) = spool_records(spool)
    assert isinstance(record, SpanRecord) and record.agent_tier is None
    assert record.total_estimated_cost is None and record.events is None
    assert record.usage == {"completion_tokens": 1, "total_tokens": 1}


def test_misuse_of_the_api_is_logged_not_raised(
    tracer: Tracer, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from types import MappingProxyType

    with caplog.at_level("WARNING", logger="sidecar.client"):
        with tracer.trace_agent("a", metadata=["not", "a", "mapping"]) as span:  # type: ignore[arg-type]
            span.update(metadata=42)  # type: ignore[arg-type]
            span.log_event("e", attributes=7)  # type: ignore[arg-type]
            assert tracer.trace_llm_call("m", start_time="yesterday") == ""  # type: ignore[arg-type]
            with tracer.trace_agent("b", parent="not a context", type=[1]) as b:  # type: ignore[arg-type]
                assert b.parent_span_id is None and b.type == "general"
            frozen: object = inject(MappingProxyType({}))  # type: ignore[type-var]
    assert frozen == {}
    assert "client.api.call_dropped: inject" in caplog.text
    records = {r.name: r for r in spool_records(spool) if isinstance(r, SpanRecord)}
    assert set(records) == {"a", "b"} and records["a"].metadata is None


def test_closing_a_generator_inside_a_span_is_not_an_error(tracer: Tracer, spool: Path) -> None:
    def steps() -> Generator[int, None, None]:
        with tracer.trace_agent("generator"):
            yield 1
            yield 2

    gen = steps()
    assert next(gen) == 1
    gen.close()
    (record,) = spool_records(spool)
    assert isinstance(record, SpanRecord) and record.error_info is None
