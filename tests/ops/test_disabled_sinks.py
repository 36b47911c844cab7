"""A disabled sink's backlog is never deleted silently (issue 21).

Before: after a restart without ``OPIK_URL_OVERRIDE``, the janitor saw only
Postgres, deleted 207 files Opik had never received, and ``status`` showed no
Opik row. Now the janitor keeps them for ``spool.disabled_sink_keep_s`` from
when a daemon first saw the sink disabled, or until ``forget-sink``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from sidecar.clock import FakeClock
from sidecar.config.settings import SpoolSettings
from sidecar.spool.checkpoints import CheckpointStore, FileMark
from sidecar.spool.disabled_sinks import disabled_file, forget
from sidecar.spool.janitor import Janitor
from sidecar.spool.state import StateDir
from sidecar.spool.tailer import FilePosition
from tests.ops.helpers import cli

KEEP_S = 3600.0


class Spool:
    """Two finished files Postgres (enabled) shipped whole; a disabled Opik got
    all of ``a`` and 10 bytes of ``b``."""

    def __init__(self, tmp: Path, keep_s: float = KEEP_S) -> None:
        self.settings = SpoolSettings(dir=tmp / "spool", state_dir=tmp / "state",
                                      disabled_sink_keep_s=keep_s)
        self.settings.dir.mkdir()
        self.state = StateDir(self.settings.state_dir)
        self.a = self._file("a-h-1-0.jsonl.done", b'{"n": 1}\n' * 20)
        self.b = self._file("b-h-1-0.jsonl.done", b'{"n": 2}\n' * 30)
        CheckpointStore(self.state, "opik").save({
            _key(self.a): _mark(self.a, self.a.stat().st_size), _key(self.b): _mark(self.b, 10)})

    def _file(self, name: str, data: bytes) -> Path:
        path = self.settings.dir / name
        path.write_bytes(data)
        return path

    def positions(self) -> dict[tuple[int, int], FilePosition]:
        """Postgres's reader: every present file acknowledged to its end."""
        out = {}
        for path in (self.a, self.b):
            if path.exists():
                st = path.stat()
                out[(st.st_dev, st.st_ino)] = FilePosition(
                    st.st_dev, st.st_ino, str(path), st.st_size, st.st_mtime, st.st_size,
                    finished=True, deleted=False, skipping=False)
        return out

    def janitor(self, clock: FakeClock, enabled: tuple[str, ...] = ("postgres",)) -> Janitor:
        return Janitor([self.positions], self.settings, clock, enabled=enabled)


def _key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _mark(path: Path, offset: int) -> FileMark:
    st = path.stat()
    return FileMark(st.st_dev, st.st_ino, "", 0, offset, str(path))


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path)


def test_the_disabled_sinks_backlog_is_kept_and_named_at_start(spool: Spool) -> None:
    clock = FakeClock()
    janitor = spool.janitor(clock)
    with capture_logs() as logs:
        janitor.start()
        assert janitor.sweep() == 1  # a: every sink has it; b: Opik never got it whole
    assert not spool.a.exists() and spool.b.exists()
    (kept,) = [e for e in logs if e["event"] == "spool.backlog.kept"]
    assert kept["log_level"] == "warning" and kept["sink"] == "opik"
    assert (kept["files_behind"], kept["bytes_behind"]) == (1, spool.b.stat().st_size - 10)
    assert kept["kept_s"] == KEEP_S and "forget-sink opik" in kept["hint"]
    assert orjson.loads(disabled_file(spool.state, "opik").read_bytes())["since"] == clock.wall()


def test_the_backlog_is_released_after_the_keep_time(spool: Spool) -> None:
    clock = FakeClock()
    janitor = spool.janitor(clock)
    janitor.sweep()
    clock.advance(KEEP_S - 1)
    assert janitor.sweep() == 0 and spool.b.exists()
    clock.advance(1)
    with capture_logs() as logs:
        assert janitor.sweep() == 1
    assert not spool.b.exists()
    assert [(e["event"], e["why"]) for e in logs if e["event"] == "spool.backlog.released"] == [
        ("spool.backlog.released", "keep time over")]


def test_a_restart_does_not_extend_the_keep_time(spool: Spool) -> None:
    clock = FakeClock()
    spool.janitor(clock).sweep()  # the first daemon to see Opik disabled
    clock.advance(KEEP_S - 100)
    restarted = spool.janitor(clock)
    assert restarted.sweep() == 0 and spool.b.exists()
    clock.advance(100)
    assert restarted.sweep() == 1 and not spool.b.exists()


def test_forgetting_the_sink_releases_its_backlog_on_a_running_janitor(spool: Spool) -> None:
    clock = FakeClock()
    janitor = spool.janitor(clock)
    janitor.sweep()
    gone = forget(spool.state, "opik")
    assert spool.state.checkpoint_file("opik") in gone
    assert disabled_file(spool.state, "opik") in gone
    assert janitor.sweep() == 1 and not spool.b.exists()


def test_a_sink_enabled_again_starts_a_new_keep_time_when_disabled_later(spool: Spool) -> None:
    clock = FakeClock()
    spool.janitor(clock).sweep()
    assert disabled_file(spool.state, "opik").exists()
    spool.janitor(clock, enabled=("postgres", "opik")).start()
    assert not disabled_file(spool.state, "opik").exists()


def test_a_keep_time_of_zero_keeps_nothing_but_still_names_the_sink(tmp_path: Path) -> None:
    spool = Spool(tmp_path, keep_s=0)
    with capture_logs() as logs:
        assert spool.janitor(FakeClock()).sweep() == 2
    assert [e["sink"] for e in logs if e["event"] == "spool.backlog.kept"] == ["opik"]


# -- the commands ------------------------------------------------------------------------------

def _config(spool: Spool, tmp: Path, opik: bool = False) -> Path:
    config = tmp / "sidecar.yaml"
    config.write_text(json.dumps({
        "spool": {"dir": str(spool.settings.dir), "state_dir": str(spool.settings.state_dir),
                  "disabled_sink_keep_s": KEEP_S},
        "postgres": {"enabled": False}, "http": {"enabled": False},
        "opik": {"enabled": opik, "url": "http://127.0.0.1:9/api"}}))
    return config


def test_status_shows_the_disabled_sink_and_how_long_its_files_are_kept(
        spool: Spool, tmp_path: Path) -> None:
    config = _config(spool, tmp_path)
    result = cli("status", "--json", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (opik,) = json.loads(result.stdout)["sinks"]
    assert opik["sink"] == "opik" and opik["enabled"] is False and opik["breaker"] == "disabled"
    assert (opik["files_behind"], opik["bytes_behind"]) == (1, spool.b.stat().st_size - 10)
    assert opik["kept_until"] is None  # no daemon saw it disabled yet
    spool.janitor(FakeClock(wall=time.time())).start()  # a daemon starts and sees it
    result = cli("status", "--json", "--config", str(config), cwd=tmp_path)
    (opik,) = json.loads(result.stdout)["sinks"]
    assert KEEP_S - 120 < opik["kept_for_s"] <= KEEP_S
    text = cli("status", "--config", str(config), cwd=tmp_path).stdout
    line = next(x for x in text.splitlines() if "opik" in x)
    assert line.startswith("  opik      disabled; never received: 29 records, 260 B in 1 files; "
                           "kept "), text
    assert line.endswith(" more; `span-sidecar forget-sink opik` lets them go"), text


def test_forget_sink_refuses_an_enabled_sink_and_forgets_a_disabled_one(
        spool: Spool, tmp_path: Path) -> None:
    enabled = _config(spool, tmp_path, opik=True)
    refused = cli("forget-sink", "opik", "--config", str(enabled), cwd=tmp_path)
    assert refused.returncode == 2 and "sink opik is enabled" in refused.stderr
    assert spool.state.checkpoint_file("opik").exists()
    unknown = cli("forget-sink", "nosuch", "--config", str(enabled), cwd=tmp_path)
    assert unknown.returncode == 2 and "no sink is named 'nosuch'" in unknown.stderr
    disabled = _config(spool, tmp_path)
    done = cli("forget-sink", "opik", "--config", str(disabled), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"removed {spool.state.checkpoint_file('opik')}" in done.stdout
    assert not spool.state.checkpoint_file("opik").exists()
    again = cli("forget-sink", "opik", "--config", str(disabled), cwd=tmp_path)
    assert again.returncode == 0 and "nothing to forget" in again.stdout
