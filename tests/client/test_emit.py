"""emit_test_span, for ``span-sidecar emit``: one valid span in a finished file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.client import emit_test_span, emit_test_spans
from sidecar.schema import SpanRecord

from .helpers import spool_files, spool_records


def test_emit_writes_one_valid_span_in_a_done_file(spool: Path) -> None:
    span_id = emit_test_span(spool, "smoke", "cli-agent", type="llm", model="m",
                             usage={"prompt_tokens": 1}, duration_ms=250)
    assert [p.name.endswith(".jsonl.done") for p in spool_files(spool)] == [True]
    (record,) = spool_records(spool)
    assert isinstance(record, SpanRecord) and str(record.id) == span_id
    assert record.name == "smoke" and record.agent_name == "cli-agent"
    assert record.type == "llm" and record.model == "m" and record.duration_ms == 250


def test_emit_refuses_fields_that_make_an_invalid_span(spool: Path) -> None:
    with pytest.raises(ValueError, match="type"):
        emit_test_span(spool, "bad", "cli", type="nonsense")
    with pytest.raises(ValueError, match="not a span"):
        emit_test_span(spool, "bad", "cli", kind="trace")
    assert spool_files(spool) == []


def test_emit_reports_an_unwritable_spool(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="could not write"):
        emit_test_span(tmp_path / "file", "x", "cli")


def test_emit_count_writes_every_span_into_one_file(spool: Path) -> None:
    """`emit --count K`: one finished file of K lines (it was K files of one)."""
    emitted = emit_test_spans(spool, "many", "cli-agent", 25)
    [path] = spool_files(spool)
    assert str(path) == emitted.path and path.name.endswith(".jsonl.done")
    records = spool_records(spool)
    assert [str(r.id) for r in records] == list(emitted.ids) and len(set(emitted.ids)) == 25
    assert all(isinstance(r, SpanRecord) and r.name == "many" for r in records)
