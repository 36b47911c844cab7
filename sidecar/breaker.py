"""The circuit breaker: a small state machine over an injected ``now``.

closed -> open after ``failure_threshold`` consecutive failures; open ->
half_open once ``reset_timeout_s`` has passed; half_open lets
``half_open_max_calls`` trial calls through and closes on a success or
opens again on a failure. Back-pressure (429) is not a failure.
"""

from __future__ import annotations

import random

import structlog

from sidecar.config.settings import BreakerSettings
from sidecar.snapshots import BreakerState, BreakerStats

log = structlog.get_logger("sidecar.breaker")


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings, sink: str) -> None:
        self.settings = settings
        self.sink = sink
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.trial_calls = 0
        self.opened_total = 0
        self.transitions_total = 0

    def wait_time(self, now: float) -> float:
        """Seconds until a call may go through (0: allowed now)."""
        if self.state == "open":
            remaining = self.opened_at + self.settings.reset_timeout_s - now
            if remaining > 0:
                return remaining
            self._move("half_open")
            self.trial_calls = 0
        if self.state == "half_open" and self.trial_calls >= self.settings.half_open_max_calls:
            return self.settings.reset_timeout_s
        return 0.0

    def allow(self, now: float) -> bool:
        """Whether a call may start now; counts half-open trial calls."""
        if self.wait_time(now) > 0:
            return False
        if self.state == "half_open":
            self.trial_calls += 1
        return True

    def record_success(self) -> None:
        self.failures = 0
        if self.state != "closed":
            self._move("closed")

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= self.settings.failure_threshold
        ):
            self.opened_at = now
            self.opened_total += 1
            self._move("open")

    def stats(self) -> BreakerStats:
        return BreakerStats(self.state, self.failures, self.opened_total, self.transitions_total)

    def _move(self, new: BreakerState) -> None:
        log.info("breaker.state.changed", sink=self.sink, old=self.state, new=new,
                 consecutive_failures=self.failures)
        self.state = new
        self.transitions_total += 1


class Backoff:
    """Exponential backoff with full jitter and a cap: ``uniform(0, min(cap, b * m**n))``.

    Full jitter spreads the retries of many sidecars hitting one backend.
    """

    def __init__(self, initial_s: float, max_s: float, multiplier: float,
                 rand: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self._rand = rand or random.Random()

    def delay(self, attempt: int) -> float:
        """A random delay in ``[0, min(max_s, initial_s * multiplier**attempt)]``."""
        try:
            grown = self.initial_s * float(self.multiplier) ** attempt
        except OverflowError:  # far past the cap
            grown = self.max_s
        return self._rand.uniform(0.0, min(self.max_s, grown))
