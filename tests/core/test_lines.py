"""split_lines: complete lines only, the partial tail kept, nothing lost or invented."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.spool.lines import split_lines

PROPERTY = settings(max_examples=300, deadline=None)
# Mostly newlines and a few other bytes, so that empty lines, runs of newlines and
# lone carriage returns come up often; plus arbitrary bytes.
NEWLINE_HEAVY = st.lists(st.sampled_from([b"\n", b"\n", b"a", b"\r", b"\x00", b"{}", b"\xff"]),
                         max_size=40).map(b"".join)
CHUNKS = st.binary(max_size=2048) | NEWLINE_HEAVY


@PROPERTY
@given(CHUNKS)
def test_lines_and_tail_rebuild_the_chunk_exactly(chunk: bytes) -> None:
    lines, tail = split_lines(chunk)
    assert b"\n".join(lines) + (b"\n" if lines else b"") + tail == chunk


@PROPERTY
@given(CHUNKS)
def test_one_line_per_newline_and_no_newline_inside_lines_or_tail(chunk: bytes) -> None:
    lines, tail = split_lines(chunk)
    assert len(lines) == chunk.count(b"\n")
    assert b"\n" not in tail and all(b"\n" not in line for line in lines)
    assert chunk.endswith(tail)


@PROPERTY
@given(CHUNKS, CHUNKS)
def test_splitting_a_stream_in_two_reads_gives_the_same_lines_as_one_read(a: bytes,
                                                                           b: bytes) -> None:
    """What the tailer relies on: carrying the tail into the next read loses nothing."""
    first, tail = split_lines(a)
    second, last = split_lines(tail + b)
    whole, whole_tail = split_lines(a + b)
    assert first + second == whole and last == whole_tail


@pytest.mark.parametrize(("chunk", "lines", "tail"), [
    (b"", [], b""),
    (b"no newline yet", [], b"no newline yet"),
    (b"\n", [b""], b""),
    (b"a\n", [b"a"], b""),
    (b"a\nb", [b"a"], b"b"),
    (b"a\n\nb\n", [b"a", b"", b"b"], b""),
    (b"a\r\nb", [b"a\r"], b"b"),
])
def test_examples(chunk: bytes, lines: list[bytes], tail: bytes) -> None:
    assert split_lines(chunk) == (lines, tail)
