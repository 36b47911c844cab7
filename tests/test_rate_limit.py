"""A 429 holds the whole Opik sink, every batch in flight, until the time it names.

The emulator reads the test's FakeClock when a request arrives, so "no
request inside the window" is checked on the same clock the sink waits on:
the clock moves only when every task of the sink is asleep on it.
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.clock import FakeClock
from sidecar.records import Record
from sidecar.sinks.base import Delivered, Retry
from sidecar.sinks.opik import OpikSink
from sidecar.sinks.opik_limits import FIRST_BACKOFF_S, MAX_BACKOFF_S, RateGate
from tests.clocking import drive
from tests.opik_emulator import OpikEmulator
from tests.opik_fixtures import settings_for, span

HEADERS = ["RateLimit-Reset", "Retry-After", None]


def batch(n: int) -> list[Record]:
    return [span() for _ in range(n)]  # child spans: one request per 2 records below


@pytest.mark.parametrize("header", HEADERS)
async def test_a_429_holds_every_batch_in_flight_until_the_time_it_names(
        emu: OpikEmulator, header: str | None) -> None:
    """Batch B is in flight (its first request held by the server) when
    batch A's request gets a 429; B's next requests, and A sent again at
    once, must all wait out the window on the sink's one gate."""
    clock = FakeClock()
    emu.clock = clock.monotonic
    settings = settings_for(emu, max_batch_records=2, max_in_flight=1)
    batch_a, batch_b = batch(6), batch(6)
    async with OpikSink(settings, clock=clock) as opik, asyncio.TaskGroup() as tasks:
        emu.stall(then_store=True, times=1)
        sending_b = tasks.create_task(opik.send(batch_b))
        await emu.wait_for_async(lambda: emu.stalled() == 1, what="B's first request held")
        emu.rate_limit(reset_s=5, times=1, header=header)
        outcome = await opik.send(batch_a)
        assert isinstance(outcome, Retry) and not outcome.failure
        window = 5.0 if header else FIRST_BACKOFF_S
        assert outcome.after_s == window
        limited_at = clock.monotonic()
        emu.healthy()  # B's first request is answered; B goes on
        resending_a = tasks.create_task(opik.send(batch_a))  # as soon as it may
        await drive(clock, lambda: sending_b.done() and resending_a.done(), deadline_s=20)
    assert sending_b.result() == Delivered() and resending_a.result() == Delivered()
    seen = sorted(emu.requests(), key=lambda r: r.seq)
    limited = next(r for r in seen if r.status == 429)
    after = [r for r in seen if r.seq > limited.seq]
    assert len(after) == 5  # B's last two and A's three again (B's first came before)
    inside = [(r.seq, r.arrived - limited_at) for r in after
              if r.arrived < limited_at + window]
    assert inside == [], f"requests inside the {window} s window: {inside}"
    assert emu.stored() == 12


async def test_check_sends_nothing_inside_the_window(emu: OpikEmulator) -> None:
    clock = FakeClock()
    async with OpikSink(settings_for(emu), clock=clock) as opik:
        emu.rate_limit(reset_s=30, times=1)
        assert isinstance(await opik.send(batch(1)), Retry)
        before = len(emu.requests())
        assert await opik.check()  # a 429 is an answer: Opik is reachable
        clock.advance(30)
        assert await opik.check() and await opik.send(batch(1)) == Delivered()
    assert len(emu.requests()) == before + 1  # the send; the first check sent nothing


async def test_the_gate_takes_the_longest_hold_and_backs_off_without_a_time() -> None:
    clock = FakeClock()
    gate = RateGate(clock)
    assert gate.remaining() == 0
    gate.hold(10)
    gate.hold(3)  # a shorter window never shortens a longer one
    assert gate.remaining() == 10
    waiting = asyncio.ensure_future(gate.wait())
    await drive(clock, lambda: clock.sleepers == 1)
    gate.hold(20)  # extended while a request waits
    clock.advance(10)
    await drive(clock, lambda: clock.sleepers == 1)
    assert not waiting.done()
    clock.advance(10)
    await drive(clock, waiting.done)
    assert [gate.hold(None) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert MAX_BACKOFF_S == 60 and FIRST_BACKOFF_S == 1
    gate.passed()
    assert gate.hold(None) == FIRST_BACKOFF_S
