"""The circuit breaker over explicit `now` values, and capped full-jitter backoff."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.breaker import Backoff, CircuitBreaker
from sidecar.config.settings import BreakerSettings

SETTINGS = BreakerSettings(failure_threshold=3, reset_timeout_s=10.0, half_open_max_calls=2)


def tripped(at: float = 100.0) -> CircuitBreaker:
    breaker = CircuitBreaker(SETTINGS, "test")
    for _ in range(SETTINGS.failure_threshold):
        breaker.record_failure(at)
    assert breaker.state == "open"
    return breaker


def test_the_breaker_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(SETTINGS, "test")
    for now in (1.0, 2.0):
        breaker.record_failure(now)
        assert breaker.state == "closed" and breaker.allow(now)
    breaker.record_failure(3.0)
    assert breaker.state == "open" and not breaker.allow(3.0)
    assert breaker.stats().opened_total == 1 and breaker.stats().consecutive_failures == 3


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(SETTINGS, "test")
    for now in range(10):
        breaker.record_failure(float(now))
        breaker.record_failure(float(now))
        breaker.record_success()  # never three in a row
    assert breaker.state == "closed" and breaker.failures == 0


def test_while_open_wait_time_counts_down_to_the_reset_timeout() -> None:
    breaker = tripped(at=100.0)
    assert breaker.wait_time(100.0) == pytest.approx(10.0)
    assert breaker.wait_time(104.0) == pytest.approx(6.0)
    assert not breaker.allow(109.99)
    assert breaker.state == "open"


def test_after_the_reset_timeout_half_open_lets_through_a_bounded_number_of_trials() -> None:
    breaker = tripped(at=100.0)
    assert breaker.wait_time(110.0) == 0.0 and breaker.state == "half_open"
    assert [breaker.allow(110.0 + i) for i in range(4)] == [True, True, False, False]
    assert breaker.wait_time(113.0) > 0  # trials in flight: the rest wait


def test_a_successful_trial_closes_the_breaker() -> None:
    breaker = tripped(at=100.0)
    assert breaker.allow(111.0)
    breaker.record_success()
    assert breaker.state == "closed" and breaker.failures == 0
    assert all(breaker.allow(112.0) for _ in range(10))


def test_a_failed_trial_opens_the_breaker_again_for_a_full_timeout() -> None:
    breaker = tripped(at=100.0)
    assert breaker.allow(111.0)
    breaker.record_failure(112.0)
    assert breaker.state == "open" and breaker.stats().opened_total == 2
    assert breaker.wait_time(112.0) == pytest.approx(10.0)
    assert breaker.wait_time(122.0) == 0.0 and breaker.stats().state == "half_open"
    assert breaker.allow(122.0)  # a fresh set of trials


def test_every_state_change_is_counted() -> None:
    breaker = tripped(at=0.0)  # closed -> open
    breaker.allow(10.0)  # -> half_open
    breaker.record_success()  # -> closed
    assert breaker.stats().transitions_total == 3 and breaker.stats().state == "closed"


# -- backoff ---------------------------------------------------------------------------------

def ceiling(initial: float, cap: float, multiplier: float, attempt: int) -> float:
    """min(cap, initial * multiplier**attempt), computed in logs so that it never overflows."""
    log_grown = math.log(initial) + attempt * math.log(multiplier)
    return cap if log_grown >= math.log(cap) else min(cap, initial * multiplier**attempt)


@settings(max_examples=300, deadline=None)
@given(initial=st.floats(0.001, 10), cap=st.floats(0.01, 600), multiplier=st.floats(1, 1e6),
       attempt=st.integers(0, 5000), seed=st.integers(0, 2**32))
def test_a_delay_is_full_jitter_below_the_capped_exponential(
        initial: float, cap: float, multiplier: float, attempt: int, seed: int) -> None:
    delay = Backoff(initial, cap, multiplier, random.Random(seed)).delay(attempt)
    assert 0.0 <= delay <= ceiling(initial, cap, multiplier, attempt) * (1 + 1e-9)


def test_delays_spread_over_the_whole_range() -> None:
    backoff = Backoff(0.5, 30.0, 2.0, random.Random(7))
    delays = [backoff.delay(3) for _ in range(500)]  # ceiling 4.0
    assert min(delays) < 0.4 and max(delays) > 3.6


def test_a_gentle_multiplier_still_reaches_the_cap_after_enough_attempts() -> None:
    """min(cap, b * m**n) at n = 200 is the cap (30 s), not b * m**64 (11 s)."""
    backoff = Backoff(0.5, 30.0, 1.05, random.Random(1))
    assert max(backoff.delay(200) for _ in range(500)) > 25.0


def test_the_same_seed_gives_the_same_delays() -> None:
    def run(seed: int) -> list[float]:
        return [Backoff(0.5, 30.0, 2.0, random.Random(seed)).delay(n) for n in range(10)]
    assert run(42) == run(42) and run(42) != run(43)
