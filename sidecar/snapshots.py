"""Frozen snapshots that components report.

The health span, ``/metrics`` and ``span-sidecar status`` read these; they
never reach inside a component.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerStats:
    state: BreakerState
    consecutive_failures: int
    opened_total: int  # transitions into "open" since start
    transitions_total: int


@dataclass(frozen=True, slots=True)
class SinkStats:
    """One sink's pipeline, counters since the process started."""

    sink: str
    records_read: int  # parsed lines handed to this sink's batches
    records_shipped: int  # acknowledged by the sink
    records_quarantined: int  # parse rejects + the sink's own rejects
    batches_shipped: int
    attempts_failed: int  # send attempts answered with Retry (incl. 429)
    rate_limited_total: int  # 429s
    lag_bytes: int  # spool bytes not yet acknowledged by this sink
    lag_records: int  # records read but not yet acknowledged
    lag_seconds: float  # age of the oldest unacknowledged byte (0 when current)
    breaker: BreakerStats
    oldest_unacked: float | None = None  # wall time that byte was first seen
    bytes_shipped: int = 0  # raw bytes of the records acknowledged by the sink
    records_sampled_out: int = 0  # dropped by sampling; acknowledged like shipped ones
    sampled_out_by_agent: tuple[tuple[str, int], ...] = ()  # at most 50 agents + "other"


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """The spool files tracked by any sink, and their bytes."""

    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class CacheStats:
    """The statistics cache, counters since the process started.

    Each ``stats`` request counts once as ``hits`` or ``misses`` (from the
    configured backend) or ``fallbacks`` (answered without Redis while it
    failed); ``errors`` counts failed Redis calls, invalidations included.
    """

    backend: str  # "redis" | "memory"
    hits: int
    misses: int
    fallbacks: int
    errors: int
    invalidations: int  # batches whose agents' entries were invalidated
    redis: BreakerState  # the Redis breaker ("closed" for the memory backend)


@dataclass(frozen=True, slots=True)
class QuotaStats:
    """The spool quota: usage against ``spool.max_bytes`` and what it dropped."""

    max_bytes: int | None  # None: no quota
    bytes: int  # bytes of the spool files present at the last check
    on_full: str  # "keep" | "drop_oldest"
    dropped_files: int = 0
    dropped_records: int = 0  # records at least one sink had not read yet


@dataclass(frozen=True, slots=True)
class PolicyStats:
    """What the policy stage did since start: masks per pattern name (never the
    values), truncated fields per field name."""

    redactions: tuple[tuple[str, int], ...] = ()
    truncated: tuple[tuple[str, int], ...] = ()
