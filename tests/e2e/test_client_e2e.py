"""The agent client against the running daemon: what agents write reaches Postgres."""

from __future__ import annotations

import threading

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from sidecar.client import SpoolWriter, Tracer
from sidecar.client.otel import SpoolSpanExporter, UUID7IdGenerator
from tests.support import SidecarEnv, query, wait_until


def test_otel_spans_round_trip_through_the_daemon_into_postgres(sidecar_env: SidecarEnv) -> None:
    """An OTel-instrumented agent: GenAI attributes land in the Postgres columns,
    and the child's parent is the root span's row."""
    sidecar_env.daemon().wait_started()
    exporter = SpoolSpanExporter(agent_name="otel-agent", spool_dir=sidecar_env.spool)
    provider = TracerProvider(resource=Resource.create({"service.name": "otel-agent"}),
                              id_generator=UUID7IdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("plan"), tracer.start_as_current_span("chat") as llm:
        llm.set_attribute("gen_ai.request.model", "gpt-4o-mini")
        llm.set_attribute("gen_ai.system", "openai")
        llm.set_attribute("gen_ai.usage.input_tokens", 120)
        llm.set_attribute("gen_ai.usage.output_tokens", 30)
    provider.shutdown()
    wait_until(lambda: sidecar_env.rows() == 2, 15, "both OTel spans")
    rows = {r["name"]: r for r in query(
        f'SELECT * FROM "{sidecar_env.schema}".ml_observability_spans')}
    chat, plan = rows["chat"], rows["plan"]
    assert (chat["model"], chat["provider"]) == ("gpt-4o-mini", "openai")
    tokens = (chat["prompt_tokens"], chat["completion_tokens"], chat["total_tokens"])
    assert tokens == (120, 30, 150)
    assert chat["parent_span_id"] == plan["span_id"] and chat["trace_id"] == plan["trace_id"]
    assert plan["parent_span_id"] is None and chat["agent_name"] == "otel-agent"


def test_client_rotation_while_the_daemon_tails_loses_nothing(sidecar_env: SidecarEnv) -> None:
    """Tracer spans from four threads, the writer rotating every ~20 KB to .done while
    the daemon tails: every span is stored once and the rotated files are removed."""
    sidecar_env.daemon().wait_started()
    writer = SpoolWriter(sidecar_env.spool, "rotating", max_bytes=20_000)
    tracer = Tracer("rotating", writer=writer)
    ids: list[str] = []
    lock = threading.Lock()

    def agent(k: int) -> None:
        for i in range(500):
            with tracer.trace_agent(f"step-{k}", input={"i": i, "text": "x" * 200}) as s:
                pass
            with lock:
                ids.append(str(s.id))

    threads = [threading.Thread(target=agent, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    writer.close()
    assert writer.stats().records_dropped == 0 and writer.stats().files_done > 10
    wait_until(lambda: sidecar_env.rows() == 2000, 30, "all 2000 spans")
    stored = {r[0] for r in query(
        f'SELECT span_id::text FROM "{sidecar_env.schema}".ml_observability_spans')}
    assert stored == set(ids)
    wait_until(lambda: not list(sidecar_env.spool.glob("*.done")), 15, "rotated files removed")
