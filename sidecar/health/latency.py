"""Rolling-window latency: count, min, max, mean and percentiles, in bounded memory.

``observe`` is on the hot path (every batch, request and cache call), so it
must cost a few hundred nanoseconds and never allocate per sample. The window
is a ring of time slices; each slice holds a log-scale histogram (like
HdrHistogram or DDSketch) plus exact count, sum, min and max. Memory is
``slices x bins`` integers whatever the traffic, and merging slices is exact.

The price is resolution: a percentile is reported as the geometric middle of
its bin, clamped to the observed min and max, so it is within about 2% of the
true value (bins grow by 4%). Expiry is per slice: a sample older than
``window_s`` is always gone, one younger than ``window_s * (1 - 1/slices)`` is
always counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sidecar.clock import Clock

# Bins: [0, 10 us], then x1.04 per bin up to ~12 minutes; the last bin is open.
_MIN_MS = 0.01
_GROWTH = 1.04
_BINS = 2 + math.ceil(math.log(720_000.0 / _MIN_MS) / math.log(_GROWTH))
_INV_LOG_GROWTH = 1.0 / math.log(_GROWTH)
_INV_MIN_MS = 1.0 / _MIN_MS
_log = math.log


@dataclass(frozen=True, slots=True)
class LatencySnapshot:
    """Latency over a window, in milliseconds; all zero when nothing was observed."""

    count: int = 0
    min: float = 0.0
    max: float = 0.0
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0


class _Slice:
    """One time slice of the window: exact aggregates plus the bin counts."""

    __slots__ = ("bins", "count", "index", "max", "min", "total")

    def __init__(self) -> None:
        self.bins = [0] * _BINS
        self.reset(-1)

    def reset(self, index: int) -> None:
        self.index = index
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0
        if any(self.bins):
            self.bins[:] = [0] * _BINS


def _bin_value(i: int) -> float:
    """The geometric middle of bin ``i`` (the value reported for it).

    The first and last bins are open-ended; the caller clamps their values
    to the observed min and max.
    """
    if i == 0:
        return _MIN_MS
    if i == _BINS - 1:
        return math.inf
    return _MIN_MS * math.pow(_GROWTH, i - 0.5)


class LatencyWindow:
    """Latency of one operation over the last ``window_s`` seconds of ``clock``."""

    def __init__(self, window_s: float, clock: Clock, slices: int = 10) -> None:
        if window_s <= 0 or slices < 1:
            raise ValueError("window_s must be > 0 and slices >= 1")
        self.window_s = window_s
        self._clock = clock
        self._inv_slice_s = slices / window_s
        self._ring = [_Slice() for _ in range(slices)]
        self._current = self._ring[0]

    def observe(self, seconds: float) -> None:
        """Record one duration in seconds (negative or NaN counts as 0).

        Bin ``i`` holds ``[MIN * GROWTH**(i-1), MIN * GROWTH**i)``; the binning
        is inlined because a helper call would nearly double this method's cost.
        """
        index = int(self._clock.monotonic() * self._inv_slice_s)
        s = self._current
        if s.index != index:
            s = self._rotate(index)
        ms = seconds * 1000.0
        if ms > _MIN_MS:
            i = int(_log(ms * _INV_MIN_MS) * _INV_LOG_GROWTH) + 1
            if i >= _BINS:
                i = _BINS - 1
        else:
            i = 0
            if not ms > 0.0:  # negative or NaN
                ms = 0.0
        s.count += 1
        s.total += ms
        if ms < s.min:
            s.min = ms
        if ms > s.max:
            s.max = ms
        s.bins[i] += 1

    def _rotate(self, index: int) -> _Slice:
        s = self._ring[index % len(self._ring)]
        if s.index != index:
            s.reset(index)
        self._current = s
        return s

    def reset(self) -> None:
        """Forget every sample (the window starts again from now)."""
        for s in self._ring:
            s.reset(-1)

    def clears_at(self, threshold_ms: float) -> float | None:
        """When no sample of ``threshold_ms`` or more is left in the window (clock
        time: the end of the newest live slice holding one), None when none is."""
        newest = int(self._clock.monotonic() * self._inv_slice_s)
        slow = [s.index for s in self._ring
                if newest - len(self._ring) < s.index <= newest and s.count
                and s.max >= threshold_ms]
        return None if not slow else (max(slow) + len(self._ring)) / self._inv_slice_s

    def snapshot(self) -> LatencySnapshot:
        """Aggregate the live slices; costs ``slices x bins`` additions."""
        newest = int(self._clock.monotonic() * self._inv_slice_s)
        live = [s for s in self._ring if newest - len(self._ring) < s.index <= newest]
        count = sum(s.count for s in live)
        if count == 0:
            return LatencySnapshot()
        lo = min(s.min for s in live if s.count)
        hi = max(s.max for s in live)
        bins = [sum(column) for column in zip(*(s.bins for s in live), strict=True)]
        p50, p95, p99 = (_clamp(_percentile(bins, count, q), lo, hi) for q in (0.50, 0.95, 0.99))
        mean = sum(s.total for s in live) / count
        return LatencySnapshot(count, lo, hi, mean, p50, p95, p99)


def _percentile(bins: list[int], count: int, q: float) -> float:
    """The value of the bin holding the sample of rank ceil(q * count)."""
    rank = max(1, math.ceil(q * count))
    seen = 0
    for i, n in enumerate(bins):
        seen += n
        if seen >= rank:
            return _bin_value(i)
    return math.inf  # unreachable while count == sum(bins)


def _clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value
