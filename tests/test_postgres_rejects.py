"""Rejects are cheap: a record Postgres refuses costs one more COPY, not a bisection.

The COPY error's CONTEXT names the failing line; the sink takes that row
out and sends the rest again. Halving is the fallback when no line is named
(measured here too, for the README's figures).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from msgspec import Raw
from msgspec.structs import replace

from sidecar.config.settings import PostgresSettings
from sidecar.records import SpanRecord
from sidecar.sinks import postgres
from sidecar.sinks.base import Delivered, PartlyRejected, RejectError, isolate_rejects
from sidecar.sinks.postgres import PostgresSink
from tests.support import PG_DSN
from tests.test_postgres_sink import count, records

# jsonb's numeric refuses it: "value overflows numeric format" (not a NUL,
# which the sink now replaces before it reaches Postgres).
OVERFLOW = Raw(b'{"n": 1e999999}')


class CountingSink(PostgresSink):
    """Counts the COPY attempts (and the rows they carry)."""

    def __init__(self, schema: str) -> None:
        super().__init__(PostgresSettings(dsn=PG_DSN, db_schema=schema), "Default Project")
        self.copies = 0
        self.rows_sent = 0

    async def _copy(self, conn: asyncpg.Connection, rows: Any) -> None:
        self.copies += 1
        if isinstance(rows, Sequence):
            self.rows_sent += len(rows)
        await super()._copy(conn, rows)


def with_bad(n: int, bad: Sequence[int]) -> list[SpanRecord]:
    batch = records(n)
    for i in bad:
        batch[i] = replace(batch[i], input=OVERFLOW)
    return batch


@pytest.mark.parametrize(("n", "bad"), [
    (1000, [0, 1, 2, 500, 998, 999]),
    (2000, list(range(3, 2000, 97))),
    (2000, [0]),  # the worst place for one: the windows double up from 2
])
async def test_refused_records_cost_about_one_copy_each(
        pg_schema: str, n: int, bad: list[int]) -> None:
    batch = with_bad(n, bad)
    sink = CountingSink(pg_schema)
    async with sink:
        outcome = await sink.send(batch)
    assert isinstance(outcome, PartlyRejected) and sorted(outcome.reasons) == bad
    assert all("numeric" in reason for reason in outcome.reasons.values())
    assert await count(pg_schema) == n - len(bad)
    assert sink.copies - 1 <= math.log2(n) + len(bad)
    assert sink.rows_sent <= 8 * n  # not the rest of the batch again per reject (n**2)


async def test_dense_rejects_stay_near_one_copy_each_and_few_rows(pg_schema: str) -> None:
    """One record in two refused (halving took ~2n COPYs; re-sending the rest
    each time sent n**2/2 rows): known-good records carried along are sent
    alone once they outgrow the window, a few percent more COPYs."""
    n, bad = 1000, list(range(0, 1000, 2))
    sink = CountingSink(pg_schema)
    async with sink:
        outcome = await sink.send(with_bad(n, bad))
    assert isinstance(outcome, PartlyRejected) and sorted(outcome.reasons) == bad
    assert await count(pg_schema) == n - len(bad)
    assert sink.copies - 1 <= 1.05 * (math.log2(n) + len(bad))
    assert sink.rows_sent <= 15 * n


async def test_a_refused_row_in_a_redelivered_batch_is_named_too(pg_schema: str) -> None:
    """The merge path's staging COPY names its line the same way."""
    batch = records(300)
    sink = CountingSink(pg_schema)
    async with sink:
        assert await sink.send(batch[:100]) == Delivered()
        mixed = batch[:]
        for i in (150, 151, 299):
            mixed[i] = replace(mixed[i], output=OVERFLOW)
        outcome = await sink.send(mixed)  # collides with stored rows: merge path
    assert isinstance(outcome, PartlyRejected) and sorted(outcome.reasons) == [150, 151, 299]
    assert await count(pg_schema) == 297


async def test_without_a_line_number_halving_still_finds_every_reject(
        pg_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback: the same batch with the CONTEXT ignored."""
    monkeypatch.setattr(postgres, "_COPY_LINE", re.compile(r"(?!)"))
    bad = [5, 6, 400, 999]
    sink = CountingSink(pg_schema)
    async with sink:
        outcome = await sink.send(with_bad(1000, bad))
    assert isinstance(outcome, PartlyRejected) and sorted(outcome.reasons) == bad
    assert await count(pg_schema) == 996
    assert sink.copies <= 2 * len(bad) * math.ceil(math.log2(1000)) + 1


async def test_isolation_with_positions_never_loses_or_doubles_a_record() -> None:
    """The algorithm alone: positions, halving and a mix give the same answer."""
    batch = list(range(500))
    bad = {0, 7, 8, 250, 499}
    stored: list[int] = []

    def make(named: bool) -> Any:
        async def attempt(part: Sequence[int]) -> None:
            hit = next((p for p, v in enumerate(part) if v in bad), None)
            if hit is not None:
                raise RejectError(f"bad {part[hit]}", hit if named and part[hit] % 2 else None)
            stored.extend(part)
        return attempt

    for named in (True, False):
        stored.clear()
        rejects = await isolate_rejects(batch, make(named))
        assert rejects == {i: f"bad {i}" for i in sorted(bad)}
        assert sorted(stored) == [i for i in batch if i not in bad]
