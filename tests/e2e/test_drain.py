"""The drain at SIGTERM, with the real daemon, Postgres and the Opik emulator.

The Kubernetes order: the agent writes its last spans, renames its file to
``.done`` and exits; the native sidecar gets SIGTERM at once; the spool (an
``emptyDir``) dies with the pod, so there is no next start. Every span must
be in both sinks by the time the process exits 0; a sink that cannot be
reached must not hold the other's drain; a drain cut short must say so in
its exit status and log.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.exit_codes import EXIT_DRAIN_INCOMPLETE
from tests.e2e.test_two_sinks import opik_ids, two_sinks
from tests.opik_emulator import OpikEmulator
from tests.support import Daemon, SidecarEnv, scrape, span, span_ids, wait_until, write_spans
from tests.tcp_proxy import TcpProxy


def last_spans(env: SidecarEnv, n: int, first: int = 0) -> tuple[list[str], Path]:
    """An agent's last act: write ``n`` spans, rename the file to ``.done``."""
    path = env.spool / f"agent-h-1-{first}.jsonl"
    ids = write_spans(path, [span(i) for i in range(first, first + n)])
    done = path.with_name(path.name + ".done")
    os.rename(path, done)
    return ids, done


def running_and_idle(env: SidecarEnv, emu: OpikEmulator | None) -> list[str]:
    """The agent's earlier spans, stored by every sink: the daemon has read the
    spool and waits for the watcher's next word."""
    ids = write_spans(env.spool / "agent-h-0-0.jsonl", [span(i) for i in range(10)])
    wait_until(lambda: env.rows() == len(ids), 15, "the earlier spans in Postgres")
    if emu is not None:
        emu.wait_for(lambda: opik_ids(ids) <= set(emu.spans()), timeout=15, what="in Opik")
    return ids


def finished(d: Daemon) -> dict[str, Any]:
    events = d.events("app.drain.finished")
    assert len(events) == 1, d.log.read_text()[-3000:]
    return events[0]


@pytest.mark.parametrize("gap_s", [0.0, 0.01, 0.05])
def test_sigterm_right_after_the_last_spans_ships_them_to_both_sinks(
        sidecar_env: SidecarEnv, emu: OpikEmulator, gap_s: float) -> None:
    """Spans written and renamed, SIGTERM within 0-50 ms, no restart: when the
    process has exited 0, every span is in Postgres and in Opik."""
    two_sinks(sidecar_env, emu)
    d = sidecar_env.daemon().wait_started()
    ids = running_and_idle(sidecar_env, emu)
    more, _ = last_spans(sidecar_env, 100, first=len(ids))
    ids += more
    if gap_s:
        threading.Event().wait(gap_s)  # the scenario's gap, not a synchronisation
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log.read_text()[-3000:]
    assert sorted(span_ids(sidecar_env.schema)) == sorted(ids)
    assert opik_ids(ids) <= set(emu.spans())
    report = finished(d)
    assert report["drained"] is True and report["left"] == [], report


def test_sigterm_with_opik_unreachable_ships_postgres_and_names_opiks_backlog(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """Opik refuses connections: SIGTERM ships every span to Postgres and exits 0
    long before the (60 s) drain timeout; the report names what Opik was left."""
    two_sinks(sidecar_env, emu, shutdown={"drain_timeout_s": 60})
    emu.refuse_connections()
    d = sidecar_env.daemon().wait_started()
    ids, done = last_spans(sidecar_env, 100)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log.read_text()[-3000:]  # 30 s: well under the timeout
    assert time.monotonic() - t0 < 30
    assert sorted(span_ids(sidecar_env.schema)) == sorted(ids)
    report = finished(d)
    assert report["drained"] is True
    assert [(s["sink"], s["reason"], s["files"], s["bytes"]) for s in report["left"]] == [
        ("opik", "unreachable", 1, done.stat().st_size)]
    assert [e["sink"] for e in d.events("drain.sink.skipped")] == ["opik"]


def test_sigterm_with_opik_failing_for_a_while_skips_it_at_once(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """Opik answering 503 with its breaker open when the signal comes: skipped
    at once (no wait for the breaker), Postgres has every span, exit 0."""
    two_sinks(sidecar_env, emu, shutdown={"drain_timeout_s": 60},
              breaker={"failure_threshold": 2, "reset_timeout_s": 300})
    emu.fail(503)
    d = sidecar_env.daemon().wait_started()
    ids = write_spans(sidecar_env.spool / "agent-h-1-0.jsonl", [span(i) for i in range(50)])
    wait_until(lambda: any(e["sink"] == "opik" and e["new"] == "open"
                           for e in d.events("breaker.state.changed")), 20, "Opik's breaker open")
    more, done = last_spans(sidecar_env, 50, first=50)
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log.read_text()[-3000:]
    assert sorted(span_ids(sidecar_env.schema)) == sorted(ids + more)
    left = finished(d)["left"]
    assert [(s["sink"], s["reason"], s["files"]) for s in left] == [("opik", "unreachable", 2)]
    assert left[0]["bytes"] == (sidecar_env.spool / "agent-h-1-0.jsonl").stat().st_size + \
        done.stat().st_size
    assert [e["reason"] for e in d.events("drain.sink.skipped")] == ["breaker open"]


def test_a_drain_cut_short_by_its_timeout_exits_non_zero_and_says_what_it_left(
        sidecar_env: SidecarEnv) -> None:
    """Postgres turned into a black hole (connected, answering nothing) just before
    the last spans: the 1 s drain timeout cuts the drain, the process exits with
    EXIT_DRAIN_INCOMPLETE and logs drained: false with Postgres's files and bytes."""
    with TcpProxy("127.0.0.1", 5432) as proxy:
        sidecar_env.configure(postgres={"dsn": f"postgresql://postgres@127.0.0.1:{proxy.port}/test"},
                              shutdown={"drain_timeout_s": 1},
                              http={"enabled": True, "listen": "127.0.0.1:0"})
        d = sidecar_env.daemon().wait_started()
        port = d.http_port()
        write_spans(sidecar_env.spool / "agent-h-1-0.jsonl", [span(0)])
        # Acknowledged by the daemon, not only visible in the table: the commit's
        # answer could still be in the proxy when it freezes, and the first file
        # would then rightly be reported as left.
        wait_until(lambda: scrape(port).get(("span_sidecar_records_shipped_total",
                                             (("sink", "postgres"),))) == 1,
                   15, "a first span acknowledged")
        proxy.freeze()
        _, done = last_spans(sidecar_env, 100, first=1)
        d.signal(signal.SIGTERM)
        code = d.wait(30)
        proxy.thaw()
    assert code == EXIT_DRAIN_INCOMPLETE, d.log.read_text()[-3000:]
    report = finished(d)
    assert report["drained"] is False and report["exit_code"] == EXIT_DRAIN_INCOMPLETE
    assert [(s["sink"], s["reason"], s["files"], s["bytes"]) for s in report["left"]] == [
        ("postgres", "timeout", 1, done.stat().st_size)]
