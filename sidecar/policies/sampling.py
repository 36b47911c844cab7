"""Trace-consistent sampling: a trace is kept or dropped whole, everywhere.

The decision is a pure function of the trace id and a rate, with no seed:
``int.from_bytes(sha256(trace_id.bytes).digest()[:8], "big") / 2**64 < rate``
(the 16 bytes of the UUID, big-endian as written). Every sidecar of a fleet,
and one restarted from fresh state, decides the same for the same trace, and
the decisions nest across rates: a trace kept at 0.1 is kept at 0.5.
"""

from __future__ import annotations

from hashlib import sha256
from uuid import UUID

from sidecar.config.settings import SamplingSettings
from sidecar.records import FeedbackRecord, Record, SpanRecord, TraceRecord

_SCALE = float(1 << 64)


def trace_point(trace_id: UUID) -> float:
    """Where a trace falls in [0, 1): kept at any rate above this point."""
    return int.from_bytes(sha256(trace_id.bytes).digest()[:8], "big") / _SCALE


class Sampler:
    """Decides per record from its trace id and its agent's rate."""

    def __init__(self, settings: SamplingSettings, environment: str) -> None:
        self.settings = settings
        self.default = settings.environment_rate(environment)
        # A trace or feedback record names no agent: it is kept when any rate
        # that applies to this trace's spans could keep them.
        self.highest = max((self.default, *settings.agent_overrides.values(),
                            *settings.tiers.values()))
        self.everything = self.highest >= 1.0 and self.default >= 1.0 and all(
            rate >= 1.0 for rate in (*settings.agent_overrides.values(),
                                     *settings.tiers.values()))

    def rate(self, agent: str | None, tier: int | None) -> float:
        """The agent's override, else its tier's rate, else the environment's."""
        s = self.settings
        if agent is not None and agent in s.agent_overrides:
            return s.agent_overrides[agent]
        if tier is not None and tier in s.tiers:
            return s.tiers[tier]
        return self.default

    def keep(self, record: Record) -> bool:
        """Whether the record ships (True) or is sampled out."""
        if self.everything:
            return True
        if isinstance(record, SpanRecord):
            if record.error_info is not None and self.settings.always_sample_errors:
                return True
            return trace_point(record.trace_id) < self.rate(record.agent_name, record.agent_tier)
        if isinstance(record, TraceRecord):
            if record.error_info is not None and self.settings.always_sample_errors:
                return True
            return trace_point(record.id) < self.highest
        if isinstance(record, FeedbackRecord) and record.target == "trace":
            return trace_point(record.id) < self.highest
        return True  # feedback on a span: its trace is not known here
