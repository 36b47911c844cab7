"""The Sink protocol and the outcomes a sink answers with.

A sink only delivers: it knows nothing of breakers, retries or checkpoints.
The pipeline reads the outcome and decides (Vector's delivered / retry /
rejected, OpenTelemetry's exporter interface).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from math import isqrt
from types import TracebackType
from typing import Protocol, Self, TypeVar, runtime_checkable

from sidecar.clock import Clock
from sidecar.records import Record


@dataclass(frozen=True, slots=True)
class Delivered:
    """Every record of the batch is stored (or deliberately not for this sink)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Nothing (durable) happened; send the same batch again later.

    ``after_s`` is the server's wish (Retry-After, RateLimit-Reset).
    ``failure`` is False for back-pressure (429): it must not open a breaker.
    """

    reason: str
    after_s: float | None = None
    failure: bool = True


@dataclass(frozen=True, slots=True)
class PartlyRejected:
    """The sink stored all but these records, which it will never accept.

    ``reasons`` maps the index in the batch to the sink's own error text.
    """

    reasons: dict[int, str] = field(default_factory=dict)


Outcome = Delivered | Retry | PartlyRejected


class Sink(Protocol):
    """One destination.

    Lifecycle: the app enters it (``async with``: open clients, nothing that
    needs the backend up), calls ``check`` once in its TaskGroup (connect
    early, log whether the backend answers), ``send``s batches from one
    pipeline, and exits it on shutdown (release within a bounded time).
    ``max_batch_records`` is the largest batch the sink wants. A sink may
    also have ``batches_in_flight``, how many batches the pipeline may have
    at it at once (committed in order); without one it gets one at a time
    (``batches_in_flight()`` below reads it). A sink is built by its module's
    ``build(settings, context)`` (``sidecar/sinks/registry.py``).
    """

    name: str
    max_batch_records: int

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...

    async def send(self, batch: Sequence[Record]) -> Outcome:
        """Deliver a batch; never raises except on cancellation. The records
        are read, never changed: another sink may hold the same objects
        (``sidecar/pipeline/shared_parse.py``)."""
        ...

    async def check(self) -> bool:
        """A cheap probe: can the backend be reached right now? Never raises."""
        ...


@runtime_checkable
class StreamingSink(Sink, Protocol):
    """A sink that can take a batch while it is still being parsed.

    ``send_stream`` consumes the records as the pipeline adds them, in one
    all-or-nothing unit (a Postgres COPY in a transaction), so the backend
    works while Python parses. Any outcome but ``Delivered`` makes the
    pipeline send the sealed batch again through ``send``, under the breaker.
    """

    async def send_stream(self, records: AsyncIterator[Record]) -> Outcome: ...


DEFAULT_BATCHES_IN_FLIGHT = 1


def batches_in_flight(sink: Sink) -> int:
    """How many batches the pipeline may have at ``sink`` at once: its own
    ``batches_in_flight`` when it has one (at least 1), else one at a time."""
    return max(1, int(getattr(sink, "batches_in_flight", DEFAULT_BATCHES_IN_FLIGHT)))


# Called by a sink after it stored spans, with their agents' names (the
# statistics cache invalidates those agents' entries).
StoredHook = Callable[[frozenset[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What the app gives every sink it builds, beside the settings."""

    clock: Clock
    on_stored: StoredHook | None = None
    # A probe that must change nothing (``check-config --connect``): the sink
    # reaches its backend but creates and migrates nothing there.
    probe_only: bool = False


class RejectError(Exception):
    """Raised inside a sink's attempt: these records are invalid for the sink.

    ``position``, when the backend says which record it refused (PostgreSQL's
    COPY names the line), is that record's index in the sub-batch attempted.
    """

    def __init__(self, reason: str, position: int | None = None) -> None:
        super().__init__(reason)
        self.position = position


T = TypeVar("T")
Attempt = Callable[[Sequence[T]], Awaitable[None]]
# Known-good records carried into the next attempt are sent alone once they
# number CARRY_WINDOWS windows, or sqrt(CARRY_COST * window) when that is
# more: a flush costs an attempt, carrying c records costs c more records in
# every failed attempt, and an attempt costs about as much as a few hundred
# records. Measured on 5,000 spans in README figures (/tmp/notes/sinks.md).
CARRY_WINDOWS = 4
CARRY_COST = 256


async def isolate_rejects(batch: Sequence[T], attempt: Attempt[T]) -> dict[int, str]:
    """Find the records a backend refuses and store all the others.

    ``attempt`` stores a sub-batch or raises ``RejectError`` (invalid data,
    nothing stored) or any other exception (propagated: a retry of the whole
    batch, which is safe because every write is idempotent). Returns the
    index -> reason of each refused record; all others are stored.

    When the error names the refused record's position (PostgreSQL's COPY
    does), that record is out, the ones before it are known good, and the
    scan goes on: the good ones are carried into the next attempt with a
    window of the records after it twice as long as the stretch just
    cleared (doubling after each success). One failed attempt per refused
    record, a success or two between refused records far apart, and no
    record sent many times over where they are dense. An error that names
    no position splits the attempted records in halves (``_bisect``).
    """
    rejects: dict[int, str] = {}
    order = range(len(batch))
    pos, window = 0, len(batch)
    carry: list[int] = []  # known good (before a named reject), not yet stored
    while pos < len(order) or carry:
        most = max(CARRY_WINDOWS * window, isqrt(CARRY_COST * window))
        flush = pos >= len(order) or len(carry) >= most
        chunk = [] if flush else list(order[pos:pos + window])
        part = carry + chunk
        try:
            await attempt([batch[i] for i in part])
        except RejectError as exc:
            at = exc.position
            if at is None or not 0 <= at < len(part):
                await _bisect(batch, part, attempt, rejects)
                pos, carry = pos + len(chunk), []
                continue
            rejects[part[at]] = str(exc) or "rejected by the sink"
            cleared = max(0, at - len(carry) + 1)  # of the chunk: the good ones and the bad
            carry, pos = part[:at] + part[at + 1:len(carry)], pos + cleared
            window = max(1, 2 * cleared) if cleared else window
            continue
        pos, carry = pos + len(chunk), []
        window = window * 2 if chunk else window
    return rejects


async def _bisect(batch: Sequence[T], part: list[int], attempt: Attempt[T],
                  rejects: dict[int, str]) -> None:
    """Store ``part`` but its refused records, found by splitting it in halves."""
    # Depth first, lower half first, without a recursive closure: a function
    # that refers to itself is a reference cycle, which would keep the batch
    # (and the request bodies the caller's ``attempt`` holds) until the
    # garbage collector's next pass instead of freeing them on return.
    pending = [part] if part else []
    while pending:
        part = pending.pop()
        try:
            await attempt([batch[i] for i in part])
        except RejectError as exc:
            if len(part) == 1:
                rejects[part[0]] = str(exc) or "rejected by the sink"
            else:
                mid = len(part) // 2
                pending += [part[mid:], part[:mid]]
