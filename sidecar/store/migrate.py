"""Schema migrations: ordered SQL files applied once, under an advisory lock.

Safe to run from many sidecars at once, also behind PgBouncer in transaction
mode: the lock is transaction-scoped (``pg_advisory_xact_lock``, waited for,
taken first in the one transaction that applies everything), so the first
sidecar migrates while the others wait, then each reads the versions recorded
under the lock and finds nothing left to do. The bookkeeping tables
(``span_sidecar_migrations``, and ``span_sidecar_leases`` for the fleet's
one-at-a-time passes, ``store/lease.py``) are created here, before any file. Each applied
file's checksum is recorded and compared on every run: a migration edited
after it was applied is refused, by name, rather than silently skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger("sidecar.migrate")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
TABLE = "span_sidecar_migrations"
LEASES = "span_sidecar_leases"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("sidecar.store.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    return sorted(found, key=lambda mig: mig.version)


class MigrationError(RuntimeError):
    """The database's recorded migrations disagree with the shipped files."""


def _check_applied(rows: list[asyncpg.Record]) -> set[int]:
    """The applied versions; raise when a shipped file differs from what was applied."""
    shipped = {m.version: m for m in migrations()}
    for row in rows:
        mig = shipped.get(row["version"])
        if mig is not None and mig.checksum != row["checksum"]:
            raise MigrationError(
                f"migration {mig.version:04d}_{mig.name}.sql was changed after it was applied "
                f"(checksum {row['checksum']} recorded, {mig.checksum} shipped): "
                "ship a new migration instead of editing an applied one")
    return {row["version"] for row in rows}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def migrate(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Apply the missing migrations in one transaction; return their names."""
    lock = int.from_bytes(hashlib.sha256(f"span-sidecar:{schema}".encode()).digest()[:8],
                          "big", signed=True)
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        await conn.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (version integer PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {LEASES} (name text PRIMARY KEY, holder text NOT NULL,"
            " expires_at timestamptz NOT NULL)")
        done = _check_applied(await conn.fetch(f"SELECT version, checksum FROM {TABLE}"))
        for mig in migrations():
            if mig.version in done:
                continue
            await conn.execute(mig.sql)
            await conn.execute(f"INSERT INTO {TABLE} (version, name, checksum) VALUES ($1, $2, $3)",
                               mig.version, mig.name, mig.checksum)
            applied.append(f"{mig.version:04d}_{mig.name}")
    for name in applied:
        log.info("migrate.migration.applied", schema=schema, migration=name)
    return applied


async def is_current(conn: asyncpg.Connection, schema: str) -> bool:
    """Whether every shipped migration is recorded in ``schema`` (raises
    ``MigrationError`` for an edited one)."""
    q = quote_ident(schema)
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
        f"{q}.{TABLE}", f"{q}.{LEASES}")
    if not exists:
        return False
    done = _check_applied(await conn.fetch(
        f"SELECT version, checksum FROM {quote_ident(schema)}.{TABLE}"))
    return all(m.version in done for m in migrations())
