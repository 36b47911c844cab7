"""A request the receiver refuses, as a value the server turns into an answer.

Every refusal names its reason in the body (``{"errors": [reason]}``, the
shape Opik's own 4xx answers have), and a refused request changes nothing in
the spool: requests are mapped and checked whole before anything is appended.
"""

from __future__ import annotations


class Refused(Exception):
    """An HTTP answer other than success: status, reason, and Retry-After if any."""

    status = 400

    def __init__(self, reason: str, status: int | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status
        self.retry_after_s = retry_after_s


class BadRequest(Refused):
    """The body is not what the route takes (400)."""

    status = 400
