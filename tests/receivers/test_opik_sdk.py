"""The real Opik SDK, unchanged, writes to the sidecar (issue 20): its spans,
traces and feedback reach Postgres and Opik with the SDK's own field values."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.opik_emulator import OpikEmulator
from tests.receivers.helpers import receiver_daemon, run_sdk_agent
from tests.receivers.patching_emulator import PatchingEmulator
from tests.support import SidecarEnv, query, wait_until


@pytest.fixture
def emu() -> Iterator[OpikEmulator]:
    with OpikEmulator() as e:
        yield e
        refused = [(r.kind, r.status) for r in e.requests() if r.status >= 400]
        assert refused == [], refused


def rows(schema: str) -> dict[str, dict[str, Any]]:
    table = f'"{schema}".ml_observability_spans'
    return {str(r["span_id"]): dict(r) for r in query(f"SELECT * FROM {table}")}


def test_tracked_functions_traces_and_feedback_reach_both_sinks(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    token = "agent-token-5e3f"  # the receiver's; the SDK sends its OPIK_API_KEY
    daemon, url = receiver_daemon(sidecar_env, emu, token=token)
    ids = run_sdk_agent(url, api_key=token)
    spans = {ids[k] for k in ("agent", "answer", "retrieve", "fails", "manual_span")}
    wait_until(lambda: set(rows(sidecar_env.schema)) == spans, 20, "five rows")
    wait_until(lambda: set(emu.spans()) >= spans and len(emu.traces()) == 3
               and emu.scores("trace") and emu.scores("span"), 20, "Opik to get everything")
    stored = rows(sidecar_env.schema)
    llm = stored[ids["answer"]]
    assert (llm["type"], llm["model"], llm["provider"]) == ("llm", "gpt-4o", "openai")
    assert (llm["prompt_tokens"], llm["completion_tokens"], llm["total_tokens"]) == (11, 5, 16)
    assert str(llm["parent_span_id"]) == ids["agent"]
    assert str(stored[ids["retrieve"]]["parent_span_id"]) == ids["answer"]
    assert str(llm["trace_id"]) == ids["agent_trace"]
    assert stored[ids["retrieve"]]["type"] == "tool"
    assert llm["project_name"] == "receiver-project"
    assert json.loads(stored[ids["agent"]]["input"]) == {"query": "why"}
    assert json.loads(stored[ids["agent"]]["output"]) == {"output": "because WHY"}
    failed = stored[ids["fails"]]
    assert failed["status"] == "error"
    assert json.loads(failed["error_info"])["exception_type"] == "ValueError"
    # the workspace header is kept with the span
    assert json.loads(llm["metadata"])["opik_workspace"] == "team-a"
    manual = stored[ids["manual_span"]]
    assert json.loads(manual["output"]) == {"result": 42} and manual["end_time"] is not None

    opik_llm = emu.spans()[ids["answer"]]
    assert (opik_llm["model"], opik_llm["usage"]["total_tokens"]) == ("gpt-4o", 16)
    assert opik_llm["project_name"] == "receiver-project"
    trace = emu.traces()[ids["manual_trace"]]
    assert (trace["name"], trace["output"]) == ("manual", {"final": "done"})
    score = emu.scores("trace")[(ids["manual_trace"], "quality")]
    assert (score["value"], score["reason"]) == (0.75, "good enough")
    assert emu.scores("span")[(ids["manual_span"], "accuracy")]["value"] == 1.0
    assert not daemon.events("receivers.path.not_implemented")
    assert token.encode() not in daemon.log.read_bytes()


@pytest.fixture
def patching_emu() -> Iterator[PatchingEmulator]:
    with PatchingEmulator() as e:
        yield e
        refused = [(r.kind, r.status) for r in e.requests() if r.status >= 400]
        assert refused == [], refused


def test_updates_after_creation_are_merged_in_postgres_and_sent_to_opik(
        sidecar_env: SidecarEnv, patching_emu: PatchingEmulator) -> None:
    """span.update(), span.end() and trace.end() are PATCHes the SDK sends
    before the batch holding the creates: one row each, updates merged."""
    emu = patching_emu
    daemon, url = receiver_daemon(sidecar_env, emu)
    ids = run_sdk_agent(url, "--updates")
    span_id, trace_id = ids["manual_span"], ids["manual_trace"]

    def manual() -> dict[str, Any] | None:
        return rows(sidecar_env.schema).get(span_id)

    wait_until(lambda: (m := manual()) is not None and m["end_time"] is not None, 20,
               "the manual span, ended")
    row = manual()
    assert row is not None
    assert json.loads(row["input"]) == {"step": 1}  # from the create
    assert json.loads(row["output"]) == {"result": 42}  # from span.update()
    assert json.loads(row["metadata"])["updated"] is True
    assert row["duration_ms"] is not None and row["duration_ms"] >= 0
    count = query(f'SELECT count(*) AS n FROM "{sidecar_env.schema}".ml_observability_spans '
                  "WHERE span_id = $1", uuid.UUID(span_id))
    assert count[0]["n"] == 1
    pending = query(f'SELECT count(*) AS n FROM "{sidecar_env.schema}".'
                    "span_sidecar_pending_updates")
    assert pending[0]["n"] == 0

    wait_until(lambda: span_id in emu.merged("spans") and trace_id in emu.merged("traces")
               and emu.merged("spans")[span_id].get("end_time") is not None
               and emu.merged("traces")[trace_id].get("end_time") is not None, 20,
               "Opik to get the creates and the updates")
    opik_span = emu.merged("spans")[span_id]
    assert (opik_span["input"], opik_span["output"]) == ({"step": 1}, {"result": 42})
    assert emu.merged("traces")[trace_id]["output"] == {"final": "done"}
    assert not daemon.events("receivers.path.not_implemented")
