"""The strict way to time a load into Postgres (issue 22), for bench_pipeline.

What makes a ratio to ``\\copy`` honest on a small shared machine:
``\\copy`` goes into a plain table with the same columns and indexes (the
partitioned table is ~12 % slower and flatters the daemon); every timed
load, the daemon's as much as ``\\copy``'s, starts after ``VACUUM (ANALYZE)``
and a ``CHECKPOINT``, so none pays for the previous one's dead tuples or
dirty buffers; and single runs vary by +-25 % here, so only the median of
alternating runs is quoted, with its spread.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from pathlib import Path

import asyncpg

from sidecar.store.migrate import migrate
from tests.support import PG_DSN

PLAIN_TABLE = "copy_target"


async def _settle() -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def settle() -> None:
    """``VACUUM (ANALYZE)`` of the database, then ``CHECKPOINT``: run before each timed load."""
    asyncio.run(_settle())


async def _plain_target(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await migrate(conn, schema)
        await conn.execute(f'CREATE TABLE "{schema}".{PLAIN_TABLE} '
                           f'(LIKE "{schema}".ml_observability_spans INCLUDING ALL)')
    finally:
        await conn.close()


def plain_target(schema: str) -> str:
    """A plain (unpartitioned) table with the spans table's columns and indexes."""
    asyncio.run(_plain_target(schema))
    return f'"{schema}".{PLAIN_TABLE}'


async def acount(table: str) -> int:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return 0  # the daemon has not migrated yet
    finally:
        await conn.close()


def count(table: str) -> int:
    """Rows in ``table`` (0 while it does not exist yet)."""
    return asyncio.run(acount(table))


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of a variant's runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


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


async def execute(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


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


def summarise(runs: list[dict[str, dict[str, float]]]) -> dict[str, object]:
    """Medians (with min and max) of each variant's rate and of the per-round ratios."""
    res: dict[str, object] = {}
    for variant in runs[0]:
        res[f"{variant}_rows_per_s"] = summary([r[variant]["rows_per_s"] for r in runs])
    daemons = [d for d in ("daemon", "baseline") if d in runs[0]]
    for d in daemons:
        for key in ("steady_rows_per_s", "cpu_us_per_span", "peak_rss_mb"):
            res[f"{d}_{key}"] = summary([r[d][key] for r in runs])
        for peer in [v for v in runs[0] if v not in daemons]:
            res[f"{d}_ratio_to_{peer}"] = summary(
                [r[d]["rows_per_s"] / r[peer]["rows_per_s"] for r in runs])
    return res
