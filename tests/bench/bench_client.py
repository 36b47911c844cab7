"""What an agent pays per span: span-sidecar's client against the Opik SDK.

Run on demand (not collected by pytest):

    .venv/bin/python tests/bench/bench_client.py [--spans 20000] [--json OUT]

Each call is timed on its own (``perf_counter_ns``), so the figures are the
median, p99 and worst single call, plus CPU per span (``process_time``, which
includes background threads: the Opik SDK serialises and sends on its own
threads); each figure is from the best of 3 runs of ``--spans`` calls. The
Opik SDK runs in a child process pointed at a closed loopback port
(``http://127.0.0.1:9/api``), with its Sentry and analytics reporting switched
off, so it never reaches a network and its threads do not disturb the
client's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

OPIK_URL = "http://127.0.0.1:9/api"  # loopback, nothing listens: never a real backend
INPUT = {"messages": [{"role": "user", "content": "Summarise the quarterly report. " * 6}]}
OUTPUT = {"content": "Revenue grew 12 % while costs stayed flat; " * 5}
METADATA = {"temperature": 0.2, "run": "bench"}
USAGE = {"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200}


def timed(fn: Callable[[int], object], n: int, repeats: int = 3) -> dict[str, float]:
    """Per-call wall times (us) of ``fn(i)``, and CPU per call: the best of ``repeats`` runs.

    Best of several runs (by median) keeps other work on a shared machine out of
    the figures; both sides are measured the same way.
    """
    for i in range(min(n // 10, 1000)):  # warm-up
        fn(i)
    runs = []
    for _ in range(repeats):
        samples = []
        cpu0 = time.process_time()
        for i in range(n):
            t0 = time.perf_counter_ns()
            fn(i)
            samples.append(time.perf_counter_ns() - t0)
        cpu = (time.process_time() - cpu0) / n * 1e6
        samples.sort()
        runs.append({"median_us": statistics.median(samples) / 1000,
                     "p99_us": samples[int(len(samples) * 0.99)] / 1000,
                     "max_us": samples[-1] / 1000, "cpu_us": cpu})
    return min(runs, key=lambda run: run["median_us"])


def bench_client(n: int) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from sidecar.client import SpoolWriter, Tracer, new_id

    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as spool:
        writer = SpoolWriter(spool, "bench")
        now = datetime.now(UTC)
        trace_id = new_id()
        record = {"v": 1, "id": trace_id, "trace_id": trace_id, "parent_span_id": None,
                  "name": "llm", "type": "llm", "start_time": now, "end_time": now,
                  "input": INPUT, "output": OUTPUT, "metadata": METADATA, "usage": USAGE,
                  "model": "gpt-4o", "provider": "openai", "agent_name": "bench"}
        out[f"SpoolWriter.write ({len(_line(record))} B line)"] = timed(
            lambda i: writer.write(record), n)
        tracer = Tracer("bench", writer=writer)

        def empty_span(i: int) -> None:
            with tracer.trace_agent("step"):
                pass

        def full_span(i: int) -> None:
            with tracer.trace_agent("step", input=INPUT, metadata=METADATA) as span:
                span.update(output=OUTPUT, usage=USAGE, model="gpt-4o", provider="openai")

        def llm_call(i: int) -> None:
            tracer.trace_llm_call("gpt-4o", "openai", INPUT, OUTPUT, USAGE, 0.002)

        out["trace_agent enter+exit (no payload)"] = timed(empty_span, n)
        out["trace_agent enter+exit (+input/output/usage)"] = timed(full_span, n)
        out["trace_llm_call"] = timed(llm_call, n)
        tracer.close()
    return out


def _line(record: dict[str, Any]) -> bytes:
    from sidecar.client.serialize import dumps_line

    return dumps_line(record)


def bench_opik(n: int) -> dict[str, dict[str, float]]:
    """Runs in the child process started by ``run_opik_child``."""
    import opik

    client = opik.Opik(project_name="bench", host=OPIK_URL, workspace="default",
                       _show_misconfiguration_message=False)
    assert client.config.url_override.startswith("http://127.0.0.1:"), client.config.url_override
    now = datetime.now(UTC)

    def span(i: int) -> None:
        client.span(name="llm", type="llm", start_time=now, end_time=now, input=INPUT,
                    output=OUTPUT, metadata=METADATA, usage=USAGE, model="gpt-4o",
                    provider="openai")

    def trace_and_span(i: int) -> None:
        trace = client.trace(name="agent", input=INPUT, start_time=now)
        trace.span(name="llm", type="llm", input=INPUT, output=OUTPUT, usage=USAGE,
                   model="gpt-4o", provider="openai", start_time=now, end_time=now)

    return {"opik.Opik().span(...)": timed(span, n),
            "opik.Opik().trace(...) + trace.span(...)": timed(trace_and_span, n)}


def run_opik_child(n: int) -> dict[str, dict[str, float]]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(OPIK_URL_OVERRIDE=OPIK_URL, OPIK_SENTRY_ENABLE="false",
               OPIK_ANALYTICS_ENABLE="false", OPIK_ANALYTICS_URL="", OPIK_SENTRY_DSN="",
               NO_PROXY="*", OPIK_API_KEY="", OPIK_CONSOLE_LOGGING_LEVEL="CRITICAL")
    proc = subprocess.run([sys.executable, __file__, "--opik-child", "--spans", str(n)],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"opik child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, dict[str, float]] = json.loads(lines[-1])
    return result


def report(results: dict[str, dict[str, float]], n: int) -> str:
    title = f"per span, {n} calls"
    rows = [f"{title:52} {'median':>8} {'p99':>8} {'max':>10} {'CPU':>8}"]
    for name, r in results.items():
        rows.append(f"{name:52} {r['median_us']:8.1f} {r['p99_us']:8.1f} {r['max_us']:10.1f}"
                    f" {r['cpu_us']:8.1f}")
    ours = results["trace_agent enter+exit (+input/output/usage)"]["median_us"]
    theirs = results["opik.Opik().span(...)"]["median_us"]
    bare = next(v for k, v in results.items() if k.startswith("SpoolWriter.write"))
    rows.append("(microseconds, best of 3 runs; CPU includes background threads)")
    rows.append(f"bare write median {bare['median_us']:.1f} us (target <= 10); Opik span / "
                f"trace_agent with payload = {theirs / ours:.1f}x (target >= 5x)")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--opik-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.opik_child:
        print(json.dumps(bench_opik(args.spans)), flush=True)
        os._exit(0)  # do not wait for the SDK to give up flushing to a closed port
    results = bench_client(args.spans)
    results.update(run_opik_child(args.spans))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(report(results, args.spans))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
