"""The classic shipper on the same rows: rsyslog's imfile -> ompgsql.

A private ``rsyslogd -n`` with its own config, work directory and pid file
(stopped by its pid), reading the benchmark's spool files with imfile and
inserting each line with ompgsql. Two configurations, both reported:

- ``cheap`` (the default of the strict benchmark): each raw line inserted
  as one ``jsonb`` value into a 3-column table (``RAW_TABLE``), 1000 rows a
  transaction from an in-memory (LinkedList) action queue: the least a
  user would configure that still stores every span as queryable JSON.
- ``extract``: the same columns as the sidecar, Postgres extracting them
  from the line's JSON, one row a transaction, default queues.

Needs Debian's ``rsyslog`` and ``rsyslog-pgsql`` (``apt-get install rsyslog
rsyslog-pgsql``; the bench is run on demand, never in CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

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


def raw_table_ddl(schema: str) -> str:
    """The cheap configuration's target: an id, the arrival time, the line."""
    return (f'CREATE TABLE "{schema}".{RAW_TABLE} (id bigserial PRIMARY KEY, '
            "received_at timestamptz NOT NULL DEFAULT now(), span jsonb NOT NULL)")


def available() -> bool:
    return shutil.which("rsyslogd") is not None and Path(
        "/usr/lib/x86_64-linux-gnu/rsyslog/ompgsql.so").exists()


def _config(spool: Path, work: Path, dsn: str, schema: str, columns: str,
            cheap: bool) -> str:
    url = urlsplit(dsn)
    if cheap:
        sql, tail = f"INSERT INTO \"{schema}\".{RAW_TABLE} (span) VALUES ('", "')"
        queue = 'queue.type="LinkedList" queue.dequeueBatchSize="1000"'
    else:
        sql = (f"INSERT INTO \"{schema}\".ml_observability_spans ({columns}) "
               f"SELECT {_ROW} FROM (SELECT '")
        tail, queue = "'::jsonb AS j) s", ""
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


def run(spool: Path, root: Path, dsn: str, schema: str, columns: str, n: int,
        count: Callable[[], int], cheap: bool = False) -> dict[str, float]:
    """Ship ``n`` pre-written lines of ``spool``; rows/s until all are stored."""
    work = root / f"rsyslog-work-{schema}"
    work.mkdir()
    conf = root / f"rsyslog-{schema}.conf"
    conf.write_text(_config(spool, work, dsn, schema, columns, cheap))
    pid_file = root / f"rsyslog-{schema}.pid"
    t0 = time.perf_counter()
    proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i", str(pid_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stored, last_change, last = 0, time.perf_counter(), -1
    try:
        while stored < n:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"rsyslogd exited with {proc.returncode}: {err[-2000:]}")
            stored = count()
            if stored != last:
                last, last_change = stored, time.perf_counter()
            elif time.perf_counter() - last_change > 60:
                raise SystemExit(f"rsyslog stalled at {stored} of {n} rows")
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
    finally:
        pid = int(pid_file.read_text()) if pid_file.exists() else proc.pid
        os.kill(pid, signal.SIGTERM)
        proc.wait(30)
    return {"seconds": elapsed, "rows_per_s": n / elapsed}
