"""Opik benchmark: spans/s into the emulator, catch-up after an Opik outage, idle RSS.

Run on demand (not part of the test suite):

    .venv/bin/python tests/bench/bench_opik.py --spans 100000

1. the emulator's own capacity (batches of 1000 posted directly), since it
   bounds what the sink can show;
2. the daemon on a pre-written spool with Postgres alone, Opik alone, then
   both sinks: spans/s into each, and Postgres with Opik on against alone;
3. Opik down (503) while the spool fills and Postgres keeps up; then Opik
   back: the catch-up rate, and how long a fresh span takes to reach
   Postgres while Opik catches up;
4. idle RSS of the daemon with both sinks enabled.

Each throughput run also reports the daemon's CPU a span (utime + stime from
/proc when the last sink holds every span, start-up included) and its minor
page faults a span (fresh pages of large blocks, each ~1.7 us of kernel time).

To compare code, ``--rounds R --tree A --tree B`` runs only the throughput
part (emulator capacity, Postgres alone, Opik alone, both), R alternating
rounds over the given checkouts (each a directory holding ``sidecar/``, run
as the daemon's code), and prints each tree's medians with min and max:

    .venv/bin/python tests/bench/bench_opik.py --spans 150000 --rounds 3 \
        --tree /tmp/before --tree .

``--agent-spans`` writes the strict Postgres bench's mix (v7 ids, a
quarter of the spans roots) instead of ``tests.support.span`` (v4 ids
that Opik needs mapped, every span a root with a derived trace).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.agent_spans import agent_span
from tests.bench.bench_pipeline import (
    count,
    daemon_cmd,
    drop_schema,
    make_schema,
    proc_sample,
)
from tests.bench.strict_load import summary
from tests.opik_emulator import OpikEmulator
from tests.support import PG_DSN, line, span


def emulator_capacity(emu: OpikEmulator, n: int) -> float:
    from sidecar.sinks.opik_ids import to_v7

    items = []
    for i in range(n):
        s = span(i)
        s["id"] = str(to_v7(uuid.UUID(s["id"])))
        s["trace_id"] = str(to_v7(uuid.UUID(s["trace_id"])))
        s.pop("agent_name"), s.pop("agent_tier")
        items.append(s)
    bodies = [orjson.dumps({"spans": items[k:k + 1000]}) for k in range(0, n, 1000)]
    with httpx.Client(timeout=60) as client:
        t0 = time.perf_counter()
        for body in bodies:
            r = client.post(f"{emu.base_url}/v1/private/spans/batch", content=body,
                            headers={"content-type": "application/json"})
            r.raise_for_status()
        return n / (time.perf_counter() - t0)


class Run:
    def __init__(self, root: Path, emu: OpikEmulator, name: str,
                 sinks: tuple[str, ...] = ("postgres", "opik"), tree: Path | None = None) -> None:
        self.tree = tree
        self.spool, self.state = root / f"spool-{name}", root / f"state-{name}"
        self.spool.mkdir()
        self.state.mkdir()
        self.schema = f"bench_opik_{name}_{uuid.uuid4().hex[:8]}"
        asyncio.run(make_schema(self.schema))
        cfg = {"spool": {"dir": str(self.spool), "state_dir": str(self.state)},
               "postgres": {"enabled": "postgres" in sinks, "dsn": PG_DSN,
                            "schema": self.schema},
               "opik": {"enabled": "opik" in sinks, "url": emu.base_url},
               "breaker": {"reset_timeout_s": 1.0}, "retry": {"max_backoff_s": 1.0},
               "http": {"enabled": False}, "health": {"enabled": False},
               "logging": {"level": "warning", "format": "json"}}
        self.cfg = root / f"{name}.yaml"
        self.cfg.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    # --agent-spans: the strict bench's mix (tests/bench/agent_spans.py)
    # instead of tests.support.span, whose v4 ids Opik needs mapped (a
    # blake2b each, two a span) and whose every span is a root (a derived
    # trace item each); agents' spans are mostly children with v7 ids.
    agent_spans = False

    def write(self, start: int, n: int, name: str = "a") -> None:
        path = self.spool / f"{name}-h-1-{start}.jsonl"
        if self.agent_spans:
            rng = random.Random(22 + start)
            path.write_bytes(b"".join(line(agent_span(i, rng)) for i in range(start, start + n)))
        else:
            path.write_bytes(b"".join(line(span(i)) for i in range(start, start + n)))

    def start(self) -> None:
        cmd = daemon_cmd(self.cfg)
        if self.tree is not None:  # the daemon's code from another checkout
            cmd = [*cmd[:3], str(self.tree.resolve()), *cmd[4:]]
        with (self.state / "daemon.log").open("wb") as log:  # what it said, if it dies
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)

    def rows(self) -> int:
        return asyncio.run(count(self.schema))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
        asyncio.run(drop_schema(self.schema))


def wait(pred: object, timeout: float = 600, step: float = 0.1,
         proc: subprocess.Popen[bytes] | None = None) -> float:
    t0 = time.perf_counter()
    while not pred():  # type: ignore[operator]
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("timed out")
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.returncode})")
        # What the emulator stored stays until the end: left to the cyclic
        # collector, every full collection walks it again and the emulator's
        # cost per span grows with the run (2-4x at 100k spans), which the
        # server it stands for (a JVM and ClickHouse) does not do.
        gc.freeze()
        time.sleep(step)
    return time.perf_counter()


def throughput(root: Path, emu: OpikEmulator, n: int,
               sinks: tuple[str, ...] = ("postgres", "opik"),
               tree: Path | None = None) -> dict[str, float]:
    """Each sink's rate on a pre-written spool of ``n`` spans, from the daemon's
    start until the sink holds them all, and the daemon's CPU a span."""
    emu.reset()
    run = Run(root, emu, f"{'_'.join(sinks)}_{uuid.uuid4().hex[:6]}", sinks, tree)
    run.write(0, n)
    t0 = time.perf_counter()
    run.start()
    done: dict[str, float] = {}

    def finished() -> bool:
        now = time.perf_counter()
        if "opik" in sinks and "opik" not in done and emu.stored() >= n:
            done["opik"] = now
        if "postgres" in sinks and "postgres" not in done and run.rows() >= n:
            done["postgres"] = now
        return len(done) == len(sinks)

    wait(finished, proc=run.proc)
    assert run.proc is not None
    cpu, _, hwm = proc_sample(run.proc.pid)
    faults = minor_faults(run.proc.pid)
    run.stop()
    names = {"opik": "opik_spans_per_s", "postgres": "postgres_rows_per_s"}
    return {**{names[sink]: n / (t - t0) for sink, t in done.items()},
            "cpu_us_per_span": cpu / n * 1e6, "peak_rss_mb": hwm / 2**20,
            "minor_faults_per_span": faults / n}


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far: each fresh page of a large
    block (glibc maps every block of 256 KiB or more anew, see
    sidecar/daemon.py) costs one, about 1.7 us of kernel time here."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def rounds(root: Path, emu: OpikEmulator, n: int, trees: list[Path],
           count_rounds: int) -> dict[str, object]:
    """``count_rounds`` alternating rounds of the throughput runs over ``trees``:
    the emulator's capacity, then per tree Postgres alone, Opik alone and both."""
    runs: dict[str, list[dict[str, float]]] = {str(t): [] for t in trees}
    capacity: list[float] = []
    for r in range(count_rounds):
        capacity.append(emulator_capacity(emu, 20_000))
        emu.reset()
        order = trees if r % 2 == 0 else trees[::-1]
        for tree in order:
            pg = throughput(root, emu, n, ("postgres",), tree)
            opik = throughput(root, emu, n, ("opik",), tree)
            both = throughput(root, emu, n, ("postgres", "opik"), tree)
            row = {"postgres_alone_rows_per_s": pg["postgres_rows_per_s"],
                   "postgres_alone_cpu_us": pg["cpu_us_per_span"],
                   "opik_alone_spans_per_s": opik["opik_spans_per_s"],
                   "opik_alone_cpu_us": opik["cpu_us_per_span"],
                   "opik_alone_minor_faults": opik["minor_faults_per_span"],
                   "both_opik_spans_per_s": both["opik_spans_per_s"],
                   "both_postgres_rows_per_s": both["postgres_rows_per_s"],
                   "both_cpu_us": both["cpu_us_per_span"],
                   "both_minor_faults": both["minor_faults_per_span"],
                   "both_peak_rss_mb": both["peak_rss_mb"],
                   "postgres_vs_alone": both["postgres_rows_per_s"] / pg["postgres_rows_per_s"],
                   "opik_vs_capacity": both["opik_spans_per_s"] / capacity[-1]}
            runs[str(tree)].append(row)
            print(json.dumps({"round": r, "tree": str(tree), "capacity": capacity[-1], **row}),
                  flush=True)
    return {"spans": n, "rounds": count_rounds, "load": os.getloadavg(),
            "emulator_capacity_spans_per_s": summary(capacity),
            **{tree: {key: summary([row[key] for row in rows]) for key in rows[0]}
               for tree, rows in runs.items()}}


def catch_up(root: Path, emu: OpikEmulator, n: int) -> dict[str, float]:
    emu.reset()
    emu.fail(503)
    run = Run(root, emu, "catchup")
    run.write(0, n)
    run.start()
    wait(lambda: run.rows() >= n)
    assert emu.stored() == 0
    emu.healthy()
    t0 = time.perf_counter()
    # The breaker is open: the first batch goes when it half-opens (within
    # breaker.reset_timeout_s, 1 s here), so the rate from Opik's return
    # varies by up to a second's worth; the rate from the first stored span
    # does not.
    t_first = wait(lambda: emu.stored() > 0, step=0.01)
    # A fresh span while Opik catches up: how long until Postgres has it?
    wait(lambda: emu.stored() >= n // 10)
    probe_t = time.perf_counter()
    run.write(n, 100, name="live")
    pg_latency = wait(lambda: run.rows() >= n + 100, step=0.02) - probe_t
    t_done = wait(lambda: emu.stored() >= n + 100)
    assert run.proc is not None
    hwm = proc_sample(run.proc.pid)[2]
    run.stop()
    return {"catch_up_spans_per_s": (n + 100) / (t_done - t0),
            "catch_up_spans_per_s_from_first_stored": (n + 100) / (t_done - t_first),
            "postgres_latency_during_catch_up_s": pg_latency,
            "peak_rss_mb": hwm / 2**20}


def idle_rss(root: Path, emu: OpikEmulator) -> float:
    run = Run(root, emu, "idle")
    run.start()
    assert run.proc is not None
    run.write(0, 10)
    wait(lambda: run.rows() >= 10 and emu.stored() >= 10)
    time.sleep(2)  # settle: the figure is RSS at rest
    rss = proc_sample(run.proc.pid)[1]
    run.stop()
    return rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path("tests/bench/out/opik.json"))
    ap.add_argument("--rounds", type=int, default=0,
                    help="only the throughput runs, this many alternating rounds over --tree")
    ap.add_argument("--tree", type=Path, action="append",
                    help="a checkout whose sidecar/ the daemon runs (repeat to compare)")
    ap.add_argument("--agent-spans", action="store_true",
                    help="spans as agents write them (v7 ids, mostly children), not one shape")
    args = ap.parse_args()
    Run.agent_spans = args.agent_spans
    if args.rounds:
        with tempfile.TemporaryDirectory() as tmp, OpikEmulator() as emu:
            res = rounds(Path(tmp), emu, args.spans, args.tree or [Path(".")], args.rounds)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        return
    results: dict[str, object] = {"spans": args.spans}
    with tempfile.TemporaryDirectory() as tmp, OpikEmulator() as emu:
        root = Path(tmp)
        results["emulator_capacity_spans_per_s"] = emulator_capacity(emu, 20_000)
        emu.reset()
        print(json.dumps(results), flush=True)
        results["idle_rss_mb_both_sinks"] = idle_rss(root, emu)
        # Each sink alone, then both, on the same spool size: the ratio of
        # Postgres with Opik on to Postgres alone comes from one run.
        alone = throughput(root, emu, args.spans, ("postgres",))
        results["postgres_only"] = alone
        results["opik_only"] = throughput(root, emu, args.spans, ("opik",))
        results["throughput"] = both = throughput(root, emu, args.spans)
        both["postgres_vs_alone"] = both["postgres_rows_per_s"] / alone["postgres_rows_per_s"]
        print(json.dumps(results), flush=True)
        results["catch_up"] = catch_up(root, emu, args.spans)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
