"""The dead-letter file keeps every rejected line, its origin and its reason."""

from __future__ import annotations

from pathlib import Path

import orjson
from structlog.testing import capture_logs

from sidecar.spool.quarantine import MAX_RAW_BYTES, Quarantine, raw_of


def entries(q: Quarantine) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in q.path.read_bytes().splitlines()]


def test_an_entry_holds_the_raw_line_its_source_offset_and_reason(tmp_path: Path) -> None:
    q = Quarantine(tmp_path, "postgres")
    with capture_logs() as logs:
        q.put(b'{"id": 1}', "/spool/a.jsonl", 120, "invalid record: id: bad")
    q.close()
    [entry] = entries(q)
    assert entry["raw"] == '{"id": 1}' and entry["source"] == "/spool/a.jsonl"
    assert entry["offset"] == 120 and entry["reason"] == "invalid record: id: bad"
    assert entry["sink"] == "postgres" and entry["size"] == 9 and "truncated" not in entry
    assert q.count == 1 and [e["event"] for e in logs] == ["quarantine.record.stored"]


def test_a_line_that_is_not_utf8_is_kept_exactly_in_base64(tmp_path: Path) -> None:
    q = Quarantine(tmp_path, "opik")
    raw = b"\xff\xfe{\x00}"
    q.put(raw, "a.jsonl", 0, "not valid UTF-8 (byte 0)")
    q.close()
    [entry] = entries(q)
    assert "raw" not in entry and raw_of(entry) == raw


def test_an_over_long_line_keeps_its_head_and_full_size(tmp_path: Path) -> None:
    q = Quarantine(tmp_path, "opik")
    head = b"h" * (MAX_RAW_BYTES + 10)
    q.put(head, "a.jsonl", 7, "too long", size=5 << 20)
    q.close()
    [entry] = entries(q)
    assert entry["size"] == 5 << 20 and entry["truncated"] is True
    assert raw_of(entry) == head[:MAX_RAW_BYTES]


def test_entries_are_appended_across_restarts(tmp_path: Path) -> None:
    for i in range(3):
        q = Quarantine(tmp_path, "postgres")
        q.put(b"x", "a.jsonl", i, "bad")
        q.sync()
        q.close()
    assert [e["offset"] for e in entries(Quarantine(tmp_path, "postgres"))] == [0, 1, 2]


def test_an_entry_after_the_file_was_taken_away_goes_to_a_new_file(tmp_path: Path) -> None:
    """replay-quarantine renames the file under the writer's lock: the next entry
    lands in a fresh file at the same path, never in the taken one."""
    from sidecar.replay import _take

    q = Quarantine(tmp_path, "postgres")
    q.put(b"first", "src", 0, "bad")
    taken = _take(q.path)
    assert taken is not None
    q.put(b"second", "src", 10, "bad")
    q.close()
    assert [orjson.loads(x)["raw"] for x in taken.read_bytes().splitlines()] == ["first"]
    assert [orjson.loads(x)["raw"] for x in q.path.read_bytes().splitlines()] == ["second"]


def test_replay_finishes_a_file_an_interrupted_replay_left(tmp_path: Path) -> None:
    """A taken quarantine file that a crashed replay never finished is replayed next time."""
    from sidecar.replay import _take, replay_sink
    from sidecar.settings import Settings

    settings = Settings.model_validate(
        {"spool": {"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path)}})
    (tmp_path / "spool").mkdir()
    q = Quarantine(tmp_path, "postgres")
    q.put(b"still bad", "src", 0, "bad")
    q.close()
    assert _take(q.path) is not None  # ... and the replay crashed here
    result = replay_sink(settings, "postgres")
    assert result["still_invalid"] == 1 and result["replayed"] == 0
    assert list((tmp_path / "quarantine").glob("*.replaying-*")) == []
    assert [orjson.loads(x)["raw"] for x in q.path.read_bytes().splitlines()] == ["still bad"]
