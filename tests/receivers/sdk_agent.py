"""An agent instrumented with the real Opik SDK, unchanged: run as a process
with ``OPIK_URL_OVERRIDE`` pointing at the sidecar's receiver; prints the ids
it made as one JSON object.

``--updates`` adds what the SDK sends as PATCH requests: ``span.update()``,
``span.end()`` and ``trace.end()``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta

os.environ.setdefault("OPIK_SENTRY_ENABLE", "false")
os.environ.setdefault("OPIK_ANALYTICS_ENABLE", "false")

import opik
from opik import opik_context, track

ids: dict[str, str] = {}


@track(name="retrieve", type="tool")
def retrieve(query: str) -> list[str]:
    ids["retrieve"] = opik_context.get_current_span_data().id  # type: ignore[union-attr]
    return [query.upper()]


@track(name="answer", type="llm")
def answer(query: str) -> str:
    opik_context.update_current_span(model="gpt-4o", provider="openai",
                                     usage={"prompt_tokens": 11, "completion_tokens": 5,
                                            "total_tokens": 16})
    ids["answer"] = opik_context.get_current_span_data().id  # type: ignore[union-attr]
    return "because " + retrieve(query)[0]


@track(name="agent", project_name="receiver-project", tags=["e2e"])
def agent(query: str) -> str:
    ids["agent"] = opik_context.get_current_span_data().id  # type: ignore[union-attr]
    ids["agent_trace"] = opik_context.get_current_trace_data().id  # type: ignore[union-attr]
    return answer(query)


@track(name="fails", project_name="receiver-project")
def fails() -> None:
    ids["fails"] = opik_context.get_current_span_data().id  # type: ignore[union-attr]
    raise ValueError("the tool broke")


def main(updates: bool) -> None:
    agent("why")
    try:
        fails()
    except ValueError:
        pass
    client = opik.Opik(project_name="receiver-project")
    if updates:
        trace = client.trace(name="manual", input={"question": "q"})
        span = trace.span(name="manual-step", input={"step": 1})
        span.update(output={"result": 42}, metadata={"updated": True})
        span.end()
        trace.end(output={"final": "done"})
    else:  # everything at creation: no PATCH
        start = datetime.now(UTC)
        end = start + timedelta(milliseconds=5)
        trace = client.trace(name="manual", input={"question": "q"}, start_time=start,
                             output={"final": "done"}, end_time=end)
        span = trace.span(name="manual-step", input={"step": 1}, output={"result": 42},
                          metadata={"updated": True}, start_time=start, end_time=end)
    ids["manual_trace"], ids["manual_span"] = trace.id, span.id
    client.log_traces_feedback_scores([{"id": trace.id, "name": "quality", "value": 0.75,
                                        "reason": "good enough"}])
    client.log_spans_feedback_scores([{"id": span.id, "name": "accuracy", "value": 1.0}])
    client.flush()
    opik.flush_tracker()
    print(json.dumps(ids))


if __name__ == "__main__":
    main("--updates" in sys.argv[1:])
