"""split_lines: complete lines only, the partial tail kept, nothing lost or invented."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.spool import files
from sidecar.spool.files import count_newlines
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


@PROPERTY
@given(data=CHUNKS, cut=st.data())
def test_count_newlines_agrees_with_the_bytes_at_any_range_and_chunk_size(
        data: bytes, cut: st.DataObject) -> None:
    start = cut.draw(st.integers(0, len(data)))
    end = cut.draw(st.none() | st.integers(start, len(data)))
    chunk = cut.draw(st.integers(1, 64))
    part = data[start:end]
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        saved, files.COUNT_CHUNK = files.COUNT_CHUNK, chunk
        try:
            assert count_newlines(f.fileno(), start, end) == (
                part.count(b"\n"), part[-1:] not in (b"", b"\n"))
        finally:
            files.COUNT_CHUNK = saved
