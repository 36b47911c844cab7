"""The Postgres sink and migrations against the real server."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from msgspec import Raw
from msgspec.structs import replace

from sidecar.config.settings import PostgresSettings
from sidecar.records import SpanRecord, parse_line
from sidecar.sinks.base import Delivered, PartlyRejected, Retry
from sidecar.sinks.postgres import PostgresSink
from sidecar.store.migrate import MigrationError, is_current, migrate, migrations
from tests.support import PG_DSN, line, span


def records(n: int, **fields: Any) -> list[SpanRecord]:
    out = []
    for i in range(n):
        rec = parse_line(line(span(i, **fields)).rstrip(b"\n"))
        assert isinstance(rec, SpanRecord)
        out.append(rec)
    return out


async def count(schema: str) -> int:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".ml_observability_spans'))
    finally:
        await conn.close()


def sink(schema: str, **kw: Any) -> PostgresSink:
    return PostgresSink(PostgresSettings(dsn=PG_DSN, schema=schema, **kw), "Default Project")


async def test_redelivery_is_a_no_op(pg_schema: str) -> None:
    """Sending the same batch twice (a crash between COPY and checkpoint) stores it once."""
    batch = records(300)
    async with sink(pg_schema) as s:
        assert await s.send(batch) == Delivered()
        assert await s.send(batch[100:] + records(50)) == Delivered()
    assert await count(pg_schema) == 350


async def test_data_error_is_isolated_and_the_rest_stored(pg_schema: str) -> None:
    """One record Postgres refuses is reported by index with the server's reason."""
    batch = records(40)
    batch[23] = replace(batch[23], input=Raw(b'{"n": 1e999999}'))  # beyond jsonb's numeric
    async with sink(pg_schema) as s:
        outcome = await s.send(batch)
    assert isinstance(outcome, PartlyRejected)
    assert list(outcome.reasons) == [23]
    assert "numeric" in outcome.reasons[23]
    assert await count(pg_schema) == 39


async def test_nul_is_stored_as_the_replacement_character_and_counted(pg_schema: str) -> None:
    """U+0000, which text and jsonb refuse, becomes U+FFFD in every text and jsonb
    column (an escaped backslash before "u0000" is not a NUL and stays)."""
    batch = records(6)
    batch[1] = replace(batch[1], name="nul\x00byte", tags=["a\x00", "b"])
    batch[2] = replace(batch[2], input=Raw(b'{"a": "x\\u0000y", "b": "\\\\u0000"}'))
    batch[3] = replace(batch[3], metadata=Raw(b'{"\\u0000": 1}'), model="m\x00\x00")
    async with sink(pg_schema) as s:
        assert await s.send(batch[:3]) == Delivered()
        # The streamed COPY does not search for NULs: Postgres refuses the
        # batch, and send(), as the pipeline does next, stores it.
        assert isinstance(await s.send_stream(_aiter(batch[3:])), Retry)
        assert await s.send(batch[3:]) == Delivered()
        assert s.nul_replaced_total == 6
    conn = await asyncpg.connect(PG_DSN)
    try:
        rows = {r["span_id"]: r for r in await conn.fetch(
            f'SELECT span_id, name, tags, input::text, metadata::text, model '
            f'FROM "{pg_schema}".ml_observability_spans')}
    finally:
        await conn.close()
    assert len(rows) == 6
    one, two, three = rows[batch[1].id], rows[batch[2].id], rows[batch[3].id]
    assert one["name"] == "nul\ufffdbyte" and one["tags"] == ["a\ufffd", "b"]
    assert two["input"] == '{"a": "x\ufffdy", "b": "\\\\u0000"}'
    assert three["metadata"] == '{"\ufffd": 1}' and three["model"] == "m\ufffd\ufffd"


async def test_unreachable_postgres_is_a_retry_not_a_crash(pg_schema: str) -> None:
    """A closed port gives Retry (a breaker failure), never an exception."""
    s = PostgresSink(PostgresSettings(dsn="postgresql://postgres@127.0.0.1:1/test",
                                      schema=pg_schema, connect_timeout_s=1), "p")
    async with s:
        outcome = await s.send(records(3))
        assert isinstance(outcome, Retry) and outcome.failure
        assert await s.check() is False


async def test_non_span_records_are_acknowledged_without_rows(pg_schema: str) -> None:
    trace = parse_line(b'{"kind":"trace","id":"0193a1f2-0000-7000-8000-000000000001",'
                       b'"name":"t","start_time":"2026-01-01T00:00:00Z"}')
    assert not isinstance(trace, SpanRecord)
    async with sink(pg_schema) as s:
        assert await s.send([trace]) == Delivered()  # type: ignore[list-item]


async def test_migrate_is_idempotent_and_safe_concurrently(pg_schema: str) -> None:
    """Eight sidecars migrating at once: each migration applied exactly once."""
    conns = [await asyncpg.connect(PG_DSN) for _ in range(8)]
    try:
        results = await asyncio.gather(*(migrate(c, pg_schema) for c in conns))
        applied = [name for r in results for name in r]
        assert sorted(applied) == sorted(f"{m.version:04d}_{m.name}" for m in migrations())
        assert await migrate(conns[0], pg_schema) == []
        assert await is_current(conns[0], pg_schema)
        view = await conns[0].fetch(f'SELECT * FROM "{pg_schema}".v_agent_latency_summary')
        assert view == []
    finally:
        for c in conns:
            await c.close()


async def test_latency_view_summarises_per_agent(pg_schema: str) -> None:
    async with sink(pg_schema) as s:
        batch = records(30)
        batch[0] = replace(batch[0], error_info=None)
        assert await s.send(batch) == Delivered()
    conn = await asyncpg.connect(PG_DSN)
    try:
        rows = await conn.fetch(
            f'SELECT * FROM "{pg_schema}".v_agent_latency_summary ORDER BY agent_name')
    finally:
        await conn.close()
    assert [r["agent_name"] for r in rows] == ["agent-0", "agent-1", "agent-2"]
    assert sum(r["span_count"] for r in rows) == 30
    assert all(120 <= r["p50_ms"] <= 170 and r["p99_ms"] >= r["p50_ms"] for r in rows)


async def test_auto_migrate_off_reports_missing_schema(pg_schema: str) -> None:
    """With auto_migrate off and no schema, sends are retried with a clear reason."""
    async with sink(pg_schema, auto_migrate=False) as s:
        outcome = await s.send(records(1))
    assert isinstance(outcome, Retry) and "span-sidecar migrate" in outcome.reason


async def _aiter(items: list[SpanRecord]) -> AsyncIterator[SpanRecord]:
    for item in items:
        yield item


async def test_streamed_copy_stores_records_and_defers_collisions(pg_schema: str) -> None:
    """The streamed fast path stores a batch in one transaction; a batch that collides
    with stored rows answers Retry (rolled back) so the pipeline takes the merge path."""
    batch = records(120)
    async with sink(pg_schema) as s:
        assert await s.send_stream(_aiter(batch)) == Delivered()
        assert await count(pg_schema) == 120
        again = await s.send_stream(_aiter(batch[60:] + records(5)))
        assert isinstance(again, Retry) and "UniqueViolation" in again.reason
        assert await count(pg_schema) == 120
        assert await s.send(batch[60:] + records(5)) == Delivered()
    assert await count(pg_schema) == 125


async def test_values_the_table_cannot_hold_are_rejected_not_retried(pg_schema: str) -> None:
    """An agent name too big for the index is isolated as a reject, the other records
    stored; a 2**64 integer in metadata passes through as the line's own JSON text."""
    batch = records(10)
    batch[2] = replace(batch[2], metadata=Raw(b'{"big": 18446744073709551616}'))
    batch[7] = replace(batch[7], agent_name=secrets.token_urlsafe(9000))
    async with sink(pg_schema) as s:
        outcome = await s.send(batch)
        huge = [replace(r, metadata=Raw(b'{"big": %d}' % 2**70)) for r in records(3)]
        streamed = await s.send_stream(_aiter(huge))
    assert isinstance(outcome, PartlyRejected) and sorted(outcome.reasons) == [7]
    assert streamed == Delivered()
    assert await count(pg_schema) == 12
    conn = await asyncpg.connect(PG_DSN)
    try:
        big = await conn.fetchval(f'SELECT metadata->>\'big\' FROM "{pg_schema}".'
                                  "ml_observability_spans WHERE span_id = $1", batch[2].id)
    finally:
        await conn.close()
    assert big == str(2**64)


async def test_an_applied_migration_that_was_edited_is_refused_by_name(pg_schema: str) -> None:
    """A changed file of an applied version must not pass unnoticed (nor be re-run)."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        await migrate(conn, pg_schema)
        first = migrations()[0]
        await conn.execute(f'UPDATE "{pg_schema}".span_sidecar_migrations SET checksum = $1 '
                           "WHERE version = $2", "0" * 16, first.version)
        for check in (migrate(conn, pg_schema), is_current(conn, pg_schema)):
            try:
                await check
            except MigrationError as exc:
                assert f"{first.version:04d}_{first.name}.sql was changed" in str(exc)
            else:
                raise AssertionError("an edited migration was accepted")
    finally:
        await conn.close()
