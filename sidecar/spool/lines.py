"""Splitting a byte chunk into complete lines; pure and total."""

from __future__ import annotations


def split_lines(chunk: bytes) -> tuple[list[bytes], bytes]:
    """Return the complete lines of ``chunk`` (without ``\\n``) and the partial tail.

    A line without its ``\\n`` is not complete yet: it stays in the tail, so a
    half-written record is never parsed (OTel contrib #32170).
    """
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], chunk
    return chunk[:end].split(b"\n"), chunk[end + 1 :]
