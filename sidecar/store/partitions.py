"""Day partitions of ``ml_observability_spans``: created ahead, dropped when expired.

A day partition is ``ml_observability_spans_pYYYYMMDD`` and holds the spans
that started on that UTC day; ``ml_observability_spans_default`` holds
whatever no day partition covers. Expiring spans older than a cutoff drops
every day partition that ends at or before it (a catalog operation, no row
deletes) and deletes the older rows of the default partition and of the day
the cutoff falls in, in batches, one short transaction each. A caller that
holds the fleet's retention lease (``store/lease.py``) passes ``renew``,
called before each step: nothing here spans more than one step's transaction.
Pending span updates past the same TTL go too (``expire_pending_updates``).

DDL cannot take bind parameters: partition names and bounds are formatted
from ``date`` values computed here, never from input.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import asyncpg
import structlog

from sidecar.store.migrate import quote_ident
from sidecar.store.table import TABLE

log = structlog.get_logger("sidecar.partitions")

DEFAULT_PARTITION = f"{TABLE}_default"
# Span updates waiting for their span's row (migration 0006). Named here, in
# store/, because retention expires it too; the sink that fills and drains it
# (sinks/postgres_updates.py) imports the name, as sinks/ imports store/.
PENDING_UPDATES = "span_sidecar_pending_updates"
_DAY_NAME = re.compile(rf"^{TABLE}_p(\d{{8}})$")
# DDL on the parent waits for in-flight COPYs; past this it gives up until the
# next run rather than queue every writer behind it.
LOCK_TIMEOUT = "2s"
Renew = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


def lock_key(purpose: str, schema: str) -> int:
    """A stable 64-bit advisory lock key for ``purpose`` in ``schema``."""
    digest = hashlib.sha256(f"span-sidecar:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


@dataclass(frozen=True, slots=True)
class Expiry:
    """What an expiry removed (or, dry, would remove)."""

    cutoff: datetime
    dropped: tuple[tuple[str, int], ...] = ()  # (partition, rows) dropped whole
    deleted: tuple[tuple[str, int], ...] = ()  # (partition, rows) deleted in batches
    dry_run: bool = False
    pending_updates: int = 0  # pending span updates removed (not counted in ``rows``)
    pending_cutoff: datetime | None = None  # they were received before this

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.dropped) + sum(n for _, n in self.deleted)


@dataclass(slots=True)
class _Plan:
    drop: list[str] = field(default_factory=list)
    trim: list[str] = field(default_factory=list)


async def day_partitions(conn: asyncpg.Connection, schema: str) -> dict[date, str]:
    """The day partitions that exist, by day."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE n.nspname = $1 AND p.relname = $2", schema, TABLE)
    out: dict[date, str] = {}
    for r in rows:
        m = _DAY_NAME.match(r["relname"])
        if m:
            out[datetime.strptime(m.group(1), "%Y%m%d").date()] = r["relname"]
    return out


async def is_partitioned(conn: asyncpg.Connection, schema: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2", schema, TABLE))


async def ensure_partitions(conn: asyncpg.Connection, schema: str, today: date,
                            ahead_days: int) -> list[str]:
    """Create the day partitions from yesterday to ``today + ahead_days``; return new names.

    Serialised across a fleet by a transaction advisory lock, so two sidecars
    never race to create the same day.
    """
    created = []
    existing = await day_partitions(conn, schema)
    for offset in range(-1, ahead_days + 1):
        day = today + timedelta(days=offset)
        if day not in existing and await _create_day(conn, schema, day):
            created.append(partition_name(day))
    for name in created:
        log.info("retention.partition.created", schema=schema, partition=name)
    return created


async def _create_day(conn: asyncpg.Connection, schema: str, day: date) -> bool:
    """Create one day partition, moving that day's rows out of the default partition.

    Built as a plain table and attached (``ATTACH`` takes a weaker lock on the
    parent than ``CREATE TABLE ... PARTITION OF``, so ingest keeps going).
    """
    q = quote_ident(schema)
    name, lo, hi = partition_name(day), day_start(day), day_start(day + timedelta(days=1))
    parent, part = f"{q}.{TABLE}", f"{q}.{quote_ident(name)}"
    bounds = f"FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key("partitions", schema))
        if day in await day_partitions(conn, schema):
            return False
        await conn.execute(f"CREATE TABLE {part} (LIKE {parent} INCLUDING DEFAULTS "
                           "INCLUDING CONSTRAINTS)")
        moved = await conn.execute(
            f"WITH moved AS (DELETE FROM {q}.{quote_ident(DEFAULT_PARTITION)} "
            "WHERE start_time >= $1 AND start_time < $2 RETURNING *) "
            f"INSERT INTO {part} SELECT * FROM moved", lo, hi)
        # The constraint lets ATTACH skip scanning the new table.
        check = f"start_time >= '{lo.isoformat()}' AND start_time < '{hi.isoformat()}'"
        await conn.execute(f"ALTER TABLE {part} ADD CONSTRAINT bounds CHECK ({check})")
        await conn.execute(f"ALTER TABLE {parent} ATTACH PARTITION {part} FOR VALUES {bounds}")
        await conn.execute(f"ALTER TABLE {part} DROP CONSTRAINT bounds")
    rows = int(moved.split()[-1])
    if rows:
        log.info("retention.default_rows.moved", schema=schema, partition=name, rows=rows)
    return True


async def expire(conn: asyncpg.Connection, schema: str, cutoff: datetime, batch_rows: int,
                 dry_run: bool, trim_partial_day: bool = True,
                 renew: Renew = _nothing) -> Expiry:
    """Remove (or with ``dry_run`` count) the spans that started before ``cutoff``;
    ``renew`` is awaited before each drop and each batch of deletes."""
    plan = await _plan(conn, schema, cutoff, trim_partial_day)
    q = quote_ident(schema)
    dropped, deleted = [], []
    for name in plan.drop:
        rows = int(await conn.fetchval(f"SELECT count(*) FROM {q}.{quote_ident(name)}"))
        if not dry_run:
            await renew()
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                await conn.execute(f"DROP TABLE {q}.{quote_ident(name)}")
            log.info("retention.partition.dropped", schema=schema, partition=name, rows=rows)
        dropped.append((name, rows))
    for name in plan.trim:
        table = f"{q}.{quote_ident(name)}"
        rows = (await _count_before(conn, table, cutoff) if dry_run
                else await _delete_before(conn, table, cutoff, batch_rows, renew))
        if rows:
            deleted.append((name, rows))
            if not dry_run:
                log.info("retention.rows.deleted", schema=schema, partition=name, rows=rows)
    return Expiry(cutoff, tuple(dropped), tuple(deleted), dry_run)


async def _plan(conn: asyncpg.Connection, schema: str, cutoff: datetime,
                trim_partial_day: bool) -> _Plan:
    plan = _Plan()
    if not await is_partitioned(conn, schema):
        plan.trim.append(TABLE)  # not migrated yet: rows only
        return plan
    for day, name in sorted((await day_partitions(conn, schema)).items()):
        if day_start(day + timedelta(days=1)) <= cutoff:
            plan.drop.append(name)
        elif day_start(day) < cutoff and trim_partial_day:
            plan.trim.append(name)
    plan.trim.append(DEFAULT_PARTITION)
    return plan


async def _count_before(conn: asyncpg.Connection, table: str, cutoff: datetime) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE start_time < $1",
                                   cutoff))


async def _delete_before(conn: asyncpg.Connection, table: str, cutoff: datetime,
                         batch_rows: int, renew: Renew) -> int:
    return await _delete_in_batches(
        conn, f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM {table} WHERE start_time < $1 LIMIT $2))", cutoff, batch_rows, renew)


async def _delete_in_batches(conn: asyncpg.Connection, statement: str, cutoff: datetime,
                             batch_rows: int, renew: Renew) -> int:
    """Run ``statement`` (a DELETE of at most $2 rows older than $1) until it
    deletes fewer than ``batch_rows``: each batch its own short transaction,
    ``renew`` awaited before each. Returns how many rows went."""
    total = 0
    while True:
        await renew()
        n = int((await conn.execute(statement, cutoff, batch_rows)).split()[-1])
        total += n
        if n < batch_rows:
            return total


def pending_updates_cutoff(cutoff: datetime, trim_partial_day: bool = True) -> datetime:
    """Pending updates received before this are expired with spans started before ``cutoff``.

    Without ``trim_partial_day`` the day the cutoff falls in is kept whole, so
    a span may still arrive into it: its updates are kept until that day goes.
    """
    return cutoff if trim_partial_day else day_start(cutoff.date())


async def expire_pending_updates(conn: asyncpg.Connection, schema: str, before: datetime,
                                 batch_rows: int, dry_run: bool,
                                 renew: Renew = _nothing) -> int:
    """Remove (or with ``dry_run`` count) the pending span updates received before
    ``before``; ``renew`` is awaited before each batch. Returns how many.

    An update is written after its span started, so the span one received
    before the TTL's cutoff waits for started before it too: were that span
    stored, the TTL would remove it. Such an update can never show anywhere,
    and without this the table would keep the updates of every span that
    never arrives (its create quarantined, its agent dead) forever.
    A schema migrated before 0006 has no such table: nothing to remove.
    """
    table = f"{quote_ident(schema)}.{PENDING_UPDATES}"
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        return 0
    if dry_run:
        return int(await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE received_at < $1", before))
    return await _delete_in_batches(
        conn, f"DELETE FROM {table} WHERE seq = ANY(ARRAY("
        f"SELECT seq FROM {table} WHERE received_at < $1 ORDER BY seq LIMIT $2))",
        before, batch_rows, renew)
