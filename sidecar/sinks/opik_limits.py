"""The Opik sink's two rate limits: the server's (a 429) and our own quota.

A 429 is the workspace's answer, not one request's: Opik counts every item
of every request against the same quota. So the window it names holds the
whole sink. ``RateGate`` is one per sink; every request waits on it just
before it is sent, whichever batch it belongs to, and a 429 closes it until
the time named by ``RateLimit-Reset`` (Opik's header), else ``Retry-After``,
else a backoff of its own (1 s, doubling to 60 s, back to 1 s after any
success). Without it, with two batches in flight, the second batch's next
request went out a fraction of a second after the first one's 429.

``TokenBucket`` is the optional client-side limit (events per minute) that
keeps a workspace under its quota before the server has to say so.
"""

from __future__ import annotations

from sidecar.clock import Clock

# The wait after a 429 that names no time: doubled on every such 429 in a
# row, back to the first after any request succeeds.
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0


class RateGate:
    """Holds every request of a sink until a 429's window has passed."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.until = clock.monotonic()  # monotonic time at which requests may go
        self.holds_total = 0  # 429s that closed (or extended) the gate
        self._next_backoff = FIRST_BACKOFF_S

    def hold(self, after_s: float | None) -> float:
        """Close the gate for ``after_s`` seconds (None: the backoff's next
        step) from now, never shortening a longer hold; answer the wait used."""
        if after_s is None:
            after_s = self._next_backoff
            self._next_backoff = min(MAX_BACKOFF_S, self._next_backoff * 2)
        self.until = max(self.until, self.clock.monotonic() + after_s)
        self.holds_total += 1
        return after_s

    def passed(self) -> None:
        """A request succeeded: the next 429 without a time starts the backoff over."""
        self._next_backoff = FIRST_BACKOFF_S

    def remaining(self) -> float:
        """Seconds until requests may go again (0 when open)."""
        return max(0.0, self.until - self.clock.monotonic())

    async def wait(self) -> None:
        """Return when the gate is open; a 429 meanwhile extends the wait."""
        while (left := self.remaining()) > 0:
            await self.clock.sleep(left)


class TokenBucket:
    """Client-side rate limit in events per minute, over an injected clock.

    ``take`` never sleeps: it answers how long to wait, and the pipeline
    waits (a Retry with ``failure=False``). A batch larger than the bucket
    passes when the bucket is full, leaving a debt that later batches wait off.
    """

    def __init__(self, per_minute: int, clock: Clock) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock.monotonic()

    def take(self, n: int) -> float:
        """Take ``n`` tokens and return 0, or take none and return the wait in seconds."""
        now = self.clock.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        need = min(float(n), self.capacity)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate
