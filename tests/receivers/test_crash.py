"""kill -9 while requests are in flight: every request that was answered with
success is shipped after the restart, exactly once (issue 20's acceptance)."""

from __future__ import annotations

import http.client
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import orjson
from uuid6 import uuid7

from tests.opik_emulator import OpikEmulator
from tests.receivers.helpers import receiver_daemon
from tests.support import SidecarEnv, query, wait_until

T = "2026-01-02T03:04:05.000006Z"


def batch(n: int) -> tuple[list[str], bytes]:
    trace = str(uuid7())
    ids = [str(uuid7()) for _ in range(n)]
    spans = [{"id": i, "trace_id": trace, "name": "s", "start_time": T} for i in ids]
    return ids, orjson.dumps({"spans": spans})


def sender(port: int, answered: list[str], stop: threading.Event) -> None:
    """Send batches one after another until the connection fails; keep the
    ids of every batch answered 204."""
    while not stop.is_set():
        ids, body = batch(20)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/api/v1/private/spans/batch", body,
                         {"Content-Type": "application/json"})
            status = conn.getresponse().status
            conn.close()
        except OSError:
            return
        if status == 204:
            answered.extend(ids)


@contextmanager
def senders(port: int, n: int = 4) -> Iterator[list[list[str]]]:
    """``n`` senders posting batches until the block ends; each one's answered ids."""
    answered: list[list[str]] = [[] for _ in range(n)]
    stop = threading.Event()
    threads = [threading.Thread(target=sender, args=(port, a, stop)) for a in answered]
    for t in threads:
        t.start()
    try:
        yield answered
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def stored(schema: str) -> list[Any]:
    """Each stored span id and its rows (none before the table is migrated)."""
    try:
        return rows_by_id(schema)
    except asyncpg.UndefinedTableError:
        return []


def rows_by_id(schema: str) -> list[Any]:
    return query(f'SELECT span_id::text AS id, count(*) AS n FROM "{schema}".'
                 "ml_observability_spans GROUP BY span_id")


def test_every_answered_request_is_shipped_once_after_kill_9(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    daemon, url = receiver_daemon(sidecar_env, emu)
    port = int(url.rsplit(":", 1)[1])
    with senders(port) as answered:
        wait_until(lambda: sum(map(len, answered)) >= 400, 20, "requests answered")
        daemon.kill()  # while the senders are mid-request
    acked = {i for a in answered for i in a}
    sidecar_env.daemon().wait_started()
    wait_until(lambda: {r["id"] for r in stored(sidecar_env.schema)} >= acked, 20,
               "every answered span in Postgres")
    assert all(r["n"] == 1 for r in stored(sidecar_env.schema))
    wait_until(lambda: set(emu.spans()) >= acked, 20,
               "every answered span in Opik")


def test_at_a_stop_the_drain_ships_every_answered_request(
        sidecar_env: SidecarEnv, emu: OpikEmulator) -> None:
    """SIGTERM: the receiver stops listening first, so every request it
    answered is in the spool the drain ships before the daemon exits."""
    daemon, url = receiver_daemon(sidecar_env, emu)
    port = int(url.rsplit(":", 1)[1])
    with senders(port) as answered:
        wait_until(lambda: sum(map(len, answered)) >= 400, 20, "requests answered")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
    acked = {i for a in answered for i in a}
    assert {r["id"] for r in stored(sidecar_env.schema)} >= acked  # no restart needed
    assert acked <= set(emu.spans())
