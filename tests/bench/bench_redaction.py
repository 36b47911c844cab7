"""Benchmark: throughput with the built-in redaction on vs off, in the same run.

Run on demand (not part of the test suite):

    .venv/bin/python tests/bench/bench_redaction.py --spans 50000 --runs 5 --daemon-runs 3

Both figures by default (``--mode in-process`` or ``--mode daemon`` for one).
In-process: the pipeline's per-line work, ``parse_line`` then the
policy stage, over realistic spans (~820 bytes; ``--secret-share`` of them
carry a secret in their input). ``--daemon``: the real daemon from a
pre-written spool to Postgres, timed until every row is stored. Runs
alternate off/on and the medians are reported (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.config.settings import Settings
from sidecar.policies import PolicyStage
from sidecar.records import Rejected, parse_line
from tests.bench.bench_pipeline import drop_schema
from tests.support import PG_DSN, Daemon, line, row_count, span, wait_until


def corpus(n: int, secret_share: float) -> list[bytes]:
    every = int(1 / secret_share) if secret_share > 0 else 0
    out = []
    for i in range(n):
        fields = {"input": {"prompt": f"key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv{i:08d} please"}} \
            if every and i % every == 0 else {}
        out.append(line(span(i, **fields)).rstrip(b"\n"))
    return out


SLICE_LINES = 200  # the Postgres pipeline's: one gate search a slice (--slice-lines)


def in_process(lines: list[bytes], redaction: bool, every: int = SLICE_LINES) -> float:
    """Lines a second through ``parse_line`` and the policy stage, the gate
    run once a slice of ``every`` lines as the pipeline does (1: each line's
    own gate, as before the slices)."""
    settings = Settings(spans={"redaction": {"enabled": redaction}})
    stage = PolicyStage(settings.sampling, settings.spans)
    t0 = time.perf_counter()
    for start in range(0, len(lines), every):
        chunk = lines[start:start + every]
        cleared, suspects = stage.screen(chunk) if every > 1 else (None, set())
        for at, raw in enumerate(chunk):
            rec = parse_line(raw)
            if not isinstance(rec, Rejected):
                stage.apply(rec, raw, cleared_by=None if at in suspects else cleared)
    return len(lines) / (time.perf_counter() - t0)


def daemon_run(lines: list[bytes], redaction: bool) -> float:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "spool").mkdir()
        (root / "spool" / "bench-h-1-0.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        cfg = {"spool": {"dir": str(root / "spool"), "state_dir": str(root / "state")},
               "postgres": {"dsn": PG_DSN, "schema": schema}, "opik": {"enabled": False},
               "http": {"enabled": False}, "health": {"enabled": False},
               "spans": {"redaction": {"enabled": redaction}}, "logging": {"format": "json"}}
        (root / "c.yaml").write_text(yaml.safe_dump(cfg))
        d = Daemon(root / "c.yaml", root / "d.log").start().wait_started()
        t0 = time.perf_counter()
        wait_until(lambda: row_count(schema) == len(lines), 600, "every row")
        elapsed = time.perf_counter() - t0
        d.kill()
    asyncio.run(drop_schema(schema))
    return len(lines) / elapsed


def measure(mode: str, lines: list[bytes], runs: int,
            every: int = SLICE_LINES) -> tuple[list[float], list[float]]:
    """Runs alternating off/on (the machine is shared): the rates of each."""
    run = daemon_run if mode == "daemon" else partial(in_process, every=every)
    off: list[float] = []
    on: list[float] = []
    for _ in range(runs):
        off.append(run(lines, False))
        on.append(run(lines, True))
    return off, on


def report(mode: str, off: list[float], on: list[float]) -> None:
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"  {mode}:")
    print(f"    redaction off: median {m_off:,.0f} spans/s  (runs: {[round(x) for x in off]})")
    print(f"    redaction on : median {m_on:,.0f} spans/s  (runs: {[round(x) for x in on]})")
    print(f"    slowdown: {100 * (1 - m_on / m_off):.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=50000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--daemon-runs", type=int, default=3)
    ap.add_argument("--secret-share", type=float, default=0.01)
    ap.add_argument("--mode", choices=("in-process", "daemon", "both"), default="both")
    ap.add_argument("--daemon", action="store_true", help="the same as --mode daemon")
    ap.add_argument("--slice-lines", type=int, default=SLICE_LINES,
                    help="in process: lines a gate search covers (1: a search a line)")
    args = ap.parse_args()
    modes = ["daemon"] if args.daemon else (
        ["in-process", "daemon"] if args.mode == "both" else [args.mode])
    lines = corpus(args.spans, args.secret_share)
    print(f"{args.spans} spans, {args.secret_share:.0%} with a secret")
    for mode in modes:
        runs = args.daemon_runs if mode == "daemon" else args.runs
        report(f"{mode} ({runs} runs)", *measure(mode, lines, runs, args.slice_lines))


if __name__ == "__main__":
    main()
