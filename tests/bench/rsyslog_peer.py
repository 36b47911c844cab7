"""The classic shipper on the same rows: rsyslog's imfile -> ompgsql.

A private ``rsyslogd -n`` with its own config, work directory and pid file
(stopped by its pid), reading the benchmark's spool files with imfile and
inserting each line with ompgsql. Two configurations, both reported:

- ``cheap`` (the default of the strict benchmark): each raw line inserted
  as one ``jsonb`` value into a 3-column table (``RAW_TABLE``), 1000 rows a
  transaction from an in-memory (LinkedList) action queue with two workers:
  the least a user would configure that still stores every span as
  queryable JSON, tuned as far as rsyslog honestly goes (issue 22).
- ``extract``: the same columns as the sidecar, Postgres extracting them
  from the line's JSON, one row a transaction, default queues.

What bounds ``cheap`` (measured with strace and the backends' CPU, issue 22):
Debian's ompgsql (8.2302) does batch, ``BEGIN``, one ``INSERT`` per line as
a synchronous ``PQexec`` (one round trip each), ``COMMIT`` per dequeued
batch, so the cost is one statement a line: ~28 us of backend CPU (parse,
plan, jsonb input, heap and index insert) plus ~14 us of rsyslog's. The
action queue's ``size`` (1000 by default) must exceed the batch, or the
batch in flight holds the queue and the batches halve (~500 rows); with one
worker, rsyslog and its backend take turns, so a second worker (a second
connection) is what lets both cores work: up to ~41k rows/s by CPU on an
idle machine, against ~28k for one worker. When other work already holds
the cores, two workers cost ~20 % more CPU a row (rsyslog ~17 us, backends
~32 us) and gain little. Input (imfile, inotify by default: ~4 us a line)
and the main queue are never the bottleneck: every batch is a full one.

Rows are counted on one kept connection: ``max(id)`` of the raw table (an
index probe) until it reaches ``n``, then ``count(*)`` to confirm. A
``count(*)`` of the growing jsonb table every 0.2 s cost ~5 us of backend
CPU per row, a sixth of the peer's own backend cost, on the same 2 cores.

Needs Debian's ``rsyslog`` and ``rsyslog-pgsql`` (``apt-get install rsyslog
rsyslog-pgsql``; the bench is run on demand, never in CI). Run alone:

    .venv/bin/python tests/bench/rsyslog_peer.py --spans 200000 --runs 3 --workers 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

_ROW = (
    "(j->>'id')::uuid, (j->>'trace_id')::uuid, (j->>'parent_span_id')::uuid, j->>'name', "
    "coalesce(j->>'type', 'general'), j->>'agent_name', (j->>'agent_tier')::int, "
    "coalesce(j->>'project_name', 'Default Project'), (j->>'start_time')::timestamptz, "
    "(j->>'end_time')::timestamptz, "
    "extract(epoch from (j->>'end_time')::timestamptz - (j->>'start_time')::timestamptz) * 1000, "
    "CASE WHEN j ? 'error_info' THEN 'error' ELSE 'ok' END, j->>'model', j->>'provider', "
    "(j->'usage'->>'prompt_tokens')::int, (j->'usage'->>'completion_tokens')::int, "
    "(j->'usage'->>'total_tokens')::int, (j->>'total_estimated_cost')::float8, "
    "j->'error_info', j->'input', j->'output', j->'metadata', j->'events', "
    "ARRAY(SELECT jsonb_array_elements_text(coalesce(j->'tags', '[]'))), "
    "(j->>'last_updated_at')::timestamptz"
)


RAW_TABLE = "rsyslog_raw_spans"
# ``cheap``: rows a transaction (the dequeue batch), the action queue's size
# (room for the batch in flight and the next one) and its workers (connections).
BATCH, QUEUE_SIZE, WORKERS = 1000, 10_000, 2
POLL = 0.2


def raw_table_ddl(schema: str) -> str:
    """The cheap configuration's target: an id, the arrival time, the line."""
    return (f'CREATE TABLE "{schema}".{RAW_TABLE} (id bigserial PRIMARY KEY, '
            "received_at timestamptz NOT NULL DEFAULT now(), span jsonb NOT NULL)")


def available() -> bool:
    return shutil.which("rsyslogd") is not None and Path(
        "/usr/lib/x86_64-linux-gnu/rsyslog/ompgsql.so").exists()


def _config(spool: Path, work: Path, dsn: str, schema: str, columns: str,
            cheap: bool, workers: int = WORKERS) -> str:
    url = urlsplit(dsn)
    if cheap:
        sql, tail = f"INSERT INTO \"{schema}\".{RAW_TABLE} (span) VALUES ('", "')"
        queue = (f'queue.type="LinkedList" queue.dequeueBatchSize="{BATCH}" '
                 f'queue.size="{QUEUE_SIZE}" queue.workerThreads="{workers}"')
    else:
        sql = (f"INSERT INTO \"{schema}\".ml_observability_spans ({columns}) "
               f"SELECT {_ROW} FROM (SELECT '")
        tail, queue = "'::jsonb AS j) s", ""
    # option.stdsql: quotes doubled, backslashes kept (standard_conforming_strings,
    # which ompgsql sets); option.sql would double the backslashes of JSON escapes.
    return f"""
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imfile")
module(load="ompgsql")
template(name="span_row" type="list" option.stdsql="on") {{
  constant(value="{sql.replace('"', chr(92) + '"')}")
  property(name="msg")
  constant(value="{tail}")
}}
input(type="imfile" file="{spool}/*.jsonl" tag="spool" ruleset="to_pg")
ruleset(name="to_pg") {{
  action(type="ompgsql" server="{url.hostname or '127.0.0.1'}" port="{url.port or 5432}"
         db="{url.path.lstrip('/')}" user="{url.username or 'postgres'}" pass=""
         template="span_row" {queue})
}}
"""


def _cpu(pid: int) -> float:
    """utime + stime of a local process in seconds (0 when it is not readable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


async def _await_rows(dsn: str, table: str, n: int, cheap: bool, workers: int,
                      proc: subprocess.Popen[bytes], t0: float) -> dict[str, float]:
    """Poll until ``n`` rows are stored; elapsed time and the backends' CPU."""
    conn = await asyncpg.connect(dsn)
    try:
        backends: set[int] = set()
        stored, last, last_change = 0, -1, time.perf_counter()
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"rsyslogd exited with {proc.returncode}: {err[-2000:]}")
            if cheap:  # an index probe; count(*) only to confirm
                stored = await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {table}")
                if stored >= n:
                    stored = await conn.fetchval(f"SELECT count(*) FROM {table}")
            else:
                stored = await conn.fetchval(f"SELECT count(*) FROM {table}")
            if stored >= n:
                elapsed = time.perf_counter() - t0
                break
            if len(backends) < (workers if cheap else 1):
                backends |= set(await conn.fetchval(
                    "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND strpos(query, $1) > 0", table) or ())
            if stored != last:
                last, last_change = stored, time.perf_counter()
            elif time.perf_counter() - last_change > 60:
                raise SystemExit(f"rsyslog stalled at {stored} of {n} rows")
            await asyncio.sleep(POLL)
        return {"seconds": elapsed, "backend_cpu": sum(map(_cpu, backends))}
    finally:
        await conn.close()


def run(spool: Path, root: Path, dsn: str, schema: str, columns: str, n: int,
        cheap: bool = False, workers: int = WORKERS) -> dict[str, float]:
    """Ship ``n`` pre-written lines of ``spool``; rows/s until all are stored.

    Also rsyslogd's CPU and its Postgres backends' (when local) per row, in us.
    """
    work = root / f"rsyslog-work-{schema}"
    work.mkdir()
    conf = root / f"rsyslog-{schema}.conf"
    conf.write_text(_config(spool, work, dsn, schema, columns, cheap, workers))
    pid_file = root / f"rsyslog-{schema}.pid"
    table = f'"{schema}".' + (RAW_TABLE if cheap else "ml_observability_spans")
    t0 = time.perf_counter()
    proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(pid_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        done = asyncio.run(_await_rows(dsn, table, n, cheap, workers, proc, t0))
        rsyslog_cpu = _cpu(proc.pid)
    finally:
        pid = int(pid_file.read_text()) if pid_file.exists() else proc.pid
        os.kill(pid, signal.SIGTERM)
        proc.wait(30)
    return {"seconds": done["seconds"], "rows_per_s": n / done["seconds"],
            "rsyslog_cpu_us_per_row": rsyslog_cpu / n * 1e6,
            "backend_cpu_us_per_row": done["backend_cpu"] / n * 1e6}


def main() -> None:
    """The cheap configuration alone, alternating worker counts; medians and ranges."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.bench.bench_pipeline import make_lines, write_spool
    from tests.bench.strict_load import drop_schema, execute, settle
    from tests.support import PG_DSN

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[WORKERS])
    args = ap.parse_args()
    lines = make_lines(args.spans)
    results: dict[int, list[dict[str, float]]] = {w: [] for w in args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(args.runs):
            for w in args.workers:
                schema = f"bench_rsyslog_alone_{os.getpid()}_{r}_{w}"
                spool = root / schema
                spool.mkdir()
                write_spool(spool, len(lines), args.writers, lines)
                asyncio.run(execute(f'CREATE SCHEMA "{schema}"'))
                asyncio.run(execute(raw_table_ddl(schema)))
                settle()
                try:
                    out = run(spool, root, PG_DSN, schema, "", len(lines), cheap=True, workers=w)
                finally:
                    asyncio.run(drop_schema(schema))
                out["load_1min"] = os.getloadavg()[0]
                results[w].append(out)
                print(json.dumps({"round": r, "workers": w, **out}), flush=True)
    for w, runs in results.items():
        summary = {k: {"median": statistics.median(x[k] for x in runs),
                       "min": min(x[k] for x in runs), "max": max(x[k] for x in runs)}
                   for k in ("rows_per_s", "rsyslog_cpu_us_per_row", "backend_cpu_us_per_row")}
        print(json.dumps({"workers": w, **summary}, indent=2))


if __name__ == "__main__":
    main()
