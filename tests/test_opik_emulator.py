"""The Opik emulator refuses what the real server refuses, and each fault mode works.

If the emulator let through what Opik rejects, the sink's tests would prove
nothing: these tests pin the real server's rules (README, "Opik").
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opik.rest_api import OpikApi
from opik.rest_api.core.api_error import ApiError
from opik.rest_api.types import FeedbackScoreBatchItem, SpanWrite, TraceWrite
from uuid6 import uuid7

from tests.opik_emulator import ROUTES, OpikEmulator
from tests.opik_fixtures import no_proxies


@pytest.fixture
def http(emu: OpikEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.base_url + "/", timeout=2.0) as client:
        yield client


def span_item(**fields: Any) -> dict[str, Any]:
    item = {"id": str(uuid7()), "trace_id": str(uuid7()), "name": "s", "type": "llm",
            "start_time": "2025-03-01T12:00:00Z", "end_time": "2025-03-01T12:00:01.5+02:00"}
    item.update(fields)
    return item


def post(http: httpx.Client, kind: str, items: list[dict[str, Any]]) -> httpx.Response:
    method, path, key, _ = ROUTES[kind]
    return http.request(method, path.lstrip("/"), json={key: items})


def test_the_sdks_own_client_is_accepted_and_recorded(emu: OpikEmulator) -> None:
    """The opik SDK's REST client talks to the emulator as to Opik (204s)."""
    emu.require_api_key("key-1", "ws")
    api = OpikApi(base_url=emu.base_url, api_key="key-1", workspace_name="ws")
    trace_id, span_id = str(uuid7()), str(uuid7())
    start = "2025-03-01T12:00:00Z"
    api.traces.create_traces(traces=[TraceWrite(id=trace_id, name="t", start_time=start)])
    api.spans.create_spans(spans=[SpanWrite(id=span_id, trace_id=trace_id, start_time=start,
                                            usage={"total_tokens": 3})])
    score = {"name": "q", "value": 1.0, "source": "sdk"}
    api.traces.score_batch_of_traces(scores=[FeedbackScoreBatchItem(id=trace_id, **score)])
    api.spans.score_batch_of_spans(scores=[FeedbackScoreBatchItem(id=span_id, **score)])
    assert set(emu.traces()) == {trace_id} and set(emu.spans()) == {span_id}
    assert (trace_id, "q") in emu.scores("trace") and (span_id, "q") in emu.scores("span")
    seen = emu.requests("spans")[0].headers
    assert seen["authorization"] == "key-1" and seen["comet-workspace"] == "ws"


def test_a_wrong_api_key_is_refused(emu: OpikEmulator, http: httpx.Client) -> None:
    emu.require_api_key("right")
    api = OpikApi(base_url=emu.base_url, api_key="wrong")
    with pytest.raises(ApiError) as err:
        api.spans.create_spans(spans=[SpanWrite(id=str(uuid7()), trace_id=str(uuid7()),
                                                start_time="2025-03-01T12:00:00Z")])
    assert err.value.status_code == 401
    assert post(http, "spans", [span_item()]).status_code == 401  # no key at all
    assert emu.accepted() == 0


@pytest.mark.parametrize("kind,field", [
    ("spans", "id"), ("spans", "trace_id"), ("spans", "parent_span_id"), ("traces", "id"),
    ("trace_scores", "id"), ("span_scores", "id"),
])
def test_a_uuid_other_than_v7_is_a_400(http: httpx.Client, kind: str, field: str) -> None:
    item = span_item() if kind != "trace_scores" and kind != "span_scores" else {
        "id": str(uuid7()), "name": "q", "value": 1, "source": "sdk"}
    if kind == "traces":
        item.pop("trace_id"), item.pop("type")
    item[field] = str(uuid.uuid4())
    response = post(http, kind, [item])
    assert response.status_code == 400
    assert "Invalid UUID" in response.json()["message"]


@pytest.mark.parametrize("field", ["start_time", "end_time", "last_updated_at"])
def test_a_timestamp_without_offset_is_a_400(http: httpx.Client, field: str) -> None:
    response = post(http, "spans", [span_item(**{field: "2025-03-01T12:00:00"})])
    assert response.status_code == 400
    assert field in response.json()["message"]


def test_batch_sizes_outside_1_to_1000_are_a_422(http: httpx.Client, emu: OpikEmulator) -> None:
    assert post(http, "spans", []).status_code == 422
    assert post(http, "spans", [span_item() for _ in range(1001)]).status_code == 422
    assert emu.accepted() == 0
    assert post(http, "spans", [span_item() for _ in range(1000)]).status_code == 204
    assert emu.accepted("spans") == 1000


def test_bad_json_is_a_400(http: httpx.Client) -> None:
    response = http.post("v1/private/spans/batch", content=b'{"spans": [')
    assert response.status_code == 400


@pytest.mark.parametrize("fields,words", [
    ({"type": "chain"}, "type"),
    ({"usage": {"total_tokens": 2**31}}, "int32"),
    ({"usage": {"total_tokens": 1.5}}, "usage"),
    ({"total_estimated_cost": -0.01}, "total_estimated_cost"),
    ({"error_info": {"exception_type": "E", "traceback": "  "}}, "error_info"),
    ({"error_info": {"exception_type": "E"}}, "error_info"),
    ({"project_name": " "}, "project_name"),
    ({"start_time": None}, "start_time"),
])
def test_values_the_server_validates_are_a_422(http: httpx.Client, fields: dict[str, Any],
                                               words: str) -> None:
    response = post(http, "spans", [span_item(), span_item(**fields)])
    assert response.status_code == 422
    assert any(words in e and "spans[1]" in e for e in response.json()["errors"])


@pytest.mark.parametrize("fields,words", [
    ({"type": "chain"}, "type"),
    ({"usage": {"total_tokens": 1.5}}, "usage"),
])
def test_fields_a_trace_model_does_not_declare_are_validated_too(
        http: httpx.Client, fields: dict[str, Any], words: str) -> None:
    """The SDK models allow extra fields; the server's checks still see them."""
    trace = {"id": str(uuid7()), "name": "t", "start_time": "2025-03-01T12:00:00Z", **fields}
    response = post(http, "traces", [trace])
    assert response.status_code == 422
    assert any(words in e and "traces[0]" in e for e in response.json()["errors"])


def test_a_span_without_trace_id_is_a_500(http: httpx.Client) -> None:
    item = span_item()
    del item["trace_id"]
    assert post(http, "spans", [item]).status_code == 500


def test_newest_last_updated_at_wins_and_resends_are_counted(
        http: httpx.Client, emu: OpikEmulator) -> None:
    """ReplacingMergeTree: one row per id, newest version kept whatever the order."""
    item = span_item(last_updated_at="2025-03-01T12:00:05Z", name="new")
    assert post(http, "spans", [item]).status_code == 204
    older = dict(item, last_updated_at="2025-03-01T12:00:01Z", name="old")
    assert post(http, "spans", [older]).status_code == 204
    assert emu.spans()[item["id"]]["name"] == "new"
    assert emu.accepted("spans") == 2 and emu.times_accepted(item["id"]) == 2
    same = dict(item, name="same version, later write")
    assert post(http, "spans", [same]).status_code == 204
    assert emu.spans()[item["id"]]["name"] == "same version, later write"


def test_fail_mode_answers_the_status_n_times(http: httpx.Client, emu: OpikEmulator) -> None:
    emu.fail(502, times=2, retry_after=7)
    first = post(http, "spans", [span_item()])
    assert first.status_code == 502 and first.headers["Retry-After"] == "7"
    assert post(http, "spans", [span_item()]).status_code == 502
    assert post(http, "spans", [span_item()]).status_code == 204
    assert emu.accepted() == 1


def test_rate_limit_mode_answers_429_with_ratelimit_reset(
        http: httpx.Client, emu: OpikEmulator) -> None:
    emu.rate_limit(reset_s=3)
    response = post(http, "traces", [{"id": str(uuid7()), "start_time": "2025-03-01T12:00:00Z"}])
    assert response.status_code == 429 and response.headers["RateLimit-Reset"] == "3"
    assert "Retry-After" not in response.headers
    emu.healthy()
    assert post(http, "spans", [span_item()]).status_code == 204


def test_stall_holds_requests_past_the_client_timeout(
        http: httpx.Client, emu: OpikEmulator) -> None:
    emu.stall()
    with httpx.Client(base_url=emu.base_url + "/", timeout=0.2) as fast, \
            pytest.raises(httpx.ReadTimeout):
        post(fast, "spans", [span_item()])
    assert emu.stalled() == 1
    emu.healthy()
    emu.wait_for(lambda: emu.stalled() == 0, what="release")
    assert emu.accepted() == 0  # a stalled request stores nothing by default
    assert post(http, "spans", [span_item()]).status_code == 204


def test_stall_then_store_processes_what_the_client_gave_up_on(emu: OpikEmulator) -> None:
    emu.stall(hold_s=0.3, then_store=True)
    with httpx.Client(base_url=emu.base_url + "/", timeout=0.1) as fast, \
            pytest.raises(httpx.ReadTimeout):
        post(fast, "spans", [span_item()])
    emu.wait_for(lambda: emu.accepted("spans") == 1, what="late store")


def test_refused_connections_then_the_same_port_again(
        http: httpx.Client, emu: OpikEmulator) -> None:
    assert post(http, "spans", [span_item()]).status_code == 204  # a keep-alive connection
    port = emu.port
    emu.refuse_connections()
    with pytest.raises(httpx.ConnectError):
        post(http, "spans", [span_item()])
    with pytest.raises(httpx.ConnectError):
        http.get("is-alive/ping")
    emu.accept_connections()
    assert emu.port == port
    assert post(http, "spans", [span_item()]).status_code == 204


@pytest.mark.parametrize("status", [400, 422])
def test_a_rejected_id_fails_its_whole_request(
        http: httpx.Client, emu: OpikEmulator, status: int) -> None:
    bad = span_item()
    emu.reject_ids([bad["id"]], status=status, reason="bad record")
    response = post(http, "spans", [span_item(), bad])
    assert response.status_code == status and "bad record" in response.text
    assert post(http, "spans", [span_item()]).status_code == 204
    assert emu.accepted() == 1


def test_an_id_time_far_from_now_is_refused_when_checked(emu: OpikEmulator,
                                                          http: httpx.Client) -> None:
    emu.check_id_time = True
    old = "01000000-0000-7000-8000-000000000000"  # 2004
    assert post(http, "spans", [span_item(id=old)]).status_code == 400
    assert post(http, "spans", [span_item()]).status_code == 204


def test_a_body_over_the_size_limit_is_a_413(monkeypatch: pytest.MonkeyPatch) -> None:
    no_proxies(monkeypatch)
    with OpikEmulator(max_body_bytes=2000) as small, \
            httpx.Client(base_url=small.base_url + "/") as client:
        response = post(client, "spans", [span_item(input={"x": "y" * 3000})])
        assert response.status_code == 413
        assert small.requests()[0].status == 413


def test_wait_for_wakes_on_a_request_and_times_out_otherwise(
        http: httpx.Client, emu: OpikEmulator) -> None:
    sender = threading.Thread(target=post, args=(http, "spans", [span_item()]))
    sender.start()
    emu.wait_for(lambda: emu.accepted() == 1, timeout=5)
    sender.join()
    with pytest.raises(AssertionError, match="no two spans"):
        emu.wait_for(lambda: emu.accepted() == 2, timeout=0.05, what="two spans")


def test_ping_answers(http: httpx.Client) -> None:
    assert http.get("is-alive/ping").status_code == 200


def test_another_process_reaches_it(emu: OpikEmulator) -> None:
    """What a daemon subprocess does: POST to base_url from outside this process."""
    item = span_item()
    code = ("import httpx, json, sys; r = httpx.post(sys.argv[1] + '/v1/private/spans/batch', "
            "json={'spans': [json.loads(sys.argv[2])]}, trust_env=False); print(r.status_code)")
    out = subprocess.run([sys.executable, "-c", code, emu.base_url, json.dumps(item)],
                         capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "204"
    emu.wait_for(lambda: item["id"] in emu.spans(), what="the subprocess's span")


def test_a_restart_listens_on_the_same_port(emu: OpikEmulator) -> None:
    port = emu.port
    emu.stop()
    emu.start()
    assert emu.port == port
    with httpx.Client(base_url=emu.base_url + "/") as client:
        assert post(client, "spans", [span_item()]).status_code == 204
