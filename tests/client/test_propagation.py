"""Ids and W3C trace context: one trace across agents, a deterministic fallback."""

from __future__ import annotations

import os
import time
from pathlib import Path
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from sidecar.client import (
    SpanContext,
    SpoolWriter,
    Tracer,
    extract,
    inject,
    new_id,
    span_uuid,
    w3c_span_id,
)
from sidecar.client.propagation import parse_traceparent
from sidecar.schema import SpanRecord

from .helpers import spool_records

uuids = st.integers(0, 2**128 - 1).map(lambda i: UUID(int=i))
span_ids = st.integers(1, 2**64 - 1)


def test_new_ids_are_uuid7_with_the_current_time_and_unique() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {7} and {i.variant for i in ids} == {"specified in RFC 4122"}
    ms = ids[-1].int >> 80
    assert abs(ms - time.time_ns() // 1_000_000) < 5_000


def test_a_forked_child_does_not_repeat_its_parents_random_bits() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, new_id().bytes)
        finally:
            os._exit(0)
    os.close(write_end)
    child = UUID(bytes=os.read(read_end, 16))
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = new_id()
    assert child.int & (2**62 - 1) != parent.int & (2**62 - 1)


@given(uuids, span_ids)
def test_the_w3c_mapping_gives_back_the_8_byte_id(trace: UUID, w3c: int) -> None:
    mapped = span_uuid(trace, w3c)
    assert w3c_span_id(mapped) == w3c
    assert mapped == span_uuid(trace, w3c)  # deterministic
    assert mapped.version == (7 if trace.version == 7 else 8)
    assert mapped.variant == "specified in RFC 4122"


def test_mapped_span_ids_of_a_v7_trace_are_v7_with_the_trace_timestamp() -> None:
    trace = new_id()
    mapped = span_uuid(trace, 0xDEADBEEF)
    assert mapped.version == 7 and mapped.int >> 80 == trace.int >> 80


def test_inject_then_extract_gives_back_the_current_span(tracer: Tracer) -> None:
    assert inject({}) == {}  # no current span: nothing to propagate
    with tracer.trace_agent("caller") as span:
        headers = inject({"content-type": "application/json"})
    tp = headers["traceparent"]
    assert tp == f"00-{span.trace_id.hex}-{w3c_span_id(span.span_id):016x}-01"
    assert headers["tracestate"] == f"spansidecar={span.span_id.hex}"
    assert extract(headers) == span.context


def test_a_called_agent_continues_the_callers_trace(spool: Path) -> None:
    caller = Tracer("caller", writer=SpoolWriter(spool, "caller"))
    callee = Tracer("callee", writer=SpoolWriter(spool, "callee"))
    with caller.trace_agent("plan") as plan:
        headers: dict[str, str] = inject({})
        # ... the HTTP request; on the other side:
        with callee.trace_agent("handle", parent=extract(headers)):
            with callee.trace_agent("step"):
                pass
    caller.close()
    callee.close()
    spans = {r.name: r for r in spool_records(spool) if isinstance(r, SpanRecord)}
    assert spans["handle"].trace_id == spans["step"].trace_id == plan.trace_id
    assert spans["handle"].parent_span_id == plan.span_id
    assert spans["handle"].agent_name == "callee" and spans["plan"].agent_name == "caller"


def test_without_tracestate_the_parent_is_derived_deterministically() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"Traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    ctx = extract(headers)
    assert ctx is not None and ctx.trace_id == UUID(trace)
    assert ctx.span_id == span_uuid(UUID(trace), 0x00F067AA0BA902B7)
    assert extract(headers) == ctx  # the same every time
    back: dict[str, str] = inject({}, ctx)
    assert back == {"traceparent": headers["Traceparent"]}  # and back again, no tracestate


def test_a_stale_tracestate_entry_is_ignored_and_other_vendors_are_kept() -> None:
    trace = new_id()
    stale = new_id()
    headers = {
        "traceparent": f"00-{trace.hex}-00f067aa0ba902b7-01",
        "tracestate": f"congo=t61rcWkgMzE, spansidecar={stale.hex},rojo=00f067aa0ba902b7",
    }
    ctx = extract(headers)
    assert ctx == SpanContext(trace, span_uuid(trace, 0x00F067AA0BA902B7),
                              "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    out: dict[str, str] = inject({}, ctx)
    assert out["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def test_invalid_traceparents_are_ignored() -> None:
    good_trace, good_parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    bad = [
        "", "garbage", f"ff-{good_trace}-{good_parent}-01",
        f"00-{'0' * 32}-{good_parent}-01", f"00-{good_trace}-{'0' * 16}-01",
        f"00-{good_trace.upper()}-{good_parent}-01", f"00-{good_trace}-{good_parent}-01-extra",
        f"00-{good_trace[:-1]}-{good_parent}-01",
    ]
    for value in bad:
        assert extract({"traceparent": value}) is None, value
    assert parse_traceparent(f"01-{good_trace}-{good_parent}-01-future") is not None
    assert extract({"traceparent": 42}) is None  # type: ignore[dict-item]


@given(st.dictionaries(st.sampled_from(["traceparent", "tracestate", "TraceParent", "x"]),
                       st.text(max_size=120)))
def test_extract_never_raises_on_any_headers(headers: dict[str, str]) -> None:
    ctx = extract(headers)
    assert ctx is None or isinstance(ctx.span_id, UUID)
