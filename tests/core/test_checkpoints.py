"""Checkpoints: round trip, atomic replacement, and a safe start from corrupt state."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from sidecar.spool import checkpoints
from sidecar.spool.checkpoints import CheckpointStore, FileMark, read_marks
from sidecar.spool.state import StateDir


def marks(n: int, offset: int = 4096) -> dict[tuple[int, int], FileMark]:
    out = {}
    for i in range(n):
        m = FileMark(dev=64769, ino=1000 + i, fp=f"{i:032x}", fp_len=min(1024, offset),
                     offset=offset + i, path=f"/spool/agent-{i}.jsonl")
        out[m.key] = m
    return out


def valid_body() -> bytes:
    return orjson.dumps({"version": 1, "sink": "postgres",
                         "files": [checkpoints._encode(m) for m in marks(3).values()]})


def test_save_then_load_gives_back_the_same_marks(tmp_path: Path) -> None:
    store = CheckpointStore(StateDir(tmp_path), "postgres")
    saved = marks(5)
    store.save(saved)
    assert CheckpointStore(StateDir(tmp_path), "postgres").load() == saved


def test_no_checkpoint_file_means_no_marks(tmp_path: Path) -> None:
    assert CheckpointStore(StateDir(tmp_path), "opik").load() == {}


def test_each_sink_has_its_own_checkpoint(tmp_path: Path) -> None:
    CheckpointStore(StateDir(tmp_path), "postgres").save(marks(2))
    CheckpointStore(StateDir(tmp_path), "opik").save(marks(1, offset=10))
    assert CheckpointStore(StateDir(tmp_path), "postgres").load() == marks(2)
    assert read_marks(StateDir(tmp_path), "opik") == marks(1, offset=10)
    assert read_marks(StateDir(tmp_path), "postgres") == marks(2)


CORRUPT = {
    "empty": b"",
    "truncated": valid_body()[: len(valid_body()) // 2],
    "garbled": b"\x8f\x02{ver\xffsion: one",
    "nul-filled": b"\x00" * 4096,
    "not-an-object": b"[1, 2, 3]",
    "other-version": orjson.dumps({"version": 2, "files": []}),
    "files-missing": orjson.dumps({"version": 1}),
    "files-not-a-list": orjson.dumps({"version": 1, "files": 5}),
    "mark-not-an-object": orjson.dumps({"version": 1, "files": ["x"]}),
    "mark-field-missing": orjson.dumps({"version": 1, "files": [{"dev": 1, "ino": 2}]}),
    "mark-field-garbled": valid_body().replace(b'"offset":4096', b'"offset":"4k"'),
    "impossible-offset": valid_body().replace(b'"offset":4096', b'"offset":-1'),
    "fingerprint-past-offset": valid_body().replace(b'"fp_len":1024', b'"fp_len":999999'),
}


@pytest.mark.parametrize("body", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_checkpoint_is_moved_aside_logged_and_means_start_over(
        tmp_path: Path, body: bytes) -> None:
    store = CheckpointStore(StateDir(tmp_path), "postgres")
    store.dir.mkdir(parents=True)
    store.path.write_bytes(body)
    with capture_logs() as logs:
        assert store.load() == {}
    assert not store.path.exists()
    aside = store.path.with_suffix(".corrupt")
    assert aside.read_bytes() == body  # kept for a post-mortem
    [event] = [e for e in logs if e["event"] == "checkpoint.file.corrupt"]
    assert event["log_level"] == "warning" and event["sink"] == "postgres"
    assert event["path"] == str(store.path) and event["size"] == len(body)


def test_after_a_corrupt_checkpoint_the_next_save_and_load_work(tmp_path: Path) -> None:
    store = CheckpointStore(StateDir(tmp_path), "postgres")
    store.dir.mkdir(parents=True)
    store.path.write_bytes(b"\x00" * 100)
    assert store.load() == {}
    store.save(marks(2))
    assert store.load() == marks(2)


def test_read_marks_treats_a_corrupt_file_as_no_marks_without_moving_it(tmp_path: Path) -> None:
    store = CheckpointStore(StateDir(tmp_path), "opik")
    store.dir.mkdir(parents=True)
    store.path.write_bytes(b"\x00\x00")
    assert read_marks(StateDir(tmp_path), "opik") == {}
    assert store.path.exists()  # status is read-only


@pytest.mark.parametrize("checkpoint", [b"", valid_body()], ids=["no-checkpoint", "valid"])
def test_a_stale_temp_file_is_removed_on_load(tmp_path: Path, checkpoint: bytes) -> None:
    store = CheckpointStore(StateDir(tmp_path), "postgres")
    store.dir.mkdir(parents=True)
    if checkpoint:
        store.path.write_bytes(checkpoint)
    tmp = store.path.with_suffix(".tmp")
    tmp.write_bytes(b'{"version": 1, "files": [')  # a save killed half way
    loaded = store.load()
    assert not tmp.exists()
    assert loaded == (checkpoints._decode(checkpoint) if checkpoint else {})


def test_save_leaves_no_temp_file_behind(tmp_path: Path) -> None:
    store = CheckpointStore(StateDir(tmp_path), "postgres")
    store.save(marks(3))
    assert sorted(p.name for p in store.dir.iterdir()) == ["postgres.json"]


def test_a_reader_never_sees_a_partly_written_checkpoint(tmp_path: Path) -> None:
    """Saves replace the file atomically: every concurrent read decodes whole."""
    store = CheckpointStore(StateDir(tmp_path), "postgres")
    store.save(marks(1))
    stop = threading.Event()
    reads: list[int] = []
    failures: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            try:
                decoded = checkpoints._decode(store.path.read_bytes())
            except Exception as exc:  # any failure is the finding
                failures.append(repr(exc))
            else:
                reads.append(len(decoded))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(300):
            store.save(marks(1 + i % 40, offset=4096 + i))
    finally:
        stop.set()
        watcher.join()
    assert not failures, failures[:3]
    assert reads and set(reads) <= set(range(1, 41))


def test_save_completes_when_the_os_writes_only_part_of_the_body(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:7]))
    store = CheckpointStore(StateDir(tmp_path), "postgres")
    store.save(marks(20))
    monkeypatch.undo()
    assert store.load() == marks(20)
