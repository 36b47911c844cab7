"""Self-monitoring of the real daemon: health spans, probes, metrics, systemd notify."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import httpx

from tests.opik_emulator import OpikEmulator
from tests.ops.helpers import cli, free_port
from tests.support import SidecarEnv, query, scrape, span, wait_until, write_spans


def _closed(c: socket.socket) -> bool:
    """True when the peer closed the connection (EOF or reset)."""
    try:
        return c.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_health_spans_reach_postgres_with_their_metadata(sidecar_env: SidecarEnv) -> None:
    """With a short interval, span-sidecar.health rows arrive with the documented metadata."""
    sidecar_env.configure(health={"enabled": True, "interval_s": 0.3})
    d = sidecar_env.daemon().wait_started()
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(20)])
    sql = (f'SELECT metadata, tags, agent_name FROM "{sidecar_env.schema}".ml_observability_spans'
           " WHERE name = 'span-sidecar.health' ORDER BY start_time")
    wait_until(lambda: sidecar_env.rows() > 20 and len(query(sql)) >= 3, 20, "health spans")
    row = query(sql)[-1]
    meta = json.loads(row["metadata"])
    assert row["agent_name"] == "span-sidecar"
    assert meta["status"] in ("healthy", "degraded", "unhealthy")
    assert row["tags"] == [meta["status"]]
    pg = meta["sinks"]["postgres"]
    assert pg["records_shipped"] >= 20 and pg["breaker"] == "closed"
    assert set(pg["lag"]) == {"bytes", "records", "seconds"}
    assert {"batch_flush", "sink_send"} <= set(pg["latency_ms"])
    assert "span_emit" in meta["latency_ms"]
    assert meta["rss_bytes"] > 10 << 20 and meta["spool"]["files"] >= 1
    assert "dsn" not in row["metadata"] and "password" not in row["metadata"]
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0


def test_probes_and_metrics_match_what_was_shipped(sidecar_env: SidecarEnv) -> None:
    """/healthz and /readyz answer 200; /metrics parses and its counters equal the rows."""
    sidecar_env.configure(http={"enabled": True, "listen": "127.0.0.1:0"})
    d = sidecar_env.daemon().wait_started()
    port = d.http_port()
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(250)])
    (sidecar_env.spool / "a-h-1-0.jsonl").open("ab").write(b"not json\n")
    wait_until(lambda: sidecar_env.rows() == 250, 15)
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    key = (("sink", "postgres"),)
    wait_until(lambda: scrape(port).get(("span_sidecar_records_quarantined_total", key)) == 1,
               10, "the quarantine counter")
    m = scrape(port)
    assert m[("span_sidecar_records_shipped_total", key)] == 250
    assert m[("span_sidecar_records_read_total", key)] == 251
    assert m[("span_sidecar_breaker_state", (("sink", "postgres"), ("state", "closed")))] == 1
    assert m[("span_sidecar_lag_bytes", key)] == 0
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0


def test_readyz_stays_ready_when_every_sink_is_down(sidecar_env: SidecarEnv) -> None:
    """Postgres unreachable: the breaker opens and /metrics shows it, but /readyz stays 200.

    The spool buffers a backend outage; an unready sidecar would take its agent's
    pod out of service for something neither a restart nor unrouting can fix.
    """
    sidecar_env.configure(http={"enabled": True, "listen": "127.0.0.1:0"},
                          postgres={"dsn": "postgresql://postgres@127.0.0.1:1/test",
                                    "connect_timeout_s": 0.5},
                          breaker={"failure_threshold": 2, "reset_timeout_s": 30})
    d = sidecar_env.daemon().wait_started()
    port = d.http_port()
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(1)])
    open_key = ("span_sidecar_breaker_state", (("sink", "postgres"), ("state", "open")))
    wait_until(lambda: scrape(port).get(open_key) == 1, 20, "the breaker to open")
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert "sink postgres breaker is open" in ready.text
    m = scrape(port)
    assert m[("span_sidecar_lag_bytes", (("sink", "postgres"),))] > 0


def test_systemd_notify_ready_and_stopping(sidecar_env: SidecarEnv, tmp_path: Path) -> None:
    """Under systemd (NOTIFY_SOCKET): READY=1 once running, STOPPING=1 on SIGTERM."""
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    try:
        d = sidecar_env.daemon(env={"NOTIFY_SOCKET": str(sock_path)}).wait_started()
        got: list[str] = []
        while "READY=1" not in got:
            got += sock.recv(4096).decode().split("\n")
        d.signal(signal.SIGTERM)
        while "STOPPING=1" not in got:
            got += sock.recv(4096).decode().split("\n")
        assert d.wait(15) == 0
        assert any(x.startswith("STATUS=shipping to postgres") for x in got)
    finally:
        sock.close()


def test_health_reasons_are_shown_and_clear_once_the_sink_recovers(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """Issue 21: Opik fails, the verdict's reasons (with when they clear) show in
    /status, /readyz and `status`; once Opik answers and the breaker closes the
    verdict is healthy within seconds (before: up to the 300-s window, unexplained)."""
    sidecar_env.configure(
        postgres={"enabled": False}, opik={"enabled": True, "url": emu.base_url},
        http={"enabled": True, "listen": f"127.0.0.1:{free_port()}"},  # `status` asks it
        health={"evaluate_interval_s": 0.2},
        breaker={"failure_threshold": 3, "reset_timeout_s": 0.5},
        retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.2})
    emu.fail(503)
    d = sidecar_env.daemon().wait_started()
    port = d.http_port()
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(20)])

    def live() -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).json())

    wait_until(lambda: any("error rate" in r["reason"] for r in live()["health_reasons"]),
               30, "an error-rate reason")
    status = live()
    rate = next(r for r in status["health_reasons"] if "error rate" in r["reason"])
    assert status["health"] == "unhealthy" and rate["reason"].startswith("opik: error rate")
    assert rate["clears_at"].endswith("Z") and 0 < rate["clears_in_s"] <= 310
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    assert any(n.startswith("information: health unhealthy: opik: error rate")
               and "clears by" in n for n in ready["reasons"]), ready
    text = cli("status", "--config", str(sidecar_env.config), cwd=sidecar_env.tmp).stdout
    assert "  health unhealthy: opik: error rate" in text and "clears by" in text, text

    emu.healthy()
    wait_until(lambda: len(emu.spans()) == 20, 30, "the spans shipped")
    wait_until(lambda: (s := live())["health"] == "healthy" and s["health_reasons"] == [],
               15, "the verdict to clear")
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    assert not any("health" in n for n in ready["reasons"]), ready
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0


def test_idle_http_clients_are_closed_and_healthz_keeps_answering(
        sidecar_env: SidecarEnv) -> None:
    """Issue 17: 200 connections that send half a request head and wait. The
    daemon answers /healthz while they are open and closes each within its idle
    timeout (5 s; before: an hour of keep-alive, a descriptor each)."""
    sidecar_env.configure(http={"enabled": True, "listen": "127.0.0.1:0"})
    d = sidecar_env.daemon().wait_started()
    port = d.http_port()
    conns = []
    try:
        for _ in range(200):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            conns.append(c)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        for c in conns:  # blocks until the daemon closes it (the socket timeout fails it)
            assert _closed(c)
        assert d.alive
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        for c in conns:
            c.close()
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
