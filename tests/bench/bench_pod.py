"""A sidecar's cost in a pod (issue 22): CPU share of a core and RSS, idle and
under a steady trickle of spans, and the daemon's start-up.

Run on demand (not part of the test suite):

    BENCH_DAEMON_PYTHON=/tmp/rtvenv/bin/python \\
        .venv/bin/python tests/bench/bench_pod.py --window 60 --runs 3

The daemon is the real one (``span-sidecar run --config``) with both sinks on:
Postgres on 127.0.0.1 (a schema of its own, migrated by the daemon) and Opik
pointed at the in-repo emulator (``tests/opik_emulator.py``, served from this
process), ``http`` and ``health`` at their defaults. For memory figures run it
from a venv holding only the runtime dependencies (``BENCH_DAEMON_PYTHON``,
see tests/bench/bench_pipeline.py): the test extras add ~10 MB.

Each round, for each rate of ``--rates`` (spans/s; 0 is idle): a fresh
daemon, ten spans to warm it up (stored in both sinks), then a writer
process appending spans as agents write them (``tests/bench/agent_spans.py``
through the client's ``SpoolWriter``) at that rate; after ``--settle``
seconds, the window: the daemon's utime+stime (``/proc/<pid>/stat``, every
thread) over the window's wall time is its share of a core, VmRSS sampled
every second (median) and VmHWM at the end. ``--scrape-every S`` scrapes
``/metrics`` every S seconds from before the settle on, as Prometheus would
(a sidecar nobody scrapes does not load prometheus-client at all). Medians of ``--runs`` rounds,
with min and max. With several ``--tree`` checkouts (e.g. an old one from
``git archive``), each round runs every tree in turn, alternating.

Also reported: Opik's requests a second over the window. ``--loop-profile
DIR`` runs each daemon under ``tests/bench/loop_profile.py``: the event
loop's callbacks over the window, task by task, in CPU milliseconds a
second (one JSON file per daemon), where a 30 s window's utime+stime is
too coarse and too noisy to tell a few per cent.

Each tree is byte-compiled first (``compileall``), as pip and the image do:
with ``PYTHONDONTWRITEBYTECODE`` set, a tree fresh from ``git archive``
would otherwise compile every module at each start (~0.15 s of CPU).

Start-up (``--startup-runs``): from exec to ``/readyz`` answering 200, and to
the first span (already in the spool) stored in Postgres, the daemon
migrating a fresh schema; and once, under ``python -X importtime``, the
import time and the top-level packages that cost most.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.agent_spans import agent_span  # noqa: E402
from tests.bench.bench_pipeline import compile_tree, count, drop_schema  # noqa: E402
from tests.bench.strict_load import proc_sample  # noqa: E402
from tests.opik_emulator import OpikEmulator  # noqa: E402
from tests.support import PG_DSN  # noqa: E402

DAEMON_PYTHON = os.environ.get("BENCH_DAEMON_PYTHON", sys.executable)
HTTP_LISTEN = "127.0.0.1:9464"  # http.listen's default


def daemon_cmd(python: str, tree: Path, config: Path, flags: tuple[str, ...] = (),
               loop_profile: tuple[Path, Path] | None = None) -> list[str]:
    """``span-sidecar run`` of the checkout at ``tree``; with ``loop_profile``
    (output, start file) under ``tests/bench/loop_profile.py``."""
    if loop_profile is not None:
        out, start = loop_profile
        return [python, *flags, str(ROOT / "tests" / "bench" / "loop_profile.py"), str(out),
                str(start), str(tree), "run", "--config", str(config)]
    return [python, *flags, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from sidecar.cli import main; sys.exit(main())",
            str(tree), "run", "--config", str(config)]


def writer_main(spool: str, rate: float) -> None:
    """The writer process: ``rate`` spans/s through the client, paced every 10 ms."""
    from sidecar.client.writer import SpoolWriter

    writer = SpoolWriter(spool, "bench-agent")
    rng = random.Random(22)
    t0 = time.monotonic()
    written = 0
    while True:
        due = int((time.monotonic() - t0) * rate)
        while written < due:
            writer.write(agent_span(written, rng))
            written += 1
        time.sleep(0.01)


class Daemon:
    """One daemon with both sinks on, its own schema, spool and state."""

    def __init__(self, root: Path, emu: OpikEmulator, python: str, tree: Path,
                 name: str) -> None:
        self.spool, self.state = root / f"spool-{name}", root / f"state-{name}"
        self.spool.mkdir()
        self.state.mkdir()
        self.schema = f"bench_pod_{uuid.uuid4().hex[:8]}"
        asyncio.run(drop_schema(self.schema))
        self.python, self.tree = python, tree
        cfg = {"spool": {"dir": str(self.spool), "state_dir": str(self.state)},
               "postgres": {"dsn": PG_DSN, "schema": self.schema},
               "opik": {"enabled": True, "url": emu.base_url},
               "logging": {"level": "warning", "format": "json"}}
        self.cfg = root / f"{name}.yaml"
        self.cfg.write_text(yaml.safe_dump(cfg))
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, flags: tuple[str, ...] = (),
              loop_profile: tuple[Path, Path] | None = None) -> float:
        if ready():
            raise SystemExit(f"something else answers on {HTTP_LISTEN}: stop it first")
        t0 = time.perf_counter()
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                daemon_cmd(self.python, self.tree, self.cfg, flags, loop_profile),
                stdout=subprocess.DEVNULL, stderr=err)
        return t0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """True while it runs; a daemon that exited ends the benchmark."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(f"daemon exited with {self.proc.returncode}: "
                             f"{self.log.read_text()[-2000:]}")
        return True

    def rows(self) -> int:
        return asyncio.run(count(self.schema))

    def write(self, n: int, name: str = "warm") -> None:
        rng = random.Random(7)
        path = self.spool / f"{name}-h-1-{uuid.uuid4().hex[:6]}.jsonl"
        path.write_bytes(b"".join(json.dumps(agent_span(i, rng)).encode() + b"\n"
                                  for i in range(n)))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)
        asyncio.run(drop_schema(self.schema))


def ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://{HTTP_LISTEN}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait_for(pred: Any, what: str, timeout: float = 120, step: float = 0.05) -> float:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)
    return time.perf_counter()


def scrape() -> None:
    """``GET /metrics`` once, as Prometheus does."""
    with urllib.request.urlopen(f"http://{HTTP_LISTEN}/metrics", timeout=5) as r:
        r.read()


def cost(root: Path, emu: OpikEmulator, python: str, tree: Path, rate: float,
         window: float, settle: float, name: str, scrape_every: float = 0.0,
         profile_dir: Path | None = None) -> dict[str, float]:
    """One daemon's CPU share and RSS over ``window`` s at ``rate`` spans/s
    (``scrape_every`` > 0: ``/metrics`` scraped that often, from before the settle;
    ``profile_dir``: the loop's callbacks over the window, ``loop_profile.py``)."""
    emu.reset()
    d = Daemon(root, emu, python, tree, name)
    writer: subprocess.Popen[bytes] | None = None
    profile = None if profile_dir is None else (profile_dir / f"{name}.json",
                                                root / f"{name}.window")
    try:
        d.start(loop_profile=profile)
        wait_for(lambda: d.alive() and ready(), "/readyz")
        d.write(10)
        wait_for(lambda: d.alive() and d.rows() >= 10 and emu.stored() >= 10,
                 "the warm-up spans", step=0.2)
        if rate > 0:
            writer = subprocess.Popen([sys.executable, __file__, "--writer", str(d.spool),
                                       str(rate)])
        scraped = -float("inf")
        if scrape_every > 0:
            scrape()
            scraped = time.perf_counter()
        time.sleep(settle)
        d.alive()
        if profile is not None:
            profile[1].touch()
        cpu0, _, _ = proc_sample(d.pid)
        requests0 = len(emu.requests())
        t0 = time.perf_counter()
        rss: list[int] = []
        while time.perf_counter() - t0 < window:
            time.sleep(min(1.0, window - (time.perf_counter() - t0)))
            rss.append(proc_sample(d.pid)[1])
            if scrape_every > 0 and time.perf_counter() - scraped >= scrape_every:
                scrape()
                scraped = time.perf_counter()
        cpu1, _, hwm = proc_sample(d.pid)
        wall = time.perf_counter() - t0
        d.alive()
        stored = emu.stored()
        requests = len(emu.requests()) - requests0
    finally:
        if writer is not None:
            writer.terminate()
            writer.wait()
        d.stop()
    return {"cpu_pct_of_core": 100 * (cpu1 - cpu0) / wall,
            "rss_mb": statistics.median(rss) / 2**20, "hwm_mb": hwm / 2**20,
            "opik_stored": stored, "opik_requests_per_s": requests / wall}


def startup(root: Path, emu: OpikEmulator, python: str, tree: Path,
            name: str) -> dict[str, float]:
    """Seconds from exec to /readyz 200 and to the first span stored in Postgres
    (the daemon migrating a fresh schema), and its CPU seconds by then."""
    emu.reset()
    d = Daemon(root, emu, python, tree, name)
    d.write(1)
    try:
        t0 = d.start()
        t_ready = t_stored = None
        while t_ready is None or t_stored is None:
            d.alive()
            now = time.perf_counter()
            if t_ready is None and ready():
                t_ready = now
            if t_stored is None and d.rows() >= 1:
                t_stored = time.perf_counter()
                cpu = proc_sample(d.pid)[0]
            time.sleep(0.005)
        t_opik = wait_for(lambda: emu.stored() >= 1, "Opik's first span", step=0.005)
    finally:
        d.stop()
    return {"to_ready_s": t_ready - t0, "to_first_stored_s": t_stored - t0,
            "to_first_in_opik_s": t_opik - t0, "cpu_s_at_first_stored": cpu}


_IMPORT = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_times(root: Path, emu: OpikEmulator, python: str, tree: Path,
                 name: str, top: int) -> dict[str, Any]:
    """One start under ``-X importtime``: the total, and the top-level packages
    (first dotted part) by their own import time summed."""
    emu.reset()
    d = Daemon(root, emu, python, tree, name)
    d.write(1)
    try:
        d.start(("-X", "importtime"))
        wait_for(lambda: d.alive() and d.rows() >= 1 and ready(), "the first span")
        time.sleep(1)
    finally:
        d.stop()
    by_pkg: dict[str, int] = {}
    total = 0
    for row in d.log.read_text().splitlines():
        m = _IMPORT.match(row)
        if m:
            self_us, pkg = int(m.group(1)), m.group(4).split(".")[0]
            by_pkg[pkg] = by_pkg.get(pkg, 0) + self_us
            total += self_us
    ranked = sorted(by_pkg.items(), key=lambda kv: -kv[1])[:top]
    return {"total_import_s": total / 1e6,
            "top_ms": {k: round(v / 1e3, 1) for k, v in ranked}}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=60.0, help="seconds measured per run")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds between the writer's start (or the warm-up) and the window")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rates", default="0,100,1000", help="spans/s; 0 is idle")
    ap.add_argument("--startup-runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=15, help="packages listed by import time")
    ap.add_argument("--scrape-every", type=float, default=0.0,
                    help="seconds between two GET /metrics, as Prometheus scrapes (0: never)")
    ap.add_argument("--loop-profile", type=Path, default=None, metavar="DIR",
                    help="time the event loop's callbacks over each window, task by task "
                         "(tests/bench/loop_profile.py); one JSON file per daemon in DIR")
    ap.add_argument("--python", default=DAEMON_PYTHON)
    ap.add_argument("--tree", action="append", type=Path, default=None,
                    help="a checkout to run (repeatable; default: this one)")
    ap.add_argument("--out", type=Path, default=Path("tests/bench/out/pod.json"))
    args = ap.parse_args()
    trees: list[Path] = args.tree or [ROOT]
    for tree in trees:  # as an install does: a tree fresh from git archive has no .pyc
        compile_tree(tree.resolve())
    rates = [float(r) for r in args.rates.split(",") if r]
    raw: dict[str, dict[str, list[dict[str, float]]]] = {
        str(t): {} for t in trees}
    load = {"start": os.getloadavg()}
    if args.loop_profile is not None:
        args.loop_profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, OpikEmulator() as emu:
        root = Path(tmp)
        for r in range(args.startup_runs):
            for t in trees:
                res = startup(root, emu, args.python, t, f"start-{r}-{trees.index(t)}")
                raw[str(t)].setdefault("startup", []).append(res)
                print(json.dumps({"tree": str(t), "startup": res}), flush=True)
        imports = {str(t): import_times(root, emu, args.python, t, f"imp-{trees.index(t)}",
                                        args.top) for t in trees}
        print(json.dumps({"imports": imports}), flush=True)
        for r in range(args.runs):
            for rate in rates:
                for t in trees:
                    res = cost(root, emu, args.python, t, rate, args.window, args.settle,
                               f"cost-{r}-{rate:g}-{trees.index(t)}", args.scrape_every,
                               args.loop_profile)
                    raw[str(t)].setdefault(f"{rate:g}/s", []).append(res)
                    print(json.dumps({"tree": str(t), "rate": rate, **res}), flush=True)
    load["end"] = os.getloadavg()
    results: dict[str, Any] = {"window_s": args.window, "runs": args.runs,
                               "scrape_every_s": args.scrape_every,
                               "python": args.python, "loadavg": load, "imports": imports,
                               "medians": {}}
    for name, by_kind in raw.items():
        results["medians"][name] = {kind: {key: summary([run[key] for run in runs])
                                           for key in runs[0]}
                                    for kind, runs in by_kind.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**results, "raw": raw}, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--writer":
        writer_main(sys.argv[2], float(sys.argv[3]))
    else:
        main()
