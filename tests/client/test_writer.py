"""SpoolWriter: file naming, whole lines, rotation, .done, threads and fsync."""

from __future__ import annotations

import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import SpoolWriter, new_id
from sidecar.client.writer import safe_name_part
from sidecar.clock import FakeClock
from sidecar.schema import SpanRecord

from .helpers import spool_files, spool_lines, spool_records


def span(n: int, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"id": new_id(), "trace_id": new_id(), "name": f"span-{n}", "start_time": now,
            "end_time": now, "agent_name": "w", "input": {"n": n, "pad": "x" * 100}, **extra}


def test_one_file_per_process_named_agent_host_pid_seq(spool: Path) -> None:
    with SpoolWriter(spool, "my agent/1") as writer:
        assert writer.write(span(1)) and writer.write(span(2))
        name = Path(writer.stats().path or "").name
    host = safe_name_part(socket.gethostname())
    assert name == f"my_agent_1-{host}-{os.getpid()}-0.jsonl"
    assert [p.name for p in spool_files(spool)] == [name + ".done"]
    assert [r.name for r in spool_records(spool)] == ["span-1", "span-2"]


def test_close_marks_file_done_and_later_writes_are_counted_drops(spool: Path) -> None:
    writer = SpoolWriter(spool, "a")
    writer.write(span(1))
    writer.close()
    assert all(p.name.endswith(".jsonl.done") for p in spool_files(spool))
    assert writer.write(span(2)) is False
    assert writer.stats().records_dropped == 1
    assert len(spool_lines(spool)) == 1


def test_no_file_until_the_first_record(spool: Path) -> None:
    writer = SpoolWriter(spool, "idle")
    writer.close()
    assert spool_files(spool) == []


def test_size_rotation_loses_nothing(spool: Path) -> None:
    writer = SpoolWriter(spool, "rot", max_bytes=2_000)
    for n in range(300):
        assert writer.write(span(n))
    files = spool_files(spool)
    assert len(files) > 20
    assert [p.name.endswith(".done") for p in files].count(False) == 1
    assert all(p.stat().st_size <= 2_000 for p in files)
    writer.close()
    names = [r.name for r in spool_records(spool, schema=False)]
    assert sorted(names) == sorted(f"span-{n}" for n in range(300))
    assert writer.stats().files_done == len(files)


def test_age_rotation_follows_the_injected_clock(spool: Path) -> None:
    clock = FakeClock()
    writer = SpoolWriter(spool, "age", max_age_s=60, clock=clock)
    writer.write(span(1))
    clock.advance(59)
    writer.write(span(2))
    assert len(spool_files(spool)) == 1
    clock.advance(1)
    writer.write(span(3))
    names = [p.name for p in spool_files(spool)]
    assert len(names) == 2 and names[0].endswith("-0.jsonl.done") and names[1].endswith("-1.jsonl")
    assert len(spool_lines(spool)) == 3


def test_never_appends_to_or_reuses_an_existing_file(spool: Path) -> None:
    prefix = f"same-{safe_name_part(socket.gethostname())}-{os.getpid()}"
    (spool / f"{prefix}-0.jsonl").write_bytes(b"old open file\n")
    (spool / f"{prefix}-1.jsonl.done").write_bytes(b"old done file\n")
    with SpoolWriter(spool, "same") as writer:
        writer.write(span(1))
        assert Path(writer.stats().path or "").name == f"{prefix}-2.jsonl"
    assert (spool / f"{prefix}-0.jsonl").read_bytes() == b"old open file\n"
    assert (spool / f"{prefix}-1.jsonl.done").read_bytes() == b"old done file\n"


def test_threads_sharing_a_rotating_writer_write_only_whole_lines(spool: Path) -> None:
    writer = SpoolWriter(spool, "threads", max_bytes=50_000)
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        for n in range(500):
            writer.write(span(n, metadata={"thread": t}))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    records = spool_records(spool, schema=False)
    assert len(records) == 4_000 == len({r.id for r in records})
    assert writer.stats().records_written == 4_000 and writer.stats().records_dropped == 0


def test_values_json_cannot_hold_are_written_as_text(spool: Path) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    weird = {"set": {1}, "obj": Opaque(), "bytes": b"\xff", "big": 2**70, 3: "int key",
             "naive": datetime(2024, 1, 1), "surrogate": "\ud800"}
    with SpoolWriter(spool, "weird") as writer:
        assert writer.write(span(1, metadata=weird))
        assert writer.write(span(2, metadata={"obj": Opaque(), "nan": float("nan")}))
    first, second = spool_records(spool)
    assert isinstance(first, SpanRecord) and isinstance(second, SpanRecord)
    assert first.metadata is not None and first.metadata["big"] == str(2**70)
    assert first.metadata["surrogate"] == "?" and first.metadata["3"] == "int key"
    assert second.metadata == {"obj": "opaque!", "nan": None}


def test_write_line_refuses_anything_but_one_terminated_line(spool: Path) -> None:
    with SpoolWriter(spool, "raw") as writer:
        assert not writer.write_line(b'{"a":1}')
        assert not writer.write_line(b'{"a":1}\n{"b":2}\n')
        assert writer.stats().records_dropped == 2
    assert spool_lines(spool) == []


def test_an_unusable_spool_path_drops_warns_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the spool should be")
    clock = FakeClock()
    writer = SpoolWriter(blocked, "ro", clock=clock)
    with caplog.at_level("WARNING", logger="sidecar.client"):
        results = [writer.write(span(n)) for n in range(5)]
    assert results == [False] * 5 and writer.stats().records_dropped == 5
    assert len([r for r in caplog.records if "client.spool.write_failed" in r.message]) == 1
    blocked.unlink()
    assert writer.write(span(5)) is False  # retries opening at most once a second
    clock.advance(1.0)
    assert writer.write(span(6)) is True
    writer.close()
    assert [r.name for r in spool_records(blocked)] == ["span-6"]


@pytest.mark.parametrize("policy", ["never", "interval", "always"])
def test_fsync_policy(spool: Path, policy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fdatasync
    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    clock = FakeClock()
    writer = SpoolWriter(spool, "sync", fsync=policy, fsync_interval_s=1.0, clock=clock)
    for n in range(10):
        writer.write(span(n))
    clock.advance(1.0)
    writer.write(span(10))
    expected_while_open = {"never": 0, "interval": 1, "always": 11}[policy]
    assert len(calls) == expected_while_open
    writer.close()  # a file is synced before it is marked done, unless "never"
    assert len(calls) == expected_while_open + (policy != "never")
    assert len(spool_lines(spool)) == 11


def test_names_in_file_names_cannot_hold_separators_or_paths() -> None:
    assert safe_name_part("ä gent-1/../x") == "gent_1_.._x"
    assert safe_name_part("../") == "agent"
