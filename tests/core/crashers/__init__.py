"""Spool lines that once stopped the daemon, kept as regression tests.

Each is a valid span whose ``input`` (or another free-form field) sends the
redaction walk down its decode path (an e-mail address, a ``\\u`` escape, a
secret key name) around a shape the old walk could not take: arrays nested
~900 deep (``RecursionError`` in the recursive walk) or an integer of more
than 4,300 digits (``ValueError`` from the stdlib fallback for integers
orjson refuses). ``parse_line`` accepts them all; the old policy stage
raised, the pipeline did not catch it, and the daemon exited 1 on every
restart.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.support import span

DEEP = 900
HUGE_DIGITS = 5000


def _nested(inner: bytes, depth: int = DEEP) -> bytes:
    return b"[" * depth + inner + b"]" * depth


def _with(field: str, raw: bytes, i: int) -> bytes:
    """A realistic span line with ``raw`` spliced in as the JSON of ``field``."""
    marker = "__CRASHER__"
    rec: dict[str, Any] = span(i, **{field: marker})
    return orjson.dumps(rec).replace(f'"{marker}"'.encode(), raw)


def crashers() -> list[tuple[str, bytes]]:
    """(name, spool line without its newline), one per way the old code crashed."""
    big = b"9" * HUGE_DIGITS
    return [
        ("deep_email", _with("input", b'{"x": ' + _nested(b'"jane@example.com"') + b"}", 1)),
        ("deep_unicode_escape", _with("input", b'{"x": ' + _nested(b'"caf\\u00e9"') + b"}", 2)),
        ("deep_secret_key", _with("input", b'{"x": ' + _nested(b'{"token": 1}') + b"}", 3)),
        ("deep_in_metadata", _with("metadata", b'{"m": ' + _nested(b'"a@b.io"') + b"}", 4)),
        ("deep_in_output", _with("output", b'{"o": ' + _nested(b'"\\/"') + b"}", 5)),
        ("huge_int_email", _with("input", b'{"n": ' + big + b', "e": "jane@example.com"}', 6)),
        ("huge_int_escape", _with("input", b'{"n": -' + big + b', "e": "\\u0041"}', 7)),
        ("huge_int_key", _with("output", b'{"token": "t", "n": [' + big + b"]}", 8)),
    ]
