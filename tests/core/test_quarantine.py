"""The dead-letter file keeps every rejected line, its origin and its reason."""

from __future__ import annotations

from pathlib import Path

import orjson
from structlog.testing import capture_logs

from sidecar.clock import SystemClock
from sidecar.config.settings import Settings
from sidecar.spool.quarantine import MAX_RAW_BYTES, Quarantine, raw_of
from sidecar.spool.replay import replay
from sidecar.spool.state import StateDir
from tests.core.helpers import append, span


def entries(q: Quarantine) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in q.path.read_bytes().splitlines()]


def test_an_entry_holds_the_raw_line_its_source_offset_and_reason(tmp_path: Path) -> None:
    q = Quarantine(StateDir(tmp_path), "postgres", SystemClock())
    with capture_logs() as logs:
        q.put(b'{"id": 1}', "/spool/a.jsonl", 120, "invalid record: id: bad")
    q.close()
    [entry] = entries(q)
    assert entry["raw"] == '{"id": 1}' and entry["source"] == "/spool/a.jsonl"
    assert entry["offset"] == 120 and entry["reason"] == "invalid record: id: bad"
    assert entry["sink"] == "postgres" and entry["size"] == 9 and "truncated" not in entry
    assert len(entries(q)) == 1 and [e["event"] for e in logs] == ["quarantine.record.stored"]


def test_a_line_that_is_not_utf8_is_kept_exactly_in_base64(tmp_path: Path) -> None:
    q = Quarantine(StateDir(tmp_path), "opik", SystemClock())
    raw = b"\xff\xfe{\x00}"
    q.put(raw, "a.jsonl", 0, "not valid UTF-8 (byte 0)")
    q.close()
    [entry] = entries(q)
    assert "raw" not in entry and raw_of(entry) == raw


def test_an_over_long_line_keeps_its_head_and_full_size(tmp_path: Path) -> None:
    q = Quarantine(StateDir(tmp_path), "opik", SystemClock())
    head = b"h" * (MAX_RAW_BYTES + 10)
    q.put(head, "a.jsonl", 7, "too long", size=5 << 20)
    q.close()
    [entry] = entries(q)
    assert entry["size"] == 5 << 20 and entry["truncated"] is True
    assert raw_of(entry) == head[:MAX_RAW_BYTES]


def test_entries_are_appended_across_restarts(tmp_path: Path) -> None:
    for i in range(3):
        q = Quarantine(StateDir(tmp_path), "postgres", SystemClock())
        q.put(b"x", "a.jsonl", i, "bad")
        q.sync()
        q.close()
    again = Quarantine(StateDir(tmp_path), "postgres", SystemClock())
    assert [e["offset"] for e in entries(again)] == [0, 1, 2]


def test_an_entry_after_the_file_was_taken_away_goes_to_a_new_file(tmp_path: Path) -> None:
    """replay-quarantine renames the file under the writer's lock: the next entry
    lands in a fresh file at the same path, never in the taken one."""
    from sidecar.spool.replay import _take

    q = Quarantine(StateDir(tmp_path), "postgres", SystemClock())
    q.put(b"first", "src", 0, "bad")
    taken = _take(q.path)
    assert taken is not None
    q.put(b"second", "src", 10, "bad")
    q.close()
    assert [orjson.loads(x)["raw"] for x in taken.read_bytes().splitlines()] == ["first"]
    assert [orjson.loads(x)["raw"] for x in q.path.read_bytes().splitlines()] == ["second"]


def test_replay_finishes_a_file_an_interrupted_replay_left(tmp_path: Path) -> None:
    """A taken quarantine file that a crashed replay never finished is replayed next time."""
    from sidecar.config.settings import Settings
    from sidecar.spool.replay import _take, replay_sink

    settings = Settings.model_validate(
        {"spool": {"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path)}})
    (tmp_path / "spool").mkdir()
    q = Quarantine(StateDir(tmp_path), "postgres", SystemClock())
    q.put(b"still bad", "src", 0, "bad")
    q.close()
    assert _take(q.path) is not None  # ... and the replay crashed here
    result = replay_sink(settings, "postgres")
    assert result["still_invalid"] == 1 and result["replayed"] == 0
    assert list((tmp_path / "quarantine").glob("*.replaying-*")) == []
    assert [orjson.loads(x)["raw"] for x in q.path.read_bytes().splitlines()] == ["still bad"]


def test_replay_keeps_what_it_cannot_decode_byte_for_byte(tmp_path: Path) -> None:
    """Replay drops nothing: a garbled entry stays in the quarantine as it was."""
    settings = Settings.model_validate(
        {"spool": {"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state")}},
        context={"env": {}})
    settings.spool.dir.mkdir()
    q = Quarantine(StateDir(settings.spool.state_dir), "postgres", SystemClock())
    valid = orjson.dumps(span(1))
    q.put(valid, "a.jsonl", 0, "an older rule")
    q.put(b"{still broken", "a.jsonl", 10, "invalid JSON")
    q.close()
    garbled = b'{"sink": "postgres", "raw": "cut off by a power lo'
    append(q.path, garbled + b"\n")
    summary = replay(settings, "postgres")["results"][0]
    assert summary["replayed"] == 1 and summary["still_invalid"] == 2
    left = q.path.read_bytes().splitlines()
    assert garbled in left and len(left) == 2
    [spooled] = summary["spool_files"]
    assert Path(spooled).read_bytes() == valid + b"\n"
