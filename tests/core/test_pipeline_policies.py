"""The policy stage inside a pipeline: sampled-out records are acknowledged, not
quarantined; redaction reaches the sink; a reconfigured pipeline keeps its batch."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from sidecar.config.settings import (
    BatchSettings,
    BreakerSettings,
    RetrySettings,
    SamplingSettings,
    Settings,
)
from sidecar.pipeline.sink_pipeline import MAX_AGENT_LABELS, OTHER_AGENTS, PipelineSettings
from sidecar.policies.sampling import trace_point
from sidecar.records import SpanRecord
from tests.core.helpers import span, stage_of
from tests.core.test_pipeline import FakeSink, Harness, StreamingFakeSink


async def test_sampled_out_records_are_acknowledged_and_counted_per_agent(
        tmp_path: Path) -> None:
    sink = StreamingFakeSink()
    h = Harness(tmp_path, sink)
    h.pipeline.policies = stage_of(Settings(sampling=SamplingSettings(default_rate=0.5)))
    spans = [span(i, agent_name=f"agent-{i % 2}") for i in range(60)]
    kept = [s["id"] for s in spans if trace_point(uuid.UUID(s["trace_id"])) < 0.5]
    assert 0 < len(kept) < 60
    h.write(spans)
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    assert [str(r.id) for r in sink.stored if isinstance(r, SpanRecord)] == kept
    stats = h.pipeline.stats()
    assert stats.records_sampled_out == 60 - len(kept)
    assert sum(n for _, n in stats.sampled_out_by_agent) == 60 - len(kept)
    assert {a for a, _ in stats.sampled_out_by_agent} <= {"agent-0", "agent-1"}
    assert stats.records_quarantined == 0 and h.quarantined() == []
    assert stats.lag_records == 0


async def test_a_batch_of_only_sampled_out_records_still_moves_the_checkpoint(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeSink())
    h.pipeline.policies = stage_of(Settings(sampling=SamplingSettings(default_rate=0.0)))
    h.write([span(i) for i in range(5)])
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    assert h.sink.stored == [] and h.pipeline.stats().records_sampled_out == 5


async def test_agent_labels_are_bounded(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeSink(), max_records=500)
    h.pipeline.policies = stage_of(Settings(sampling=SamplingSettings(default_rate=0.0)))
    h.write([span(i, agent_name=f"a{i}") for i in range(MAX_AGENT_LABELS + 10)])
    h.start()
    await h.until(lambda: h.checkpoint() == h.file.stat().st_size)
    await h.finish()
    by_agent = dict(h.pipeline.stats().sampled_out_by_agent)
    assert len(by_agent) == MAX_AGENT_LABELS + 1 and by_agent[OTHER_AGENTS] == 10


async def test_secrets_are_masked_before_the_sink_sees_them(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeSink())
    h.pipeline.policies = stage_of(Settings())
    h.write([span(0, input={"key": "AKIAIOSFODNN7EXAMPLE"}, tags=["jane@example.com"])])
    h.start()
    await h.until(lambda: len(h.sink.stored) == 1)
    await h.finish()
    rec = h.sink.stored[0]
    assert isinstance(rec, SpanRecord)
    assert rec.input is not None and json.loads(bytes(rec.input)) == {"key": "[REDACTED]"}
    assert rec.tags == ["[REDACTED]"]


@pytest.mark.parametrize("sink", [FakeSink(), StreamingFakeSink()], ids=["send", "stream"])
async def test_the_slices_gate_masks_each_secret_wherever_it_falls(tmp_path: Path,
                                                                   sink: FakeSink) -> None:
    """The gate runs once a slice of lines (8 for a batched sink, 200 for a
    streaming one), over the slice joined: secrets at a slice's edges, next
    to each other, and in a slice of their own are masked, clean lines pass
    as they were written."""
    h = Harness(tmp_path, sink, max_records=1000)
    h.pipeline.policies = stage_of(Settings())
    planted = {0, 7, 8, 9, 15, 16, 199, 200, 201, 230, 449}
    h.write([span(i, input={"key": "AKIAIOSFODNN7EXAMPLE"} if i in planted else {"n": i})
             for i in range(450)])
    h.start()
    await h.until(lambda: len(h.sink.stored) == 450)
    await h.finish()
    inputs = {json.loads(bytes(r.input))["key"] for r in h.sink.stored
              if isinstance(r, SpanRecord) and r.input is not None and b"key" in bytes(r.input)}
    assert inputs == {"[REDACTED]"}
    masked = [i for i, r in enumerate(h.sink.stored)
              if isinstance(r, SpanRecord) and r.input is not None and b"key" in bytes(r.input)]
    assert masked == sorted(planted)
    assert dict(h.pipeline.policies.stats().redactions) == {"aws_access_key_id": len(planted)}


async def test_reconfigure_applies_new_batch_and_breaker_settings(tmp_path: Path) -> None:
    h = Harness(tmp_path, FakeSink(), max_records=10)
    new = PipelineSettings(BatchSettings(max_records=3, max_wait_ms=200),
                           BreakerSettings(failure_threshold=9), RetrySettings(), 1 << 20)
    h.pipeline.reconfigure(new)
    assert h.pipeline.batcher.max_records == 3 and h.pipeline.batcher.max_wait_s == 0.2
    assert h.pipeline.breaker.settings.failure_threshold == 9
    h.write([span(i) for i in range(7)])
    h.start()
    await h.until(lambda: len(h.sink.stored) == 7)
    await h.finish()
    assert h.pipeline.stats().batches_shipped == 3
