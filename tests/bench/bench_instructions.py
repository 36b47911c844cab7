"""Instructions a span: the daemon under callgrind, independent of the machine's load.

Run on demand (not part of the test suite; needs ``valgrind``):

    BENCH_DAEMON_PYTHON=/path/to/runtime-venv/bin/python \\
        .venv/bin/python tests/bench/bench_instructions.py --sink postgres \\
        --tree /tmp/before --tree .

On this project's 2-core machines a timed run of the same code drifts by a
quarter within the hour, more than a change of a few per cent; the count of
instructions does not. Each tree's daemon drains a pre-written spool of
``--small`` and then of ``--large`` spans under ``valgrind --tool=callgrind``
(about 50x slower), and is stopped once its sinks have acknowledged every
byte; the difference of the two counts over the difference of the spans
leaves the start-up and the stop out. Cache misses and system calls are not
in it: a change that moves work into the kernel or across cores needs the
timed benchmarks too.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_pipeline import (
    acked_bytes,
    daemon_cmd,
    drop_schema,
    make_lines,
    make_schema,
    write_spool,
)
from tests.opik_emulator import OpikEmulator
from tests.support import PG_DSN

SINKS = {"postgres": ("postgres",), "opik": ("opik",), "both": ("postgres", "opik")}


def instructions(tree: Path, n: int, sink: str, uniform: bool, emu: OpikEmulator,
                 timeout_s: float) -> int:
    """The instructions the daemon of ``tree`` ran to ship ``n`` spans, start and stop included."""
    names = SINKS[sink]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spool, state = root / "spool", root / "state"
        spool.mkdir()
        state.mkdir()
        write_spool(spool, n, 4, make_lines(n, uniform))
        schema = f"bench_instr_{n}_{int(time.time() * 1000) % 10**8}"
        asyncio.run(make_schema(schema))
        cfg = {"spool": {"dir": str(spool), "state_dir": str(state)},
               "postgres": {"enabled": "postgres" in names, "dsn": PG_DSN, "schema": schema},
               "opik": {"enabled": "opik" in names, "url": emu.base_url},
               "http": {"enabled": False}, "health": {"enabled": False},
               "logging": {"format": "json", "level": "warning"}}
        (root / "sidecar.yaml").write_text(yaml.safe_dump(cfg))
        total = sum(p.stat().st_size for p in spool.iterdir())
        emu.reset()
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               *daemon_cmd(root / "sidecar.yaml", tree)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        try:
            while not all(acked_bytes(state / "checkpoints" / f"{name}.json") >= total
                          for name in names):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the daemon of {tree} stopped or stalled at {n} spans")
                time.sleep(0.2)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=120)
            asyncio.run(drop_schema(schema))
    found = re.search(rb"Collected : (\d+)", err)
    if found is None:
        raise SystemExit(f"callgrind printed no count: {err[-500:]!r}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sink", choices=sorted(SINKS), default="postgres")
    ap.add_argument("--small", type=int, default=5_000)
    ap.add_argument("--large", type=int, default=25_000)
    ap.add_argument("--uniform-spans", action="store_true",
                    help="tests.support.span repeated (v4 ids, every span a root), "
                         "not the agent mix of tests/bench/agent_spans.py")
    ap.add_argument("--tree", type=Path, action="append",
                    help="a checkout whose sidecar/ the daemon runs (repeat to compare)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take")
    args = ap.parse_args()
    spans = "one shape" if args.uniform_spans else "agent spans"
    with OpikEmulator() as emu:
        for tree in args.tree or [Path(".")]:
            small, large = (instructions(tree, n, args.sink, args.uniform_spans, emu, args.timeout)
                            for n in (args.small, args.large))
            each = (large - small) / (args.large - args.small)
            print(f"{args.sink}, {spans}, {tree}: {each:,.0f} instructions a span "
                  f"({small:,} for {args.small:,}, {large:,} for {args.large:,})", flush=True)


if __name__ == "__main__":
    main()
