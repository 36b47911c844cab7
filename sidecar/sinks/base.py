"""The Sink protocol and the outcomes a sink answers with.

A sink only delivers: it knows nothing of breakers, retries or checkpoints.
The pipeline reads the outcome and decides (Vector's delivered / retry /
rejected, OpenTelemetry's exporter interface).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
    ``max_batch_records`` is the largest batch the sink wants;
    ``batches_in_flight`` how many it takes at once (1 for a streaming sink).
    """

    name: str
    max_batch_records: int
    # Batches the pipeline may have at this sink at once (committed in order).
    batches_in_flight: int

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...

    async def send(self, batch: Sequence[Record]) -> Outcome:
        """Deliver a batch; never raises except on cancellation."""
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


# Called by a sink after it stored spans, with their agents' names (the
# statistics cache invalidates those agents' entries).
StoredHook = Callable[[frozenset[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What the app gives every sink it builds, beside the settings."""

    clock: Clock
    on_stored: StoredHook | None = None


class RejectError(Exception):
    """Raised inside a sink's attempt: these records are invalid for the sink."""


T = TypeVar("T")


async def isolate_rejects(
    batch: Sequence[T],
    attempt: Callable[[Sequence[T]], Awaitable[None]],
) -> dict[int, str]:
    """Find the records a backend refuses by splitting the batch in halves.

    ``attempt`` stores a sub-batch or raises ``RejectError`` (invalid data,
    nothing stored) or any other exception (propagated: a retry of the whole
    batch, which is safe because every write is idempotent). Returns the
    index -> reason of each refused record; all others are stored.
    """
    rejects: dict[int, str] = {}
    # Depth first, lower half first, without a recursive closure: a function
    # that refers to itself is a reference cycle, which would keep the batch
    # (and the request bodies the caller's ``attempt`` holds) until the
    # garbage collector's next pass instead of freeing them on return.
    pending = [(0, len(batch))] if batch else []
    while pending:
        lo, hi = pending.pop()
        try:
            await attempt(batch[lo:hi])
        except RejectError as exc:
            if hi - lo == 1:
                rejects[lo] = str(exc) or "rejected by the sink"
            else:
                mid = (lo + hi) // 2
                pending += [(mid, hi), (lo, mid)]
    return rejects
