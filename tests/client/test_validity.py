"""Whatever an agent passes, every line the client writes is a valid record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.client import SpoolWriter, Tracer

from .helpers import check_line, spool_lines

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
           | st.binary(max_size=4) | st.builds(object) | st.datetimes())
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=3) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=3)),
    max_leaves=8,
)
numbers = st.integers() | st.floats() | st.booleans() | st.none() | st.text(max_size=3)
texts = st.text(max_size=12)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=texts, input=values, output=values,
       metadata=st.dictionaries(texts, values, max_size=3), tags=st.lists(texts, max_size=3),
       usage=st.dictionaries(texts, numbers, max_size=3), cost=numbers, value=numbers,
       tier=numbers, kind=texts)
def test_every_line_passes_parse_line_and_the_json_schema(
    tmp_path_factory: pytest.TempPathFactory, name: str, input: Any, output: Any,
    metadata: dict[str, Any], tags: list[str], usage: dict[str, Any], cost: Any, value: Any,
    tier: Any, kind: str,
) -> None:
    spool = tmp_path_factory.mktemp("spool")
    tracer = Tracer(name, writer=SpoolWriter(spool, name or "x"), agent_tier=tier,
                    project_name=name)
    with tracer.trace_agent(name, type=kind, input=input, metadata=metadata, tags=tags) as span:
        span.update(output=output, usage=usage, cost=cost, model=name, provider=name)
        span.log_event(name, metadata)
        tracer.trace_llm_call(name, name, input, output, usage, cost, metadata=metadata)
        tracer.log_metric(name, value, attributes=metadata)
    tracer.log_metric(name, value, unit=name)
    tracer.log_feedback(span.id, name, value, reason=name)
    tracer.log_feedback(span.trace_id, name, 1.0, target="trace")
    tracer.close()
    lines = spool_lines(spool)
    assert tracer.writer.stats().records_dropped == 0
    assert len(lines) >= 3  # the span, the LLM call, the trace feedback at least
    for line in lines:
        check_line(line)


def test_the_example_lines_in_the_docs_are_valid() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "client.md"
    examples = [line for line in docs.read_text().splitlines() if line.startswith('{"')]
    assert examples
    for line in examples:
        check_line(line.encode())
