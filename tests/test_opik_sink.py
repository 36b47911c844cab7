"""The Opik sink against the emulator: what it sends, and how it answers faults."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import orjson
import pytest
from opik.rest_api.types import FeedbackScoreBatchItem, SpanWrite, TraceWrite
from pydantic import BaseModel
from uuid6 import uuid7

from sidecar.clock import FakeClock, yield_to_loop
from sidecar.records import Record, SpanRecord, parse_line
from sidecar.sinks.base import Delivered, PartlyRejected, RejectError, Retry
from sidecar.sinks.opik import (
    PLAN_SLICE_RECORDS,
    PLAN_WHOLE_BELOW,
    OpikSink,
    _RetryNow,
    _seconds,
)
from sidecar.sinks.opik_ids import to_v7
from sidecar.sinks.opik_payloads import (
    Group,
    IdMap,
    Plan,
    bodies_of,
    envelope,
    plan,
    plan_in_slices,
    ts,
)
from tests.opik_emulator import OpikEmulator, validate
from tests.opik_fixtures import (
    T0,
    error_span,
    feedback,
    full_span,
    legacy_span,
    no_proxies,
    settings_for,
    span,
    trace,
)

REPO = Path(__file__).resolve().parent.parent
SDK_MODELS: dict[str, type[BaseModel]] = {
    "spans": SpanWrite, "traces": TraceWrite,
    "trace_scores": FeedbackScoreBatchItem, "span_scores": FeedbackScoreBatchItem,
}


@pytest.fixture
async def sink(emu: OpikEmulator) -> AsyncIterator[OpikSink]:
    async with OpikSink(settings_for(emu)) as opik:
        yield opik


def all_shapes() -> list[Record]:
    """One record of every shape the sink can turn into a payload."""
    root, legacy_root = full_span(parent_span_id=None), legacy_span(parent_span_id=None)
    explicit, legacy_trace = trace(), trace(id=uuid.uuid4())
    child = legacy_span(trace_id=legacy_root.trace_id, parent_span_id=legacy_root.id)
    return [
        root, full_span(trace_id=root.trace_id, parent_span_id=root.id),
        error_span(parent_span_id=None),
        legacy_root, child, span(id=uuid.uuid1(), trace_id=explicit.id), explicit, legacy_trace,
        feedback("trace", explicit.id), feedback("trace", legacy_trace.id),
        feedback("span", root.id), feedback("span", child.id, reason=None),
        feedback("trace", legacy_root.trace_id, name="derived-target", value=-2),
    ]


def test_importing_the_sink_leaves_the_opik_package_out() -> None:
    code = "import sys, sidecar.sinks.opik; print('opik' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_every_payload_shape_passes_the_sdk_models_and_the_server_rules() -> None:
    """No field the SDK models do not know (Opik would drop it), none it refuses."""
    work = plan(all_shapes(), "Default Project", 1000, 8 << 20)
    assert {g.endpoint for g in work.groups} == set(SDK_MODELS) and not work.rejects
    for group in work.groups:
        for body in group.bodies.values():
            model = SDK_MODELS[group.endpoint].model_validate(orjson.loads(body))
            assert not model.model_extra, model.model_extra
            validate(group.endpoint, envelope(group.endpoint, [body]))  # no HttpError


async def test_every_payload_shape_is_accepted_by_the_emulator(
        sink: OpikSink, emu: OpikEmulator) -> None:
    batch = all_shapes()
    assert await sink.send(batch) == Delivered()
    assert {r.status for r in emu.requests()} == {204}
    assert len(emu.spans()) == 6 and len(emu.traces()) == 5  # 2 explicit + 3 derived
    assert len(emu.scores("trace")) == 3 and len(emu.scores("span")) == 2


async def test_a_span_keeps_every_field(sink: OpikSink, emu: OpikEmulator) -> None:
    record = full_span()
    assert await sink.send([record]) == Delivered()
    stored = emu.spans()[str(record.id)]
    assert stored["trace_id"] == str(record.trace_id)
    assert stored["parent_span_id"] == str(record.parent_span_id)
    assert stored["start_time"] == "2025-03-01T12:00:00Z"
    assert stored["last_updated_at"] == "2025-03-01T12:00:02Z"
    assert stored["tags"] == ["a", "b"] and stored["usage"]["total_tokens"] == 8
    assert (stored["project_name"], stored["model"], stored["type"]) == ("agents", "gpt-4o", "llm")
    meta = stored["metadata"]
    assert (meta["env"], meta["agent_name"], meta["agent_tier"]) == ("test", "planner", 2)
    assert meta["events"][0] == {"name": "retry", "time": "2025-03-01T12:00:00.005000Z",
                                 "attributes": {"attempt": 1}}
    assert not any(key.startswith("original_") for key in meta)


async def test_error_info_gets_the_traceback_opik_requires(
        sink: OpikSink, emu: OpikEmulator) -> None:
    record = error_span(parent_span_id=None)
    assert await sink.send([record]) == Delivered()
    info = emu.spans()[str(record.id)]["error_info"]
    assert info == {"exception_type": "ValueError", "message": "bad input",
                    "traceback": "bad input"}
    assert emu.traces()[str(record.trace_id)]["error_info"] == info


async def test_non_v7_ids_map_to_v7_consistently_and_keep_the_originals(
        sink: OpikSink, emu: OpikEmulator) -> None:
    root = legacy_span(parent_span_id=None, project_name=None)
    child = legacy_span(trace_id=root.trace_id, parent_span_id=root.id)
    score = feedback("span", child.id)
    assert await sink.send([root, child, score]) == Delivered()
    stored = emu.spans()[str(to_v7(child.id))]
    assert stored["trace_id"] == str(to_v7(root.trace_id)) == emu.spans()[str(to_v7(root.id))][
        "trace_id"]
    assert stored["parent_span_id"] == str(to_v7(root.id))
    assert stored["project_name"] == "Default Project"
    assert stored["metadata"].items() >= {
        "original_id": str(child.id), "original_trace_id": str(root.trace_id),
        "original_parent_span_id": str(root.id)}.items()
    derived = emu.traces()[str(to_v7(root.trace_id))]
    assert derived["metadata"]["original_id"] == str(root.trace_id)
    assert (str(to_v7(child.id)), "helpfulness") in emu.scores("span")


@pytest.mark.parametrize(("written", "mapped"), [
    ("3f2c0b1e-7a4d-4c8e-9b2a-5d6e7f8091a2", "022797ab-99c2-7325-bf73-906c937e73e9"),  # v4
    ("c232ab00-9414-11ec-b3c8-9f6bdeced846", "017f22e2-79b0-713c-8d0b-aab0c2160609"),  # v1 time
    ("1ec9414c-232a-6b00-b3c8-9f6bdeced846", "017f22e2-79b0-7671-9edf-a44712196660"),  # v6 time
    # Version nibble 1 outside the RFC variant: not a v1, so a hashed time.
    ("c232ab00-9414-11ec-73c8-9f6bdeced846", "024d11a5-b30f-76fa-b43f-c3830ee8f0b1"),
    ("017f22e2-79b0-7cc3-98c4-dc0c0c07398f", "017f22e2-79b0-7cc3-98c4-dc0c0c07398f"),  # v7 as is
    # A v1 or v6 whose time is before 1970 has no usable time: a hashed one.
    ("00000000-0000-1000-8000-9f6bdeced846", "01c2e407-528f-7e1e-8d42-be0e2b729f7a"),
    ("00000000-0000-6000-8000-9f6bdeced846", "019bc8a3-7815-71ff-8a83-edfb159f2baf"),
    ("00000000-0000-0000-0000-000000000000", "025f1bca-511a-7854-a345-c108e4877bc0"),  # nil
])
def test_the_id_mapping_is_pinned_for_every_kind_of_id(written: str, mapped: str) -> None:
    """Values from 0.1's mapping: a resend after an upgrade must hit the same rows."""
    result = to_v7(uuid.UUID(written))
    assert str(result) == mapped and result == uuid.UUID(mapped)
    assert hash(result) == hash(uuid.UUID(mapped))


def test_the_id_mapping_is_deterministic_and_gives_v7() -> None:
    """Pinned: changing the mapping would duplicate every mapped row in Opik."""
    fixed = uuid.UUID("6c9b8f3e-2a0f-4b5e-9b1a-1c2d3e4f5a6b")
    assert str(to_v7(fixed)) == "026c7e82-7601-7517-8e9e-1e068cea0d30"
    v7 = uuid7()
    assert to_v7(v7) == v7
    inputs = [uuid.uuid4() for _ in range(5000)] + [uuid.uuid1(), uuid.UUID(int=0)]
    outputs = [to_v7(u) for u in inputs]
    assert outputs == [to_v7(u) for u in inputs]
    assert len(set(outputs)) == len(inputs)
    assert all(o.version == 7 and o.variant == uuid.RFC_4122 for o in outputs)
    v1 = uuid.uuid1()  # time-based ids keep their time (Opik's optional 24 h check)
    assert abs((to_v7(v1).int >> 80) - (v1.time - 0x01B21DD213814000) // 10_000) <= 1


def test_a_plan_maps_ids_as_to_v7_does_and_keeps_only_changed_originals() -> None:
    ids = IdMap()
    for written in (uuid.uuid4(), uuid.uuid1(), uuid7(), uuid.UUID(int=0)):
        mapped, original = ids[written]
        assert mapped == to_v7(written) and str(mapped) == str(to_v7(written))
        assert hash(mapped) == hash(to_v7(written))
        assert original == (None if written.version == 7 else written)
        assert ids[uuid.UUID(str(written))][0] is mapped  # mapped once a plan


def loads(raw: object) -> object:
    return json.loads(bytes(raw))  # type: ignore[call-overload]


async def test_a_trace_is_derived_from_a_root_span_unless_the_batch_has_one(
        sink: OpikSink, emu: OpikEmulator) -> None:
    root = full_span(parent_span_id=None, tags=["x"])
    child = span(trace_id=root.trace_id, parent_span_id=root.id)
    explicit = trace()
    covered = span(trace_id=explicit.id)
    assert await sink.send([root, child, explicit, covered]) == Delivered()
    derived = emu.traces()[str(root.trace_id)]
    assert (derived["name"], derived["input"], derived["output"], derived["tags"]) == (
        root.name, loads(root.input), loads(root.output), ["x"])
    assert root.end_time is not None
    assert (derived["start_time"], derived["end_time"]) == (ts(root.start_time), ts(root.end_time))
    assert derived["project_name"] == "agents" and derived["metadata"]["agent_name"] == "planner"
    assert emu.traces()[str(explicit.id)]["name"] == "conversation"
    assert len(emu.traces()) == 2 and emu.accepted("traces") == 2


@pytest.mark.parametrize("explicit_first", [True, False])
async def test_an_explicit_trace_wins_over_a_derived_one_in_any_order(
        sink: OpikSink, emu: OpikEmulator, explicit_first: bool) -> None:
    root = span(parent_span_id=None, name="root span")
    explicit = trace(id=root.trace_id, start_time=T0)
    for batch in ([explicit], [root]) if explicit_first else ([root], [explicit]):
        assert await sink.send(batch) == Delivered()
    assert emu.traces()[str(root.trace_id)]["name"] == "conversation"


async def test_last_updated_at_comes_from_the_record_never_from_now(
        sink: OpikSink, emu: OpikEmulator) -> None:
    ended, open_span = span(), span(end_time=None)
    batch = [ended, open_span]
    assert await sink.send(batch) == Delivered()
    assert emu.spans()[str(ended.id)]["last_updated_at"] == ts(T0 + timedelta(seconds=1))
    assert emu.spans()[str(open_span.id)]["last_updated_at"] == ts(T0)
    first = [list(g.bodies.values()) for g in plan(batch, "p", 1000, 1 << 20).groups]
    assert await sink.send(batch) == Delivered()  # a resend: the same bytes, the same rows
    assert first == [list(g.bodies.values()) for g in plan(batch, "p", 1000, 1 << 20).groups]
    assert emu.times_accepted(ended.id) == 2 and len(emu.spans()) == 2


async def test_the_api_key_and_workspace_headers(emu: OpikEmulator) -> None:
    emu.require_api_key("secret-key", "team")
    settings = settings_for(emu, api_key="secret-key", workspace="team")
    async with OpikSink(settings) as opik:
        assert await opik.send([span()]) == Delivered()
    headers = emu.requests("spans")[0].headers
    assert headers["authorization"] == "secret-key" and headers["comet-workspace"] == "team"


async def test_without_an_api_key_no_key_but_the_workspace_header_all_the_same(
        sink: OpikSink, emu: OpikEmulator) -> None:
    """As the Opik SDK does: the workspace header always, the key when there is one."""
    assert await sink.send([span()]) == Delivered()
    assert "authorization" not in emu.requests()[0].headers
    assert emu.requests()[0].headers["comet-workspace"] == "default"


async def test_a_wrong_api_key_is_a_retry_not_a_rejection(emu: OpikEmulator) -> None:
    emu.require_api_key("right")
    async with OpikSink(settings_for(emu, api_key="wrong")) as opik:
        outcome = await opik.send([span(), span()])
    assert isinstance(outcome, Retry) and outcome.failure and "401" in outcome.reason


async def test_a_5xx_is_a_failure_retry_with_retry_after(sink: OpikSink, emu: OpikEmulator) -> None:
    emu.fail(503, retry_after=4)
    outcome = await sink.send([span()])
    assert outcome == Retry("opik 503: emulated 503", after_s=4.0, failure=True)
    emu.fail(500)
    assert (await sink.send([span()])) == Retry("opik 500: emulated 500", failure=True)


async def test_a_429_is_back_pressure_until_ratelimit_reset(emu: OpikEmulator) -> None:
    clock = FakeClock()  # the sink holds its requests until then (tests/test_rate_limit.py)
    async with OpikSink(settings_for(emu), clock=clock) as opik:
        emu.rate_limit(reset_s=7)
        outcome = await opik.send([span(), trace()])
        assert isinstance(outcome, Retry) and not outcome.failure and outcome.after_s == 7.0
        emu.healthy()
        clock.advance(7.0)
        assert await opik.send([span(), trace()]) == Delivered()


async def test_a_stalled_server_is_a_timeout_retry(emu: OpikEmulator) -> None:
    emu.stall()
    async with OpikSink(settings_for(emu, timeout_s=0.2)) as opik:
        outcome = await opik.send([span()])
        assert isinstance(outcome, Retry) and outcome.failure and "timeout" in outcome.reason
        emu.healthy()
        assert await opik.send([span()]) == Delivered()


async def test_a_refused_connection_is_a_retry_and_check_says_unreachable(
        sink: OpikSink, emu: OpikEmulator) -> None:
    assert await sink.check() and await sink.send([span()]) == Delivered()  # keep-alive open
    emu.refuse_connections()
    outcome = await sink.send([span()])
    assert isinstance(outcome, Retry) and outcome.failure and "connection" in outcome.reason
    assert not await sink.check()
    emu.accept_connections()
    assert await sink.check() and await sink.send([span()]) == Delivered()


async def test_only_the_invalid_record_of_a_batch_is_rejected(
        sink: OpikSink, emu: OpikEmulator) -> None:
    batch: list[Record] = [span() for _ in range(300)]
    # A blank exception type passes our model (min_length 1) but not Opik's check.
    batch[137] = span(error_info={"exception_type": "   ", "traceback": "tb"})
    outcome = await sink.send(batch)
    assert isinstance(outcome, PartlyRejected) and list(outcome.reasons) == [137]
    assert outcome.reasons[137].startswith("opik 4") and "exception_type" in outcome.reasons[137]
    assert set(emu.spans()) == {str(r.id) for i, r in enumerate(batch) if i != 137}
    assert len(emu.requests("spans")) <= 2 * 9 + 1  # bisection, not one request a record


async def test_rejected_ids_come_back_with_the_servers_reason(
        sink: OpikSink, emu: OpikEmulator) -> None:
    batch = [span(parent_span_id=None) for _ in range(50)]
    emu.reject_ids([batch[3].id], status=400, reason="no such project")
    emu.reject_ids([batch[40].trace_id], status=422, reason="trace refused")
    outcome = await sink.send(batch)
    assert outcome == PartlyRejected({3: "opik 400: no such project",
                                      40: "derived trace: opik 422: trace refused"})
    assert len(emu.spans()) == 49 and len(emu.traces()) == 49


async def test_free_form_json_reaches_opik_as_written(
        sink: OpikSink, emu: OpikEmulator) -> None:
    """Input is the line's own JSON text: even a 2**70 integer (which orjson could
    not encode) arrives intact, in the span and in its derived trace."""
    root = span(parent_span_id=None, input={"n": 2**70, "s": "caf\u00e9"})
    assert await sink.send([span(), root, span()]) == Delivered()
    assert emu.spans()[str(root.id)]["input"] == {"n": 2**70, "s": "caf\u00e9"}
    assert emu.traces()[str(root.trace_id)]["input"]["n"] == 2**70


@pytest.mark.parametrize(("written", "sent"), [
    ('{"a":1}', b'{"a":1,"agent_name":"x"}'),
    ('{"a": 1 }', b'{"a": 1,"agent_name":"x"}'),
    ('{\n  "a": [1, {}]\n}', b'{\n  "a": [1, {}],"agent_name":"x"}'),
    ("{}", b'{"agent_name":"x"}'),
    ("{ \t}", b'{"agent_name":"x"}'),
    ('{"agent_name": "mine"}', b'{"agent_name": "mine","agent_name":"x"}'),
])
def test_our_metadata_keys_are_appended_to_the_object_as_written(
        written: str, sent: bytes) -> None:
    """The agent's metadata object, byte for byte, then our keys (last wins)."""
    line = (f'{{"id":"{uuid7()}","trace_id":"{uuid7()}","parent_span_id":"{uuid7()}",'
            f'"name":"s","start_time":"2025-03-01T12:00:00Z","agent_name":"x",'
            f'"metadata":{written}}}')
    record = parse_line(line.encode())
    assert isinstance(record, SpanRecord)
    (group,) = plan([record], "p", 1000, 8 << 20).groups
    body = bodies_of(group, group.records)[0]
    assert body.endswith(b'"metadata":' + sent + b"}")  # the last field here


async def test_a_batch_over_1000_items_is_split(sink: OpikSink, emu: OpikEmulator) -> None:
    assert sink.name == "opik" and sink.max_batch_records == 1000
    assert await sink.send([span() for _ in range(2500)]) == Delivered()
    assert sorted(r.items for r in emu.requests("spans")) == [500, 1000, 1000]
    assert len(emu.spans()) == 2500


async def test_requests_stay_under_max_request_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    no_proxies(monkeypatch)
    limit = 64 << 10
    with OpikEmulator(max_body_bytes=limit) as small:  # 413 above the limit
        async with OpikSink(settings_for(small, max_request_bytes=limit)) as opik:
            batch = [span(input={"text": "x" * 1000}) for _ in range(200)]
            assert await opik.send(batch) == Delivered()
        sizes = [r.size for r in small.requests("spans")]
    assert len(sizes) > 1 and max(sizes) <= limit and small.accepted("spans") == 200


def test_an_item_alone_over_max_request_bytes_goes_alone() -> None:
    big, small = span(input={"t": "x" * 5000}), span()
    work = plan([small, big, small], "p", 1000, 4000)
    assert [len(g.records) for g in work.groups] == [1, 1, 1]


def test_a_plan_in_slices_is_the_same_plan() -> None:
    batch = all_shapes() + all_shapes() + all_shapes()  # distinct records
    whole = plan(batch, "p", 5, 8 << 20)
    steps = list(plan_in_slices(batch, "p", 5, 8 << 20, slice_records=4))
    pauses, sliced = steps[:-1], steps[-1]
    assert pauses == [None] * ((len(batch) - 1) // 4) and isinstance(sliced, Plan)
    assert [(g.endpoint, g.indices, bodies_of(g, g.records)) for g in sliced.groups] == [
        (g.endpoint, g.indices, bodies_of(g, g.records)) for g in whole.groups]


def test_a_request_body_is_its_items_in_order_for_any_sub_batch() -> None:
    """Items are encoded into one body per group; the reject isolation's
    halves are cut from it, and each is the envelope of its own items."""
    batch = [span(parent_span_id=None, input={"i": i}) for i in range(7)]
    for group in plan(batch, "p", 1000, 8 << 20).groups:
        items = bodies_of(group, group.records)
        assert [orjson.loads(item)["input"] for item in items] == [{"i": i} for i in range(7)]
        assert group.body(group.records) == envelope(group.endpoint, items)
        for part in (group.records[:3], group.records[3:], group.records[2:3], group.records[::2]):
            body = group.body(part)
            assert body == envelope(group.endpoint, bodies_of(group, part))
            validate(group.endpoint, body)


def test_an_item_that_fails_half_way_leaves_none_of_its_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A span whose derived trace cannot be encoded: its span, already written
    into the spans body, and the half-written trace both go; the rest ships."""
    from sidecar.sinks import opik_payloads

    batch = [span(parent_span_id=None) for _ in range(3)]
    real = opik_payloads.span_write

    def writes(root: Record, *args: object) -> object:
        payloads = real(root, *args)  # type: ignore[arg-type]
        if root is batch[1]:
            payloads[1].tags = ["ok", object()]  # type: ignore[list-item]  # raises mid-item
        return payloads

    monkeypatch.setattr(opik_payloads, "span_write", writes)
    work = plan(batch, "p", 1000, 8 << 20)
    assert list(work.rejects) == [1] and "TypeError" in work.rejects[1]
    assert [(g.endpoint, g.indices) for g in work.groups] == [("spans", [0, 2]),
                                                              ("traces", [0, 2])]
    for group in work.groups:
        body = group.body(group.records)
        validate(group.endpoint, body)
        assert [item["id"] for item in orjson.loads(body)[group.endpoint]] == [
            str(to_v7(r.id if group.endpoint == "spans" else r.trace_id))
            for r in (batch[0], batch[2])]


def test_a_record_failing_alone_opens_no_group() -> None:
    root = span(parent_span_id=None)
    root.model = object()  # type: ignore[assignment]  # no JSON for it
    batch: list[Record] = [root, trace()]
    work = plan(batch, "p", 1000, 8 << 20)
    assert list(work.rejects) == [0]
    assert [(g.endpoint, g.indices) for g in work.groups] == [("traces", [1])]


@pytest.mark.parametrize("size", [PLAN_WHOLE_BELOW, PLAN_WHOLE_BELOW - 1])
async def test_encoding_a_batch_lets_the_event_loop_run(sink: OpikSink, size: int) -> None:
    """A 1000-span batch is ~15 ms of encoding: the Postgres stream and the
    HTTP probes must get turns in between, not wait behind it. A trickle's
    batch (~1 ms) is encoded in one turn."""
    turns: list[int] = []
    done = asyncio.Event()

    async def other_work() -> None:
        while not done.is_set():
            turns.append(len(turns))
            await yield_to_loop()

    batch = [span(parent_span_id=None) for _ in range(size)]
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(other_work())
        await yield_to_loop()  # the other work's first turn
        before = len(turns)
        await sink._plan(batch)
        during = len(turns) - before
        done.set()
    if size >= PLAN_WHOLE_BELOW:
        assert during >= size // PLAN_SLICE_RECORDS - 1
    else:
        assert during == 0


async def test_a_failed_attempt_leaves_nothing_for_the_garbage_collector(
        sink: OpikSink, emu: OpikEmulator) -> None:
    """While Opik is down, each attempt's plan and request bodies must be freed
    when the attempt ends: a reference cycle would keep them until a full
    collection, which the daemon's tuned collector runs rarely. Two requests
    a batch (spans, derived traces) fail together, 20 times over."""
    emu.fail(503)
    batch = [span(parent_span_id=None) for _ in range(50)]
    assert isinstance(await sink.send(batch), Retry)  # connections and imports warmed up
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            assert isinstance(await sink.send(batch), Retry)
        gc.collect()
        # The sink's own garbage only (the emulator shares this process).
        cyclic = [type(o).__name__ for o in gc.garbage
                  if isinstance(o, Group | Plan) or (
                      isinstance(o, BaseException) and _through_sidecar(o.__traceback__))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == []


def _through_sidecar(tb: TracebackType | None) -> bool:
    while tb is not None:
        if "/sidecar/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


async def test_after_a_retry_no_further_request_of_the_batch_starts(emu: OpikEmulator) -> None:
    """One request asks for a retry while the other group is being split to
    find a rejected record: the split stops (the batch goes again whole), and
    nothing is cancelled mid-request."""
    sent: list[tuple[str, int]] = []

    class Scripted(OpikSink):
        async def _request(self, group: Group, records: Sequence[Record]) -> None:
            sent.append((group.endpoint, len(records)))
            await yield_to_loop()
            if group.endpoint == "traces":
                raise _RetryNow(Retry("opik 503: down", failure=True))
            await yield_to_loop()
            raise RejectError("opik 400: a bad record")

    async with Scripted(settings_for(emu)) as opik:
        outcome = await opik.send([span(parent_span_id=None) for _ in range(8)])
    assert outcome == Retry("opik 503: down", failure=True)
    assert sent == [("spans", 8), ("traces", 8)]


async def test_requests_run_concurrently_up_to_max_in_flight(emu: OpikEmulator) -> None:
    emu.stall(then_store=True)
    async with OpikSink(settings_for(emu, max_in_flight=2)) as opik:
        batch = [span(parent_span_id=None) for _ in range(2500)]
        async with asyncio.TaskGroup() as tasks:
            sending = tasks.create_task(opik.send(batch))
            await emu.wait_for_async(lambda: emu.stalled() == 2, what="two held requests")
            emu.healthy()
        assert sending.result() == Delivered()
    assert emu.peak_in_flight() == 2
    assert emu.accepted("spans") == 2500 and emu.accepted("traces") == 2500


async def test_scores_are_sent_after_spans_and_traces(sink: OpikSink, emu: OpikEmulator) -> None:
    root = span(parent_span_id=None)
    assert await sink.send([feedback("span", root.id), root, trace()]) == Delivered()
    kinds = [r.kind for r in emu.requests()]
    assert kinds[-1] == "span_scores" and set(kinds[:-1]) == {"spans", "traces"}


async def test_the_client_side_rate_limit_asks_to_wait(emu: OpikEmulator) -> None:
    clock = FakeClock()
    settings = settings_for(emu, max_events_per_minute=100)
    async with OpikSink(settings, clock=clock) as opik:
        assert await opik.send([span() for _ in range(80)]) == Delivered()
        outcome = await opik.send([span() for _ in range(40)])
        assert isinstance(outcome, Retry) and not outcome.failure
        assert outcome.after_s == pytest.approx(12.0) and "rate limit" in outcome.reason
        assert emu.accepted() == 80
        clock.advance(12.0)
        assert await opik.send([span() for _ in range(40)]) == Delivered()


def test_retry_after_as_seconds_or_http_date() -> None:
    assert _seconds("3", 0.0) == 3.0 and _seconds("-1", 0.0) == 0.0
    assert _seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert _seconds("soon", 0.0) is None and _seconds(None, 0.0) is None
