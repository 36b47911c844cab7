"""Leases: one sidecar of a fleet at a time runs a pass (retention, rollups).

Behind PgBouncer in transaction mode a session advisory lock cannot work: the
statement that releases it may run on another server connection than the one
that took it. A transaction-scoped lock would hold the whole pass in one
transaction (and its partition drops' locks on the parent table until the
end). So a pass holds a lease row instead, in ``span_sidecar_leases``
(created by ``migrate``): taken, renewed before each step and given back,
each in a short transaction of its own. A sidecar that dies holding it
frees it ``ttl_s`` later; a holder that finds it taken by another (its own
lease ran out) stops with ``LeaseLost``.
"""

from __future__ import annotations

import os
import uuid

import asyncpg

from sidecar.store.migrate import LEASES, quote_ident

# Longer than any one step of a pass (a DELETE batch, a DROP with its lock timeout).
DEFAULT_TTL_S = 300.0


class LeaseLost(RuntimeError):
    """Another sidecar holds the lease now: this one's ran out mid-pass."""


def holder_id() -> str:
    """This process, unique across a fleet (host pids repeat across pods)."""
    return f"{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lease:
    """The lease ``name`` in ``schema``, held as ``holder``."""

    def __init__(self, schema: str, name: str, holder: str | None = None,
                 ttl_s: float = DEFAULT_TTL_S) -> None:
        self.name = name
        self.holder = holder or holder_id()
        self.ttl_s = ttl_s
        self._table = f"{quote_ident(schema)}.{LEASES}"

    async def acquire(self, conn: asyncpg.Connection) -> bool:
        """Take (or renew) the lease; False when another holder has it unexpired."""
        got = await conn.fetchval(
            f"INSERT INTO {self._table} AS l (name, holder, expires_at) "
            "VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE l.expires_at < clock_timestamp() OR l.holder = excluded.holder "
            "RETURNING holder", self.name, self.holder, self.ttl_s)
        return got is not None

    async def renew(self, conn: asyncpg.Connection) -> None:
        """Extend the lease before the next step; ``LeaseLost`` when it is gone."""
        if not await self.acquire(conn):
            raise LeaseLost(f"lease {self.name!r} taken by another sidecar")

    async def release(self, conn: asyncpg.Connection) -> None:
        await conn.execute(f"DELETE FROM {self._table} WHERE name = $1 AND holder = $2",
                           self.name, self.holder)
