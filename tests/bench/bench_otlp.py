"""Benchmark: parse_otlp on OTLP protobuf batches of GenAI spans.

Run on demand (not part of the test suite):

    .venv/bin/python tests/bench/bench_otlp.py --spans 512 --batches 40 --runs 5

Each batch is what ``opentelemetry-exporter-otlp-proto-http`` sends for
``--spans`` finished spans (one agent span, LLM calls with the GenAI
attributes, prompts and completions as JSON text, usage, ~0.9 KiB each),
encoded once; the timed part is ``parse_otlp`` alone (decode, map, the
response body), in CPU time of this process. The median run is reported:
spans/s and microseconds per span, plain and gzip-encoded bodies.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.client.otel import UUID7IdGenerator
from sidecar.receivers.otlp import parse_otlp

PROMPT = '[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "%s"}]'
ANSWER = '[{"role": "assistant", "content": "%s", "finish_reason": "stop"}]'


def genai_spans(n: int) -> list[ReadableSpan]:
    """``n`` finished spans: one agent span and ``n - 1`` chat calls under it."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-agent"}),
                              id_generator=UUID7IdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench.instrumentation", "1.0")
    with tracer.start_as_current_span("invoke_agent bench") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        for i in range(n - 1):
            with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
                chat.set_attributes({
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                    "gen_ai.request.temperature": 0.2, "gen_ai.response.id": f"chatcmpl-{i}",
                    "gen_ai.usage.input_tokens": 120 + i % 50, "gen_ai.usage.output_tokens": 40,
                    "gen_ai.input.messages": PROMPT % (f"question number {i} " * 4),
                    "gen_ai.output.messages": ANSWER % (f"answer number {i} " * 4)})
    provider.shutdown()
    return list(memory.get_finished_spans())


def run(bodies: list[bytes], encoding: str | None) -> float:
    """CPU seconds to parse every body once."""
    start = time.process_time()
    for body in bodies:
        result = parse_otlp(body, "application/x-protobuf", encoding)
        assert result.status == 200 and result.records, result.reason
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=512, help="spans per batch")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    body = encode_spans(genai_spans(args.spans)).SerializeToString()
    print(f"batch: {args.spans} spans, {len(body) / 1024:.0f} KiB protobuf "
          f"({len(body) / args.spans:.0f} B/span), {len(gzip.compress(body)) / 1024:.0f} KiB gzip")
    total = args.spans * args.batches
    for label, bodies, encoding in (("protobuf", [body] * args.batches, None),
                                    ("protobuf+gzip", [gzip.compress(body)] * args.batches,
                                     "gzip")):
        run(bodies[:1], encoding)  # warm: the lazy import, caches
        seconds = statistics.median(run(bodies, encoding) for _ in range(args.runs))
        print(f"{label:14} {total / seconds:10,.0f} spans/s  {seconds / total * 1e6:6.1f} us/span "
              f"(median of {args.runs} runs of {total} spans)")


if __name__ == "__main__":
    main()
