"""OTLP/HTTP into a real daemon (issue 20's acceptance): the real protobuf
exporter (plain and gzip) and OTLP/JSON, GenAI spans stored in Postgres and
sent to Opik with model, provider, tokens, input and output, the tree intact,
exactly once after the exporter sends the batch again."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.opik_emulator import OpikEmulator
from tests.receivers.helpers import receiver_daemon
from tests.receivers.test_otlp_exporter import genai_batch
from tests.receivers.test_otlp_support import to_json
from tests.support import SidecarEnv, query, wait_until


def rows(schema: str) -> dict[str, dict[str, Any]]:
    try:
        found = query(f'SELECT * FROM "{schema}".ml_observability_spans')
    except Exception:  # not migrated yet
        return {}
    return {r["name"]: dict(r) for r in found}


@pytest.mark.parametrize("encoding", ["protobuf", "protobuf+gzip", "json"])
def test_genai_spans_are_stored_once_with_their_fields_after_a_resend(
        sidecar_env: SidecarEnv, emu: OpikEmulator, encoding: str) -> None:
    daemon, url = receiver_daemon(sidecar_env, emu)
    spans = genai_batch()
    for _ in range(2):  # the exporter sends the same batch again
        if encoding == "json":
            conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=5)
            conn.request("POST", "/v1/traces", to_json(encode_spans(spans)),
                         {"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conn.close()
        else:
            gzip = Compression.Gzip if encoding.endswith("gzip") else Compression.NoCompression
            exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", compression=gzip)
            assert exporter.export(spans) == SpanExportResult.SUCCESS
            exporter.shutdown()
    wait_until(lambda: len(rows(sidecar_env.schema)) == 3 and emu.stored("spans") == 3, 20,
               "three spans in both sinks")
    stored = rows(sidecar_env.schema)
    chat = stored["chat gpt-4o"]
    assert (chat["type"], chat["provider"]) == ("llm", "openai")
    assert chat["model"] in ("gpt-4o", "gpt-4o-2024-08-06")
    assert (chat["prompt_tokens"], chat["completion_tokens"]) == (42, 7)
    assert "weather?" in json.dumps(json.loads(chat["input"]))
    assert "sunny" in json.dumps(json.loads(chat["output"]))
    agent = stored["invoke_agent planner"]
    assert chat["parent_span_id"] == agent["span_id"]
    assert stored["execute_tool"]["status"] == "error"
    assert query(f'SELECT count(*) AS n FROM "{sidecar_env.schema}".ml_observability_spans')[0][
        "n"] == 3
    assert not daemon.events("receivers.request.refused")
