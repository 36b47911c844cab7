"""Update records (``span_update``, ``trace_update``) in the sinks: one row per
span whatever the order (update before its create, after it, in the same
batch or not, sent again), the fields an update leaves out kept; Opik gets
a PATCH for an update whose create was in another batch, and none otherwise."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config.settings import PostgresSettings
from sidecar.records import Record, Rejected, parse_line
from sidecar.sinks.base import Delivered
from sidecar.sinks.opik_payloads import plan
from sidecar.sinks.postgres import PostgresSink
from sidecar.sinks.updates import fold
from tests.support import PG_DSN

SPAN = "01a24f98-6c13-7425-b84c-3c9ee7a20be2"
TRACE = "01a24f98-6bec-75b7-a6b6-d5a0f6097d37"
T0, T1 = "2026-01-02T03:04:05Z", "2026-01-02T03:04:06.5Z"


def rec(**fields: Any) -> Record:
    parsed = parse_line(orjson.dumps(fields))
    assert not isinstance(parsed, Rejected), parsed.reason
    return parsed


CREATE = rec(id=SPAN, trace_id=TRACE, name="step", start_time=T0, input={"q": 1},
             metadata={"m": 0})
OUTPUT = rec(kind="span_update", id=SPAN, trace_id=TRACE, output={"a": 2}, metadata={"m": 1})
END = rec(kind="span_update", id=SPAN, trace_id=TRACE, end_time=T1,
          error_info={"exception_type": "E", "traceback": "tb"})


@pytest.fixture
async def pg(pg_schema: str) -> AsyncIterator[PostgresSink]:
    async with PostgresSink(PostgresSettings(dsn=PG_DSN, schema=pg_schema),
                            "Default Project") as sink:
        yield sink


async def stored(sink: PostgresSink) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(PG_DSN)
    try:
        rows = await conn.fetch(f'SELECT * FROM "{sink.schema}".ml_observability_spans')
        pending = await conn.fetchval(
            f'SELECT count(*) FROM "{sink.schema}".span_sidecar_pending_updates')
    finally:
        await conn.close()
    return [{**dict(r), "pending": pending} for r in rows]


def expect_merged(rows: list[dict[str, Any]]) -> None:
    (row,) = rows
    assert json.loads(row["input"]) == {"q": 1}  # the create's, kept
    assert json.loads(row["output"]) == {"a": 2}
    assert json.loads(row["metadata"]) == {"m": 1}
    assert row["duration_ms"] == 1500.0 and row["status"] == "error"
    assert row["pending"] == 0


@pytest.mark.parametrize("batches", [
    [[CREATE, OUTPUT, END]],
    [[OUTPUT, END, CREATE]],  # the SDK's order: the PATCHes come first
    [[CREATE], [OUTPUT], [END]],
    [[OUTPUT], [END], [CREATE]],  # each update waits for its row
    [[OUTPUT], [CREATE, END]],
    [[OUTPUT, END], [CREATE], [OUTPUT, END, CREATE]],  # all sent again
], ids=["one batch", "one batch, updates first", "create first", "updates first",
        "mixed", "re-delivered"])
async def test_updates_are_merged_into_one_row_in_any_order(
        pg: PostgresSink, batches: list[list[Record]]) -> None:
    for batch in batches:
        assert await pg.send(batch) == Delivered()
    expect_merged(await stored(pg))


async def test_the_streamed_copy_applies_pending_updates_and_leaves_updates_to_send(
        pg: PostgresSink) -> None:
    async def stream(records: Sequence[Record]) -> AsyncIterator[Record]:
        for r in records:
            yield r

    assert await pg.send([OUTPUT, END]) == Delivered()
    assert await pg.send_stream(stream([CREATE])) == Delivered()
    expect_merged(await stored(pg))
    assert await pg.send_stream(stream([OUTPUT])) != Delivered()  # falls back to send()


@settings(max_examples=30, deadline=None)
@given(st.permutations([CREATE, OUTPUT, END]))
def test_fold_gives_the_create_every_update_in_any_order(order: list[Record]) -> None:
    folded, absorbed = fold(order)
    assert len(absorbed) == 2
    (create,) = [r for i, r in enumerate(folded) if i not in absorbed]
    assert bytes(create.input) == b'{"q":1}' and bytes(create.output) == b'{"a":2}'
    assert create.end_time is not None and create.error_info is not None


def test_opik_gets_a_patch_only_for_updates_whose_create_is_elsewhere() -> None:
    together = plan([OUTPUT, CREATE], "P", 1000, 1 << 20)
    assert sorted(g.endpoint for g in together.groups) == ["spans", "traces"]
    alone = plan([OUTPUT, END], "P", 1000, 1 << 20)
    assert [(g.endpoint, str(g.target)) for g in alone.groups] == [("span_update", SPAN)] * 2
    body = orjson.loads(alone.groups[0].bodies[id(alone.groups[0].records[0])])
    assert body == {"project_name": "P", "trace_id": TRACE, "output": {"a": 2},
                    "metadata": {"m": 1}}
