"""The health verdict as a value: its level, each reason, and when each clears.

``SelfMonitor`` builds it; ``/status``, ``/readyz``, ``span-sidecar status``,
the health span and the log show it. A reason that only says "error rate
56%" leaves an operator guessing whether it is still true; each one here
carries when it stops being true on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["healthy", "degraded", "unhealthy"]
STATUSES: tuple[Status, ...] = ("healthy", "degraded", "unhealthy")


@dataclass(frozen=True, slots=True)
class Finding:
    """One threshold crossed, and when it clears on its own.

    ``clears_at`` (wall time): the window that produced it stops holding the
    failures or slow calls behind it by then, unless new ones come. For a
    condition with no window (lag, breaker, quota), ``clears_when`` says what
    has to change instead.
    """

    level: Status
    reason: str
    clears_at: float | None = None
    clears_when: str = ""


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """The verdict and every threshold crossed (empty when healthy)."""

    status: Status
    reasons: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()

    def explain(self, now: float) -> list[dict[str, Any]]:
        """Each reason with when it clears, as ``/status`` and ``/readyz`` show it
        (``now``: the wall time of the question, for ``clears_in_s``)."""
        return [{"level": f.level, "reason": f.reason,
                 "clears_at": None if f.clears_at is None else _rfc3339(f.clears_at),
                 "clears_in_s": None if f.clears_at is None
                 else round(max(0.0, f.clears_at - now), 1),
                 "clears_when": f.clears_when or None} for f in self.findings]


def describe(reason: dict[str, Any]) -> str:
    """One explained reason in words: ``"<reason>; clears by <time> (in N s)"``."""
    if reason.get("clears_at"):
        return (f"{reason['reason']}; clears by {reason['clears_at']} "
                f"(in {reason['clears_in_s']:.0f} s) unless it happens again")
    if reason.get("clears_when"):
        return f"{reason['reason']}; clears {reason['clears_when']}"
    return str(reason["reason"])


def _rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def check(
    subject: str, value: float, unit: str, warning: float, critical: float
) -> tuple[Status, str] | None:
    """The level and reason when ``value`` reaches a threshold, worded for an operator."""
    if value >= critical:
        return "unhealthy", f"{subject} {value:.0f}{unit} >= critical {critical:g}{unit}"
    if value >= warning:
        return "degraded", f"{subject} {value:.0f}{unit} >= warning {warning:g}{unit}"
    return None
