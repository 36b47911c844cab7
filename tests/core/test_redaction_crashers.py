"""The crasher corpus: lines that once stopped the daemon go through the policy
stage and the pipeline, and a line that makes the stage raise is quarantined
while the pipeline goes on."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from sidecar.config.settings import Settings
from sidecar.policies import Policies, PolicyStage, SampledOut
from sidecar.policies.stage import Found
from sidecar.records import Record, Rejected, SpanRecord, encode_json, parse_line
from tests.core.crashers import crashers
from tests.core.helpers import span, stage_of
from tests.core.test_pipeline import FakeSink, Harness, ids


@pytest.mark.parametrize(("name", "line"), crashers(), ids=[n for n, _ in crashers()])
def test_a_crasher_goes_through_the_policy_stage(name: str, line: bytes) -> None:
    """Parsed, redacted without raising; what it held that is secret is masked,
    the rest (deep brackets, a 5,000-digit integer) kept as written."""
    rec = parse_line(line)
    assert isinstance(rec, SpanRecord), rec
    out = stage_of(Settings()).apply(rec, line)
    assert isinstance(out, SpanRecord)
    text = encode_json(out)
    assert b"jane@example.com" not in text and b"a@b.io" not in text
    assert (b"9" * 5000 in text) == name.startswith("huge_int")
    assert (b"[" * 900 in text) == name.startswith("deep")


async def test_crashers_are_shipped_between_good_lines(tmp_path: Path) -> None:
    """Each crasher is shipped once (redacted), the good lines around it too, and
    the checkpoint reaches the end: nothing quarantined, nothing twice."""
    h = Harness(tmp_path, FakeSink(), max_records=4)
    h.pipeline.policies = stage_of(Settings())
    lines: list[dict[str, object] | bytes] = []
    for i, (_, crasher) in enumerate(crashers()):
        lines += [span(100 + i), crasher + b"\n"]
    h.write(lines)
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    assert len(ids(h.sink.stored)) == len(set(ids(h.sink.stored))) == 2 * len(crashers())
    assert h.quarantined() == []


class _Exploding(PolicyStage):
    """A policy stage that raises for lines carrying a marker (a bug we did not foresee)."""

    def decide(self, record: Record, raw: bytes | None = None,
               cleared_by: Policies | None = None) -> tuple[Record | SampledOut, Found | None]:
        if raw is not None and b"EXPLODE" in raw:
            raise RecursionError("maximum recursion depth exceeded")
        return super().decide(record, raw, cleared_by)


async def test_a_line_the_policy_stage_raises_on_is_quarantined_and_the_pipeline_goes_on(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeSink(), max_records=3)
    h.pipeline.policies = _Exploding(Settings().sampling, Settings().spans)
    good = [span(i) for i in range(6)]
    bad = [span(50 + i, input={"x": "EXPLODE"}) for i in range(2)]
    h.write([good[0], bad[0], *good[1:4], bad[1], *good[4:]])
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    assert ids(h.sink.stored) == [g["id"] for g in good]
    q = h.quarantined()
    assert [orjson.loads(e["raw"])["id"] for e in q] == [b["id"] for b in bad]
    assert {e["reason"] for e in q} == {"policy stage failed: RecursionError"}
    stats = h.pipeline.stats()
    assert stats.records_quarantined == 2 and stats.records_shipped == 6


def test_the_corpus_is_accepted_by_the_parser() -> None:
    """A crasher the parser refused would prove nothing about the stage."""
    assert all(not isinstance(parse_line(line), Rejected) for _, line in crashers())
