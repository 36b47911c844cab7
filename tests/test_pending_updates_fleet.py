"""Span updates across a fleet: an update that sidecar A could not apply (the
span was not stored yet) waits in the pending table, and sidecar B, which
stores the span, merges it, even though B had seen the table empty."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from sidecar.config.settings import PostgresSettings
from sidecar.records import Record
from sidecar.sinks.base import Delivered
from sidecar.sinks.postgres import PostgresSink
from sidecar.sinks.postgres_updates import PENDING_RECHECK_S, SpanUpdates
from sidecar.store.migrate import quote_ident
from tests.receivers.test_update_records import CREATE, END, OUTPUT, expect_merged, rec, stored
from tests.support import PG_DSN

LATER = rec(id="01a24f98-6c13-7425-b84c-3c9ee7a20bfe",
            trace_id="01a24f98-6bec-75b7-a6b6-d5a0f6097d37", name="later",
            start_time="2026-01-02T03:04:07Z")
OTHER = rec(id="01a24f98-6c13-7425-b84c-3c9ee7a20bff",
            trace_id="01a24f98-6bec-75b7-a6b6-d5a0f6097d37", name="other",
            start_time="2026-01-02T03:04:05Z")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _stream(records: Sequence[Record]) -> AsyncIterator[Record]:
    for r in records:
        yield r


@pytest.mark.parametrize("stored_in_window", [False, True],
                         ids=["span stored after the window", "span stored inside it"])
async def test_a_sidecar_that_saw_no_pending_update_merges_one_written_since(
        pg_schema: str, stored_in_window: bool) -> None:
    """B has seen the pending table empty; A then parks an update for a span
    B stores, before or after B looks again: either way the row gets it by
    B's next check (a batch after the interval)."""
    settings = PostgresSettings(dsn=PG_DSN, schema=pg_schema)
    clock = FakeClock()
    table = f"{quote_ident(pg_schema)}.ml_observability_spans"
    async with PostgresSink(settings, "P") as a, PostgresSink(settings, "P") as b:
        b.updates = SpanUpdates(quote_ident(pg_schema), table, clock)
        assert await b.send_stream(_stream([OTHER])) == Delivered()
        assert b.updates.maybe_pending is False  # B has seen the table empty
        assert await a.send([OUTPUT, END]) == Delivered()  # A: no row yet, so pending
        if not stored_in_window:
            clock.now += PENDING_RECHECK_S
        assert await b.send_stream(_stream([CREATE])) == Delivered()
        if stored_in_window:  # B trusted the table empty: its next batch looks again
            clock.now += PENDING_RECHECK_S
            assert await b.send_stream(_stream([LATER])) == Delivered()
        rows = [r for r in await stored(b) if r["name"] == "step"]
    expect_merged(rows)
