"""Core benchmark: pre-written spool -> daemon -> Postgres, against `psql \\copy`.

Run on demand (not part of the test suite):

    .venv/bin/python tests/bench/bench_pipeline.py --spans 200000 --writers 4

It writes N realistic spans (~880 bytes) from several writers, copies the
same rows with `psql \\copy` (the machine's ceiling) in the same run, ships
them with rsyslog's imfile -> ompgsql (the classic shipper; when installed),
then times the daemon until every row is stored, sampling its CPU time and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import orjson
import yaml
from msgspec import Raw

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.records import SpanRecord, parse_line
from sidecar.store.migrate import migrate
from sidecar.store.table import COLUMNS, span_row
from tests.bench import rsyslog_peer
from tests.support import PG_DSN, line, span

JSONB = {"error_info", "input", "output", "metadata", "events"}
# The interpreter that runs the daemon. For memory figures, point it at a venv
# holding only the runtime dependencies (``pip install .``, as the image does):
# the test extras bring packages (rich, via opik) that structlog imports when
# they are present, ~10 MB the image never has.
DAEMON_PYTHON = os.environ.get("BENCH_DAEMON_PYTHON", sys.executable)


def daemon_cmd(config: Path) -> list[str]:
    """``span-sidecar run`` of this checkout, under ``DAEMON_PYTHON``."""
    return [DAEMON_PYTHON, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from sidecar.cli import main; sys.exit(main())",
            str(Path(__file__).resolve().parents[2]), "run", "--config", str(config)]


def write_spool(spool: Path, n: int, writers: int) -> list[bytes]:
    lines = [line(span(i)) for i in range(n)]
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


async def make_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await migrate(conn, schema)
    finally:
        await conn.close()


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def count(schema: str) -> int:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".ml_observability_spans'))
    finally:
        await conn.close()


def psql_copy(csv_path: Path, schema: str) -> float:
    asyncio.run(make_schema(schema))
    cmd = (f"\\copy \"{schema}\".ml_observability_spans ({', '.join(COLUMNS)}) "
           f"from '{csv_path}' with (format csv)")
    t0 = time.perf_counter()
    subprocess.run(["psql", PG_DSN, "-q", "-c", cmd], check=True)
    return time.perf_counter() - t0


def proc_sample(pid: int) -> tuple[float, int, int]:
    """CPU seconds, current RSS and peak RSS (bytes) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    rss = hwm = 0
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            rss = int(row.split()[1]) * 1024
        elif row.startswith("VmHWM:"):
            hwm = int(row.split()[1]) * 1024
    return cpu, rss, hwm


def run_daemon(spool: Path, state: Path, schema: str, n: int,
               extra: dict[str, object]) -> dict[str, float]:
    asyncio.run(make_schema(schema))
    cfg = {
        "spool": {"dir": str(spool), "state_dir": str(state)},
        "postgres": {"dsn": PG_DSN, "schema": schema},
        "opik": {"enabled": False}, "http": {"enabled": False},
        "health": {"enabled": False}, "logging": {"format": "json", "level": "warning"},
        **extra,
    }
    cfg_path = state.parent / f"{schema}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.Popen(daemon_cmd(cfg_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    rss_samples: list[int] = []
    t10 = None
    stored = 0
    try:
        while stored < n:
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited with {proc.returncode}")
            stored = asyncio.run(count(schema))
            rss_samples.append(proc_sample(proc.pid)[1])
            if t10 is None and stored >= n // 10:
                t10 = (time.perf_counter(), stored)
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        cpu, _, hwm = proc_sample(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    assert t10 is not None
    steady = (n - t10[1]) / (time.perf_counter() - t10[0]) if n > t10[1] else float("nan")
    return {"seconds": elapsed, "rows_per_s": n / elapsed, "steady_rows_per_s": steady,
            "cpu_s": cpu, "peak_rss_mb": hwm / 2**20,
            "median_rss_mb": sorted(rss_samples)[len(rss_samples) // 2] / 2**20}


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--small", type=int, default=50_000, help="the smaller backlog for RSS")
    ap.add_argument("--out", type=Path, default=Path("tests/bench/out/pipeline.json"))
    ap.add_argument("--no-rsyslog", action="store_true", help="skip the rsyslog peer")
    ap.add_argument("--only", choices=("large", "small"), default=None)
    ap.add_argument("--health-overhead", type=int, default=0, metavar="ROUNDS",
                    help="instead: ROUNDS alternating runs with the self-monitor off and on")
    args = ap.parse_args()
    if args.health_overhead:
        health_overhead(args)
        return
    tag = uuid.uuid4().hex[:8]
    results: dict[str, object] = {"spans": args.spans, "writers": args.writers}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size, key in ((args.spans, "large"), (args.small, "small")):
            if args.only and key != args.only:
                continue
            spool, state = root / f"spool-{key}", root / f"state-{key}"
            spool.mkdir()
            state.mkdir()
            lines = write_spool(spool, size, args.writers)
            results["bytes_per_span"] = sum(map(len, lines)) / len(lines)
            if key == "large":
                csv_path = root / "rows.csv"
                write_csv(lines, csv_path)
                secs = psql_copy(csv_path, f"bench_copy_{tag}")
                results["psql_copy_rows_per_s"] = size / secs
                asyncio.run(drop_schema(f"bench_copy_{tag}"))
                if not args.no_rsyslog and rsyslog_peer.available():
                    peer = f"bench_rsyslog_{tag}"
                    asyncio.run(make_schema(peer))
                    results["rsyslog"] = rsyslog_peer.run(
                        spool, root, PG_DSN, peer, ", ".join(COLUMNS), size,
                        lambda name=peer: asyncio.run(count(name)))  # type: ignore[misc]
                    asyncio.run(drop_schema(peer))
                    print(json.dumps({"rsyslog": results["rsyslog"]}), flush=True)
            schema = f"bench_{key}_{tag}"
            results[key] = run_daemon(spool, state, schema, size, {})
            asyncio.run(drop_schema(schema))
            print(json.dumps({key: results[key]}), flush=True)
    large = results.get("large")
    if isinstance(large, dict):
        ceiling = float(results["psql_copy_rows_per_s"])  # type: ignore[arg-type]
        results["ratio_to_psql_copy"] = large["rows_per_s"] / ceiling
        results["steady_ratio_to_psql_copy"] = large["steady_rows_per_s"] / ceiling
        rsyslog = results.get("rsyslog")
        if isinstance(rsyslog, dict):
            results["ratio_to_rsyslog"] = large["rows_per_s"] / rsyslog["rows_per_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
