"""Exhausted resources with the real daemon: it stays up, says so, and loses nothing.

(a) The file limit: a hard RLIMIT_NOFILE the daemon cannot raise, and more
spool files than it allows. (b) A full file system under the state directory
(a small tmpfs, mounted when the sandbox lets root do it): the quarantine and
the checkpoints cannot be written until space is freed.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Daemon, SidecarEnv, scrape, span, span_ids, wait_until, write_spans

FILE_LIMIT = 18
SPOOL_FILES = 150


class LimitedDaemon(Daemon):
    """The daemon under a hard file limit it cannot raise."""

    def __init__(self, *args: object, nofile: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.nofile = nofile

    def start(self) -> Daemon:
        self._log_fh = open(self.log, "ab")
        assert self.config is not None
        limit = self.nofile

        def lower() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(self.config)],
            stdout=self._log_fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
            preexec_fn=lower)
        return self


def _healthz(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code


def test_the_file_limit_reached_is_waited_out_and_every_span_is_delivered(
        sidecar_env: SidecarEnv) -> None:
    """150 spool files under a hard limit of 64 descriptors: the readers hold a
    few, so nothing exits, /healthz answers, and every span reaches Postgres."""
    env = sidecar_env
    env.configure(http={"enabled": True, "listen": "127.0.0.1:0"},
                  spool={"rescan_interval_s": 0.2})
    ids: list[str] = []
    for i in range(SPOOL_FILES):
        ids += write_spans(env.spool / f"agent-{i:03}-1-0.jsonl", [span(i * 10 + j)
                                                                  for j in range(4)])
    d = LimitedDaemon(env.config, env.tmp / "daemon-limited.log", nofile=FILE_LIMIT)
    env.daemons.append(d)
    d.start()
    port = d.http_port()
    wait_until(lambda: env.rows() >= len(ids) or not d.alive, 90, "every span delivered")
    assert d.alive, d.log.read_text()[-3000:]
    assert _healthz(port) == 200
    assert sorted(span_ids(env.schema)) == sorted(ids)
    assert scrape(port)[("process_open_fds", ())] < FILE_LIMIT
    # More arrive while it runs: still delivered.
    more = write_spans(env.spool / "late-1-0.jsonl", [span(5000 + j) for j in range(50)])
    wait_until(lambda: env.rows() >= len(ids) + len(more), 60, "the late spans")
    assert d.alive and _healthz(port) == 200
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log.read_text()[-3000:]


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for the state directory (skipped where mounting is refused)."""
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    return filler


def test_a_full_state_directory_is_waited_out_and_nothing_is_lost(
        sidecar_env: SidecarEnv, small_state: Path) -> None:
    """Bad lines while the quarantine's file system is full: the daemon stays
    up and reports degraded; once space is freed, every bad line is in the
    quarantine and every good span in Postgres."""
    env = sidecar_env
    assert small_state == env.state
    env.configure(http={"enabled": True, "listen": "127.0.0.1:0"},
                  health={"evaluate_interval_s": 0.2})
    d = env.daemon()
    port = d.http_port()
    wait_until(lambda: (env.state / "quarantine" / "postgres.jsonl").exists(), 20, "quarantine")
    filler = _fill(env.state)
    good: list[str] = []
    bad = 0
    for n in range(5):
        path = env.spool / f"agent-{n}-1-0.jsonl"
        good += write_spans(path, [span(n * 100 + j) for j in range(30)])
        with path.open("ab") as fh:
            for k in range(20):
                fh.write(b'{"not": "a span", "pad": "' + b"x" * 2000 + b'", "k": %d}\n' % k)
                bad += 1
        good += write_spans(path, [span(n * 100 + 50 + j) for j in range(30)])

    def degraded() -> bool:
        m = scrape(port)
        return m.get(("span_sidecar_resource_faults_active", (("resource", "quarantine"),)),
                     0) >= 1 and m.get(("span_sidecar_health_status",
                                        (("status", "degraded"),)), 0) == 1

    wait_until(lambda: degraded() or not d.alive, 30, "a degraded verdict")
    assert d.alive and _healthz(port) == 200
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    assert any("ENOSPC" in r for r in ready["reasons"]), ready
    assert d.events("resource.fault.started")
    os.unlink(filler)
    wait_until(lambda: (len(env.quarantine()) >= bad and env.rows() >= len(good))
               or not d.alive, 60, "the quarantine and Postgres to catch up")
    assert d.alive, d.log.read_text()[-3000:]
    assert sorted(span_ids(env.schema)) == sorted(good)
    assert len(env.quarantine()) == bad
    wait_until(lambda: not degraded(), 30, "the fault to clear")
    assert d.events("resource.fault.cleared")
    # One start event per episode, not one per failed try.
    started = d.events("resource.fault.started")
    tries = sum(v for (name, _), v in scrape(port).items()
                if name == "span_sidecar_resource_faults_total")
    assert tries > len(started)
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log.read_text()[-3000:]
