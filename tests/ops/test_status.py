"""``span-sidecar status``: fast on a big backlog, and live figures while the daemon runs."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import orjson

from sidecar.commands.status import SAMPLE_BYTES, count_lines, human_bytes, human_duration
from tests.opik_emulator import OpikEmulator
from tests.ops.helpers import cli, free_port
from tests.support import SidecarEnv, span, wait_until, write_spans


def test_lines_are_counted_exactly_in_small_parts_and_estimated_in_big_ones(
        tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    lines = [orjson.dumps({"i": i, "pad": "x" * (i % 50)}) + b"\n" for i in range(100_000)]
    path.write_bytes(b"".join(lines))
    size = path.stat().st_size
    assert count_lines(path, 0, 3000) == (b"".join(lines)[:3000].count(b"\n"), False)
    estimate, estimated = count_lines(path, 0, size)
    assert estimated and abs(estimate - 100_000) < 2_000
    offset = size - SAMPLE_BYTES
    exact, guessed = count_lines(path, offset, size)
    assert not guessed and exact == b"".join(lines)[offset:].count(b"\n")
    assert count_lines(tmp_path / "gone.jsonl", 0, 10) == (0, False)


def test_human_units() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(143_000_000) == "136.4 MiB"
    assert human_duration(42) == "42s" and human_duration(250) == "4m 10s"
    assert human_duration(7300) == "2h 01m" and human_duration(90000) == "1d 01h"


def test_status_on_a_million_line_backlog_answers_quickly(sidecar_env: SidecarEnv) -> None:
    """A regression guard (the README gives the measured figure): the old
    status read every byte of the backlog to count its lines."""
    rec = orjson.dumps({"id": str(uuid.uuid4()), "trace_id": str(uuid.uuid4()), "name": "x",
                        "start_time": "2026-01-01T00:00:00Z"}) + b"\n"
    with (sidecar_env.spool / "big-h-1-0.jsonl").open("wb") as fh:
        block = rec * 10_000
        for _ in range(100):
            fh.write(block)
    started = time.monotonic()
    result = cli("status", "--json", "--config", str(sidecar_env.config), cwd=sidecar_env.tmp)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    (sink,) = json.loads(result.stdout)["sinks"]
    assert sink["records_behind_estimated"] and abs(sink["records_behind"] - 1_000_000) < 10_000
    assert took < 5.0, f"status took {took:.2f}s"


def test_status_says_the_daemon_is_not_running(sidecar_env: SidecarEnv) -> None:
    port = free_port()
    sidecar_env.configure(http={"enabled": True, "listen": f"127.0.0.1:{port}"})
    result = cli("status", "--config", str(sidecar_env.config), cwd=sidecar_env.tmp)
    assert f"daemon: not running (nothing answers at 127.0.0.1:{port}" in result.stdout


def test_status_names_rate_and_eta_while_the_daemon_catches_up(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """Opik answers slowly (each request held 0.3 s), so a backlog drains at a steady pace."""
    port = free_port()
    sidecar_env.configure(
        postgres={"enabled": False},
        opik={"enabled": True, "url": emu.base_url, "max_batch_records": 100},
        http={"enabled": True, "listen": f"127.0.0.1:{port}"})
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", (span(i) for i in range(20_000)))
    emu.stall(hold_s=0.3, then_store=True)
    daemon = sidecar_env.daemon().wait_started()

    def live() -> dict[str, object]:
        out = cli("status", "--json", "--config", str(sidecar_env.config), cwd=sidecar_env.tmp)
        report = json.loads(out.stdout)
        return {"running": report["daemon"]["running"], **report["sinks"][0].get("daemon", {})}

    wait_until(lambda: bool((d := live())["running"] and d["records_per_s"] and d["eta_s"]),
               40, "a rate and an ETA from the running daemon")
    text = cli("status", "--config", str(sidecar_env.config), cwd=sidecar_env.tmp).stdout
    assert "daemon: running (pid" in text, text
    assert "records/s" in text and "ETA " in text, text
    assert 0 < len(emu.spans()) < 20_000  # still catching up
    emu.healthy()
    # the drain ships what the spool holds or exits non-zero: let it catch up first
    wait_until(lambda: len(emu.spans()) == 20_000, 60, "the backlog shipped")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
