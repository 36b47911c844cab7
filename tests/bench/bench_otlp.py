"""Benchmark: parse_otlp, and the receiver's whole path, on OTLP protobuf batches of GenAI spans.

Run on demand (not part of the test suite):

    .venv/bin/python tests/bench/bench_otlp.py --spans 512 --batches 40 --runs 5
    .venv/bin/python tests/bench/bench_otlp.py --compare BEFORE_TREE AFTER_TREE --rounds 7

Each batch is what ``opentelemetry-exporter-otlp-proto-http`` sends for
``--spans`` finished spans (one agent span, LLM calls with the GenAI
attributes, prompts and completions as JSON text, usage, ~0.9 KiB each),
encoded once; the timed part is ``parse_otlp`` alone (decode, map, the
response body), in CPU time of this process, under the daemon's garbage
collector settings (``sidecar.daemon.tune_gc``). The median run is reported:
spans/s and microseconds per span, plain and gzip-encoded bodies. Each batch
is built apart (its own ids and times), as an agent's exporter sends them.

*receiver path*: what the receiver does for a request on its event loop and
in its write thread, without HTTP: ``parse_otlp``, the records as spool lines
(re-checked or not, as the tree's ``Appender`` does), appended to a spool
file with one ``fdatasync`` (``fsync: always``).

``--compare A B`` runs this script under two trees' ``sidecar`` (e.g. a copy
of the receiver before a change), one process a round, taking turns, and
reports each one's median and range of the rounds' CPU a span.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
# --tree: whose sidecar to time, found before the checkout's own
sys.path.insert(0, sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv
                else str(Path(__file__).resolve().parents[2]))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.client.otel import UUID7IdGenerator
from sidecar.daemon import tune_gc
from sidecar.receivers.appender import Appender
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


def receiver_path(bodies: list[bytes], spool: Path) -> float:
    """CPU seconds of the receiver's work for every body: parse, lines, append, sync."""
    appender = Appender(spool, "always")
    unchecked: Callable[[list[dict[str, Any]]], list[bytes]] | None = getattr(
        appender, "mapped_lines", None)  # absent before the change
    start = time.process_time()
    for body in bodies:
        records = parse_otlp(body, "application/x-protobuf", None).records
        if unchecked is not None:
            lines = unchecked(records)
        else:
            lines = appender.lines(records, [f"item {i}" for i in range(len(records))])
        assert appender._write(lines) == len(lines)
    seconds = time.process_time() - start
    appender.close()
    return seconds


def measure(spans: int, batches: int, runs: int) -> dict[str, Any]:
    bodies = [encode_spans(genai_spans(spans)).SerializeToString() for _ in range(batches)]
    tune_gc()  # the daemon's collector thresholds, not the interpreter's default
    total = spans * batches
    out: dict[str, Any] = {"batch_kib": len(bodies[0]) / 1024,
                           "batch_gzip_kib": len(gzip.compress(bodies[0])) / 1024}
    zipped = [gzip.compress(b) for b in bodies]
    run(bodies[:1], None)  # warm: the lazy import, caches
    for label, timed, encoding in (("protobuf", bodies, None), ("protobuf+gzip", zipped, "gzip")):
        out[label] = statistics.median(run(timed, encoding) for _ in range(runs)) / total * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        out["receiver_path"] = statistics.median(
            receiver_path(bodies, Path(tmp) / str(i)) for i in range(runs)) / total * 1e6
    return out


def compare(trees: list[Path], rounds: int, spans: int, batches: int) -> None:
    """Each tree in its own process a round, taking turns; medians and ranges."""
    seen: dict[str, dict[str, list[float]]] = {str(t): {} for t in trees}
    for r in range(rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            done = subprocess.run(
                [sys.executable, __file__, "--tree", str(tree), "--json", "--runs", "1",
                 "--spans", str(spans), "--batches", str(batches)],
                capture_output=True, check=True, text=True)
            got = json.loads(done.stdout.strip().splitlines()[-1])
            for key in ("protobuf", "receiver_path"):
                seen[str(tree)].setdefault(key, []).append(got[key])
            print(json.dumps({"round": r, "tree": str(tree), **got}), flush=True)
    for name, figures in seen.items():
        for key, values in figures.items():
            print(f"{name:30} {key:14} us/span median {statistics.median(values):6.1f} "
                  f"(range {min(values):.1f}-{max(values):.1f}, {len(values)} rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=512, help="spans per batch")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tree", type=Path, default=None, help="whose sidecar to time")
    parser.add_argument("--json", action="store_true", help="one JSON line of the figures")
    parser.add_argument("--compare", type=Path, nargs="+", default=None,
                        help="trees to time in turns, one process a round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.rounds, args.spans, args.batches)
        return
    out = measure(args.spans, args.batches, args.runs)
    if args.json:
        print(json.dumps(out))
        return
    print(f"batch: {args.spans} spans, {out['batch_kib']:.0f} KiB protobuf, "
          f"{out['batch_gzip_kib']:.0f} KiB gzip; median of {args.runs} runs of "
          f"{args.spans * args.batches} spans")
    for label in ("protobuf", "protobuf+gzip", "receiver_path"):
        us = out[label]
        print(f"{label:14} {1e6 / us:10,.0f} spans/s  {us:6.1f} us/span")


if __name__ == "__main__":
    main()
