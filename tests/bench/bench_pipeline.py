"""Core benchmark: pre-written spool -> daemon -> Postgres, against `psql \\copy`.

Run on demand (not part of the test suite):

    .venv/bin/python tests/bench/bench_pipeline.py --spans 200000 --runs 3

It writes N spans as agents write them (tests/bench/agent_spans.py, ~835
bytes) from several writers, then, in each of ``--runs`` rounds, one after
the other: `psql \\copy` of the same rows (the machine's ceiling), rsyslog's
imfile -> ompgsql in its cheapest useful and in its column-extracting
configuration (tests/bench/rsyslog_peer.py; when installed), and the daemon
until every row is stored, sampling its CPU time and RSS from /proc. The
medians of the rounds are printed, with min and max.

Strict by default (issue 22, tests/bench/strict_load.py): `\\copy` into a
plain table `LIKE ml_observability_spans INCLUDING ALL`, `VACUUM (ANALYZE)`
and `CHECKPOINT` before every timed load, the daemon's clock from the start
of `span-sidecar run` with the schema not yet created (imports, connect and
migrate included; its modules byte-compiled first, as an install does). The
earlier, looser variants stay as options (``--partitioned-copy``,
``--no-settle``, ``--premigrate``, ``--uniform-spans``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import yaml
from msgspec import Raw

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.records import SpanRecord, parse_line
from sidecar.store.table import COLUMNS, span_row
from tests.bench import rsyslog_peer, strict_load
from tests.bench.agent_spans import agent_span

# re-exported: the other benches take these from here
from tests.bench.strict_load import drop_schema as drop_schema
from tests.bench.strict_load import make_schema as make_schema
from tests.bench.strict_load import proc_sample as proc_sample
from tests.support import PG_DSN, line, span

JSONB = {"error_info", "input", "output", "metadata", "events"}
# The interpreter that runs the daemon. For memory figures, point it at a venv
# holding only the runtime dependencies (``pip install .``, as the image does):
# the test extras bring packages (rich, via opik) that structlog imports when
# they are present, ~10 MB the image never has.
DAEMON_PYTHON = os.environ.get("BENCH_DAEMON_PYTHON", sys.executable)


def daemon_cmd(config: Path, tree: Path | None = None) -> list[str]:
    """``span-sidecar run`` of this checkout (or of ``tree``, a directory holding
    a ``sidecar/``), under ``DAEMON_PYTHON``, its modules compiled first."""
    root = tree or Path(__file__).resolve().parents[2]
    compile_tree(root)
    return [DAEMON_PYTHON, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from sidecar.cli import main; sys.exit(main())",
            str(root), "run", "--config", str(config)]


_COMPILED: set[Path] = set()


def compile_tree(root: Path) -> None:
    """Byte-compile ``root/sidecar`` once, as an install does (pip and the
    image's ``compileall``): a daemon run from a source tree where
    ``PYTHONDONTWRITEBYTECODE`` is set compiles every module of its own at
    each start, ~0.1 s of CPU that no installed daemon pays."""
    if root in _COMPILED:
        return
    subprocess.run([DAEMON_PYTHON, "-m", "compileall", "-q", str(root / "sidecar")], check=True,
                   stdout=subprocess.DEVNULL)
    _COMPILED.add(root)


def make_lines(n: int, uniform: bool = False) -> list[bytes]:
    """The spans to ship: as agents write them, or ``tests.support.span`` repeated."""
    if uniform:
        return [line(span(i)) for i in range(n)]
    rng = random.Random(22)
    return [line(agent_span(i, rng)) for i in range(n)]


def write_spool(spool: Path, n: int, writers: int, lines: list[bytes] | None = None) -> list[bytes]:
    lines = lines if lines is not None else make_lines(n, uniform=True)
    per = n // writers
    for w in range(writers):
        chunk = lines[w * per:(w + 1) * per if w < writers - 1 else n]
        (spool / f"bench{w}-host-{w}-0.jsonl").write_bytes(b"".join(chunk))
    return lines


def _csv_value(column: str, v: object) -> str:
    if v is None:
        return ""
    if column in JSONB:
        return bytes(v).decode() if isinstance(v, bytes | Raw) else orjson.dumps(v).decode()
    if isinstance(v, list):
        return "{" + ",".join('"' + s.replace('"', '\\"') + '"' for s in v) + "}"
    if hasattr(v, "isoformat"):
        return str(v.isoformat())
    return str(v)


def write_csv(lines: list[bytes], path: Path) -> None:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        for raw in lines:
            rec = parse_line(raw.rstrip(b"\n"))
            assert isinstance(rec, SpanRecord)
            row = span_row(rec, "Default Project")
            out.writerow([_csv_value(c, v) for c, v in zip(COLUMNS, row, strict=True)])


async def count(schema: str) -> int:
    """Rows in the spans table of ``schema`` (0 before it exists)."""
    return await strict_load.acount(f'"{schema}".ml_observability_spans')


def psql_copy(csv_path: Path, schema: str, plain: bool = False, settle: bool = False) -> float:
    if plain:
        target = strict_load.plain_target(schema)
    else:
        asyncio.run(make_schema(schema))
        target = f'"{schema}".ml_observability_spans'
    if settle:
        strict_load.settle()
    cmd = f"\\copy {target} ({', '.join(COLUMNS)}) from '{csv_path}' with (format csv)"
    t0 = time.perf_counter()
    subprocess.run(["psql", PG_DSN, "-q", "-c", cmd], check=True)
    return time.perf_counter() - t0


def run_daemon(spool: Path, state: Path, schema: str, n: int, extra: dict[str, object],
               premigrate: bool = True, settle: bool = False,
               tree: Path | None = None) -> dict[str, float]:
    if premigrate:
        asyncio.run(make_schema(schema))
    else:  # the daemon migrates: its start-up is timed whole
        asyncio.run(drop_schema(schema))
    cfg = {
        "spool": {"dir": str(spool), "state_dir": str(state)},
        "postgres": {"dsn": PG_DSN, "schema": schema},
        "opik": {"enabled": False}, "http": {"enabled": False},
        "health": {"enabled": False}, "logging": {"format": "json", "level": "warning"},
        **extra,
    }
    cfg_path = state.parent / f"{schema}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    if settle:
        strict_load.settle()
    # Progress is read from the daemon's checkpoint (saved after each batch
    # is committed), not by count(*) on the growing table every 0.2 s on a
    # new connection: that cost the daemon's Postgres ~5 us of CPU a row on
    # the same two cores. One count(*) at the end confirms every row.
    total = sum(p.stat().st_size for p in spool.iterdir() if p.is_file())
    checkpoint = state / "checkpoints" / "postgres.json"
    t0 = time.perf_counter()
    proc = subprocess.Popen(daemon_cmd(cfg_path, tree), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    rss_samples: list[int] = []
    t10: tuple[float, int] | None = None
    acked = 0
    try:
        while acked < total:
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited with {proc.returncode}")
            acked = acked_bytes(checkpoint)
            rss_samples.append(proc_sample(proc.pid)[1])
            if t10 is None and acked >= total // 10:
                t10 = (time.perf_counter(), acked)
            time.sleep(0.05)
        done = time.perf_counter()
        elapsed = done - t0
        cpu, _, hwm = proc_sample(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    stored = asyncio.run(count(schema))
    if stored != n:
        raise SystemExit(f"the checkpoint passed every byte with {stored} of {n} rows stored")
    assert t10 is not None
    rest = (total - t10[1]) / total * n
    steady = rest / (done - t10[0]) if done > t10[0] else float("nan")
    return {"seconds": elapsed, "rows_per_s": n / elapsed, "steady_rows_per_s": steady,
            "cpu_s": cpu, "cpu_us_per_span": cpu / n * 1e6, "peak_rss_mb": hwm / 2**20,
            "median_rss_mb": sorted(rss_samples)[len(rss_samples) // 2] / 2**20}


def acked_bytes(checkpoint: Path) -> int:
    """Spool bytes the sink has acknowledged, from its checkpoint file (0 before
    the first one; a file caught mid-replace is read again next time)."""
    try:
        data = json.loads(checkpoint.read_bytes())
    except (FileNotFoundError, ValueError):
        return 0
    return sum(int(f["offset"]) for f in data.get("files", []))


def health_overhead(args: argparse.Namespace) -> None:
    """Throughput with the self-monitor off vs on (health span every second,
    HTTP server up): medians of alternating runs on the same spool."""
    rates: dict[str, list[float]] = {"off": [], "on": []}
    variants: dict[str, dict[str, object]] = {
        "off": {"health": {"enabled": False}, "http": {"enabled": False}},
        "on": {"health": {"enabled": True, "interval_s": 1.0},
               "http": {"enabled": True, "listen": "127.0.0.1:0"}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(args.health_overhead):
            for name, extra in variants.items():
                spool, state = root / f"spool-{name}-{r}", root / f"state-{name}-{r}"
                spool.mkdir()
                state.mkdir()
                write_spool(spool, args.spans, args.writers)
                schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
                # health spans are rows too: wait for the agents' spans only
                result = run_daemon(spool, state, schema, args.spans, extra)
                asyncio.run(drop_schema(schema))
                rates[name].append(result["rows_per_s"])
                print(json.dumps({name: result}), flush=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    out = {"rows_per_s": rates, "median": med, "overhead": 1 - med["on"] / med["off"]}
    print(json.dumps(out, indent=2))


def rsyslog_round(args: argparse.Namespace, root: Path, lines: list[bytes], name: str,
                  tag: str) -> dict[str, float]:
    """One rsyslog run: ``cheap`` (line as jsonb, 1000 a transaction, 2 workers) or ``extract``."""
    cheap = name == "cheap"
    spool = root / f"spool-rsyslog-{name}-{tag}"
    spool.mkdir()
    write_spool(spool, len(lines), args.writers, lines)
    peer = f"bench_rsyslog_{name}_{tag}"
    asyncio.run(make_schema(peer))
    if cheap:
        asyncio.run(strict_load.execute(rsyslog_peer.raw_table_ddl(peer)))
    if not args.no_settle:
        strict_load.settle()
    try:
        return rsyslog_peer.run(spool, root, PG_DSN, peer, ", ".join(COLUMNS), len(lines),
                                cheap=cheap)
    finally:
        asyncio.run(drop_schema(peer))


def one_round(args: argparse.Namespace, root: Path, lines: list[bytes], csv_path: Path,
              r: int) -> dict[str, dict[str, float]]:
    """``\\copy``, the rsyslog configurations, then the daemon, on the same rows."""
    tag = f"{uuid.uuid4().hex[:8]}_{r}"
    n = len(lines)
    out: dict[str, dict[str, float]] = {}
    secs = psql_copy(csv_path, f"bench_copy_{tag}", plain=not args.partitioned_copy,
                     settle=not args.no_settle)
    asyncio.run(drop_schema(f"bench_copy_{tag}"))
    out["psql_copy"] = {"seconds": secs, "rows_per_s": n / secs}
    print(json.dumps({"round": r, "psql_copy": out["psql_copy"]}), flush=True)
    for name in args.rsyslog:
        out[f"rsyslog_{name}"] = rsyslog_round(args, root, lines, name, tag)
        print(json.dumps({"round": r, f"rsyslog_{name}": out[f"rsyslog_{name}"]}), flush=True)
    daemons = [("daemon", None)]
    if args.baseline is not None:  # the two in turns: this tree first in even rounds
        daemons.append(("baseline", args.baseline))
        if r % 2:
            daemons.reverse()
    for name, tree in daemons:
        spool, state = root / f"spool-{name}-{tag}", root / f"state-{name}-{tag}"
        spool.mkdir()
        state.mkdir()
        write_spool(spool, n, args.writers, lines)
        schema = f"bench_large_{name}_{tag}"
        out[name] = run_daemon(spool, state, schema, n, {}, premigrate=args.premigrate,
                               settle=not args.no_settle, tree=tree)
        asyncio.run(drop_schema(schema))
        print(json.dumps({"round": r, name: out[name]}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3, help="alternating rounds; medians printed")
    ap.add_argument("--small", type=int, default=50_000,
                    help="after the rounds, one daemon run of this smaller backlog (RSS); 0: none")
    ap.add_argument("--out", type=Path, default=Path("tests/bench/out/pipeline.json"))
    ap.add_argument("--rsyslog", nargs="*", choices=("cheap", "extract"),
                    default=["cheap", "extract"], help="rsyslog configurations to run (none: skip)")
    ap.add_argument("--no-rsyslog", action="store_true", help="skip the rsyslog peer")
    ap.add_argument("--partitioned-copy", action="store_true",
                    help="loose: \\copy into the partitioned spans table, not a plain LIKE copy")
    ap.add_argument("--no-settle", action="store_true",
                    help="loose: no VACUUM (ANALYZE) + CHECKPOINT before each timed load")
    ap.add_argument("--premigrate", action="store_true",
                    help="loose: migrate before starting the daemon (start-up not timed whole)")
    ap.add_argument("--uniform-spans", action="store_true",
                    help="loose: tests.support.span repeated instead of agents' mix")
    ap.add_argument("--baseline", type=Path, default=None, metavar="TREE",
                    help="also run the daemon of TREE (a directory holding a sidecar/, "
                         "e.g. a `git archive` of an earlier commit) in each round, in turns")
    ap.add_argument("--health-overhead", type=int, default=0, metavar="ROUNDS",
                    help="instead: ROUNDS alternating runs with the self-monitor off and on")
    args = ap.parse_args()
    if args.health_overhead:
        health_overhead(args)
        return
    if args.no_rsyslog or not rsyslog_peer.available():
        args.rsyslog = []
    results: dict[str, object] = {"spans": args.spans, "writers": args.writers, "runs": args.runs,
                                  "strict": {k: not getattr(args, k) for k in (
                                      "partitioned_copy", "no_settle", "premigrate",
                                      "uniform_spans")}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = make_lines(args.spans, args.uniform_spans)
        results["bytes_per_span"] = sum(map(len, lines)) / len(lines)
        csv_path = root / "rows.csv"
        write_csv(lines, csv_path)
        runs = [one_round(args, root, lines, csv_path, r) for r in range(args.runs)]
        results["rounds"] = runs
        results["median"] = strict_load.summarise(runs)
        small = min(args.small, len(lines))  # no more spans than were made
        if small:
            spool, state = root / "spool-small", root / "state-small"
            spool.mkdir()
            state.mkdir()
            write_spool(spool, small, args.writers, lines[:small])
            schema = f"bench_small_{uuid.uuid4().hex[:8]}"
            results["small"] = run_daemon(spool, state, schema, small, {},
                                          premigrate=args.premigrate, settle=not args.no_settle)
            asyncio.run(drop_schema(schema))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["median"], indent=2))


if __name__ == "__main__":
    main()
