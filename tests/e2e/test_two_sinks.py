"""Two sinks, each with its own progress: one down never holds the other back.

The daemon runs as a real subprocess against the real Postgres and the
project's Opik emulator: positions saved before delivery, one sink holding
the other hostage, and shutdown, each with two sinks.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.sinks.opik_ids import to_v7
from tests.opik_emulator import OpikEmulator
from tests.support import REPO, Daemon, SidecarEnv, span, wait_until, write_spans
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def emu(request: pytest.FixtureRequest) -> Iterator[OpikEmulator]:
    """The emulator; afterwards, no request of the sink may have been refused with a
    4xx other than what the test provoked (429s, and ids it told it to reject)."""
    with OpikEmulator() as e:
        yield e
        provoked = {429} | ({400, 422} if request.node.get_closest_marker("rejects") else set())
        refused = [(r.kind, r.status) for r in e.requests()
                   if 400 <= r.status < 500 and r.status not in provoked]
        assert refused == [], refused


def two_sinks(env: SidecarEnv, emu: OpikEmulator, **sections: dict[str, object]) -> None:
    """Both sinks, quick breaker and retries; ``sections`` override (a whole section)."""
    defaults: dict[str, dict[str, object]] = {
        "opik": {"enabled": True, "url": emu.base_url, "timeout_s": 1.0},
        "breaker": {"failure_threshold": 3, "reset_timeout_s": 1.0},
        "retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.3}}
    env.configure(**{**defaults, **sections})


def opik_ids(ids: list[str]) -> set[str]:
    return {str(to_v7(uuid.UUID(i))) for i in ids}


def transitions(d: Daemon, sink: str) -> list[tuple[str, str]]:
    return [(e["old"], e["new"]) for e in d.events("breaker.state.changed") if e["sink"] == sink]


def rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_opik_outage_postgres_stays_current_and_opik_catches_up(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """Opik answers 5xx, then refuses connections: Postgres stays current; afterwards
    Opik receives every id, and the breaker went closed -> open -> half_open -> closed."""
    two_sinks(sidecar_env, emu)
    emu.fail(503)
    d = sidecar_env.daemon().wait_started()
    ids = write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(500)])
    wait_until(lambda: sidecar_env.rows() == 500, 15, "Postgres during the 5xx outage")
    emu.refuse_connections()
    ids += write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(500, 1000)])
    wait_until(lambda: sidecar_env.rows() == 1000, 15, "Postgres while Opik refuses")
    assert len(emu.spans()) == 0
    wait_until(lambda: ("open", "half_open") in transitions(d, "opik"), 15, "a half-open trial")
    emu.accept_connections()
    emu.healthy()
    emu.wait_for(lambda: opik_ids(ids) <= set(emu.spans()), timeout=30, what="every id in Opik")
    wait_until(lambda: transitions(d, "opik")[-1:] == [("half_open", "closed")], 10)
    seen = transitions(d, "opik")
    assert seen[0] == ("closed", "open")
    assert all(pair in {("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                        ("half_open", "closed")} for pair in seen)
    failures_before_open = d.events("sink.batch.failed")
    assert len([e for e in failures_before_open if e["sink"] == "opik"]) >= 3
    assert transitions(d, "postgres") == []
    # every span is a root: a trace is derived for each (its request may land last)
    emu.wait_for(lambda: len(emu.traces()) == 1000, timeout=10, what="1000 derived traces")


def test_postgres_outage_opik_stays_current_and_postgres_catches_up_once(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """Postgres unreachable (connections cut): Opik stays current; Postgres then gets
    every row exactly once."""
    with TcpProxy("127.0.0.1", 5432) as proxy:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        two_sinks(sidecar_env, emu, postgres={"dsn": dsn, "connect_timeout_s": 1})
        sidecar_env.daemon().wait_started()
        path = sidecar_env.spool / "a-h-1-0.jsonl"
        ids = write_spans(path, [span(i) for i in range(100)])
        wait_until(lambda: sidecar_env.rows() == 100, 15)
        proxy.cut()
        ids += write_spans(path, [span(i) for i in range(100, 600)])
        emu.wait_for(lambda: opik_ids(ids) <= set(emu.spans()), timeout=20, what="Opik current")
        assert sidecar_env.rows() == 100
        proxy.restore()
        wait_until(lambda: sidecar_env.rows() == 600, 30, "Postgres catching up")
    from tests.support import query

    distinct = query(f'SELECT count(DISTINCT span_id) FROM "{sidecar_env.schema}"'
                     ".ml_observability_spans")[0][0]
    assert distinct == 600


def test_rate_limit_loses_nothing_and_does_not_open_the_breaker(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """429 with RateLimit-Reset pauses the sink; nothing lost, breaker stays closed."""
    two_sinks(sidecar_env, emu)
    emu.rate_limit(reset_s=0.3, times=6)
    d = sidecar_env.daemon().wait_started()
    ids = write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(300)])
    emu.wait_for(lambda: opik_ids(ids) <= set(emu.spans()), timeout=20, what="every span")
    limited = [e for e in d.events("sink.batch.failed") if e["sink"] == "opik"]
    assert limited and all(e["backpressure"] for e in limited)
    assert all(abs(e["retry_in_s"] - 0.3) < 0.05 for e in limited)
    assert transitions(d, "opik") == []


@pytest.mark.rejects
def test_invalid_record_for_opik_is_quarantined_the_rest_ships(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """Opik refuses one record (422): it is quarantined with the server's reason for
    Opik only; every other record reaches Opik, and all reach Postgres."""
    two_sinks(sidecar_env, emu)
    recs = [span(i) for i in range(50)]
    emu.reject_ids([str(to_v7(uuid.UUID(recs[31]["id"])))], status=422, reason="bad thing here")
    sidecar_env.daemon().wait_started()
    ids = write_spans(sidecar_env.spool / "a-h-1-0.jsonl", recs)
    wait_until(lambda: len(sidecar_env.quarantine("opik")) == 1, 20, "the Opik quarantine")
    emu.wait_for(lambda: len(opik_ids(ids) & set(emu.spans())) == 49, timeout=10, what="49")
    wait_until(lambda: sidecar_env.rows() == 50, 10)
    entry = sidecar_env.quarantine("opik")[0]
    assert "bad thing here" in entry["reason"] and recs[31]["id"] in entry["raw"]
    assert sidecar_env.quarantine("postgres") == []


def test_kill_9_during_opik_outage_loses_nothing(sidecar_env: SidecarEnv,
                                                 emu: OpikEmulator) -> None:
    """kill -9 with Opik down: afterwards Opik has every span, Postgres each once."""
    two_sinks(sidecar_env, emu)
    emu.fail(503)
    d = sidecar_env.daemon().wait_started()
    path = sidecar_env.spool / "a-h-1-0.jsonl"
    ids = write_spans(path, [span(i) for i in range(2000)])
    wait_until(lambda: sidecar_env.rows() == 2000, 20)
    d.kill()
    os.rename(path, path.with_name(path.name + ".done"))
    emu.healthy()
    sidecar_env.daemon().wait_started()
    emu.wait_for(lambda: opik_ids(ids) <= set(emu.spans()), timeout=30, what="every span")
    assert sidecar_env.rows() == 2000
    wait_until(lambda: not any(sidecar_env.spool.glob("*.done")), 15, "the .done file removed")
    assert max(emu.times_accepted(i) for i in opik_ids(ids)) == 1


def test_sigterm_with_opik_down_exits_in_time_and_delivers_after_restart(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """SIGTERM with a sink down: exit 0 within the drain timeout, nothing deleted that
    was not delivered, everything delivered after restart with no needless resend."""
    two_sinks(sidecar_env, emu, shutdown={"drain_timeout_s": 1.5})
    emu.fail(503)
    d = sidecar_env.daemon().wait_started()
    path = sidecar_env.spool / "a-h-1-0.jsonl"
    ids = write_spans(path, [span(i) for i in range(400)])
    done = path.with_name(path.name + ".done")
    os.rename(path, done)
    wait_until(lambda: sidecar_env.rows() == 400, 15)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    assert time.monotonic() - t0 < 1.5 + 2.5
    assert done.exists(), "deleted before Opik had it"
    left = d.events("app.drain.finished")[-1]["left"]
    assert [(s["sink"], s["reason"], s["bytes"]) for s in left] == [
        ("opik", "unreachable", done.stat().st_size)]
    emu.healthy()
    sidecar_env.daemon().wait_started()
    emu.wait_for(lambda: opik_ids(ids) <= set(emu.spans()), timeout=20, what="every span")
    wait_until(lambda: not done.exists(), 15, "the .done file removed")
    assert max(emu.times_accepted(i) for i in opik_ids(ids)) == 1


def test_rss_stays_flat_while_a_backlog_builds_and_drains(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """Opik down while 20k spans pile up: RSS after 20k is about RSS after 5k, and
    stays so while Opik drains the backlog (no memory per unshipped record)."""
    two_sinks(sidecar_env, emu, batch={"max_wait_ms": 100})
    emu.fail(503)
    d = sidecar_env.daemon().wait_started()
    assert d.proc is not None
    path = sidecar_env.spool / "a-h-1-0.jsonl"
    samples: list[float] = []
    for k in range(4):
        write_spans(path, [span(i) for i in range(k * 5000, (k + 1) * 5000)])
        wait_until(lambda k=k: sidecar_env.rows() == (k + 1) * 5000, 30)
        samples.append(rss_mb(d.proc.pid))
    emu.healthy()
    for target in range(2_000, 20_001, 2_000):  # sample RSS at points of the drain
        emu.wait_for(lambda t=target: len(emu.spans()) >= t, timeout=60, what=f"{target} spans")
        samples.append(rss_mb(d.proc.pid))
    print("RSS", [round(x) for x in samples])
    assert samples[3] - samples[0] < 25, samples
    assert max(samples) - samples[0] < 40, samples


def test_the_daemon_never_imports_the_opik_package(tmp_path: Path, emu: OpikEmulator,
                                                   pg_schema: str) -> None:
    """The running app with both sinks has no 'opik' module (~50 MB of RSS saved)."""
    script = f"""
import asyncio, sys
from pathlib import Path
from sidecar.app import App
from sidecar.config.settings import Settings
s = Settings.model_validate({{
    "spool": {{"dir": "{tmp_path}/spool", "state_dir": "{tmp_path}/state"}},
    "postgres": {{"dsn": "postgresql://postgres@127.0.0.1/test", "schema": "{pg_schema}"}},
    "opik": {{"enabled": True, "url": "{emu.base_url}"}},
    "http": {{"enabled": True, "listen": "127.0.0.1:0"}},
}})
async def main():
    app = App(s)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await app.started.wait()
    stop.set()
    await task
asyncio.run(main())
print(sorted(m for m in sys.modules if m == "opik" or m.startswith("opik.")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_health_turns_degraded_unhealthy_and_back_when_a_sink_fails(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """Opik failing: the status goes to degraded, then unhealthy (lag past critical),
    each change logged once; after recovery it is healthy again."""
    two_sinks(sidecar_env, emu, health={
        "enabled": True, "interval_s": 0.2, "window_s": 2.0,
        "thresholds": {"lag_warning_s": 0.5, "lag_critical_s": 2.0}})
    emu.fail(503)
    d = sidecar_env.daemon().wait_started()
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(50)])

    def statuses() -> list[str]:
        return [e["new"] for e in d.events("health.status.changed")]

    wait_until(lambda: "unhealthy" in statuses(), 30, "unhealthy")
    emu.healthy()
    wait_until(lambda: statuses()[-1:] == ["healthy"], 30, "healthy again")
    seen = statuses()
    first_bad = seen.index("unhealthy")
    assert "degraded" in seen[:first_bad], seen
    assert all(a != b for a, b in itertools.pairwise(seen)), "each change logged once"
    reasons = [e["reasons"] for e in d.events("health.status.changed") if e["new"] == "unhealthy"]
    assert any("opik" in r for rs in reasons for r in rs)
    # The health spans reach Opik too (after the outage), with their metadata.
    health = [s for s in emu.spans().values() if s["name"] == "span-sidecar.health"]
    assert health and health[-1]["metadata"]["agent_name"] == "span-sidecar"
    assert {"status", "sinks", "latency_ms", "rss_bytes"} <= set(health[-1]["metadata"])
