"""Helpers for tests that run the daemon for real against the local services."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

PG_DSN = os.environ.get("SIDECAR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent
# Every request of a test stays on loopback, whatever the environment says.
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy"}


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)  # polling interval of a condition wait, not a synchronisation


def span(i: int = 0, **fields: Any) -> dict[str, Any]:
    """A realistic span (about 800 bytes) with a random v4 id."""
    start = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(milliseconds=i)
    rec: dict[str, Any] = {
        "id": str(uuid.uuid4()), "trace_id": str(uuid.uuid4()), "parent_span_id": None,
        "name": "llm.call", "type": "llm", "agent_name": f"agent-{i % 3}", "agent_tier": 1,
        "start_time": start.isoformat(),
        "end_time": (start + timedelta(milliseconds=120 + i % 50)).isoformat(),
        "input": {"prompt": "Summarise the customer's last three tickets in one paragraph. " * 3},
        "output": {"text": "The customer reported intermittent login failures. " * 3},
        "metadata": {"run": i, "region": "eu-west-1"}, "tags": ["bench", "llm"],
        "model": "gpt-4o-mini", "provider": "openai",
        "usage": {"prompt_tokens": 120, "completion_tokens": 48, "total_tokens": 168},
        "total_estimated_cost": 0.00042,
    }
    rec.update(fields)
    return rec


def line(rec: dict[str, Any]) -> bytes:
    return orjson.dumps(rec) + b"\n"


def append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_spans(path: Path, recs: Iterable[dict[str, Any]]) -> list[str]:
    recs = list(recs)
    append(path, b"".join(line(r) for r in recs))
    return [r["id"] for r in recs]


async def _fetch(sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def query(sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(sql, *args))


def row_count(schema: str) -> int:
    try:
        return int(query(f'SELECT count(*) FROM "{schema}".ml_observability_spans')[0][0])
    except asyncpg.UndefinedTableError:
        return 0


def span_ids(schema: str) -> list[str]:
    rows = query(f'SELECT span_id::text FROM "{schema}".ml_observability_spans')
    return [r[0] for r in rows]


class Daemon:
    """``span-sidecar run`` as a real subprocess, its log in a file."""

    def __init__(self, config: Path | None, log: Path, env: dict[str, str] | None = None,
                 cwd: Path = REPO) -> None:
        """``config`` None: no ``--config`` (the lookup order and the environment decide)."""
        self.config, self.log, self.cwd = config, log, cwd
        base = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
        self.env = {**base, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        self._log_fh = open(self.log, "ab")
        config = [] if self.config is None else ["--config", str(self.config)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", *config],
            stdout=self._log_fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        return self

    def wait_started(self, timeout: float = 30.0) -> Daemon:
        wait_until(lambda: b'"app.started"' in self.log.read_bytes() or not self.alive,
                   timeout, "the daemon to start")
        assert self.alive, self.log.read_text()[-3000:]
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._log_fh.close()
        return code

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for raw in self.log.read_bytes().splitlines():
            if f'"{name}"'.encode() in raw:
                try:
                    out.append(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    continue
        return out

    def http_port(self, timeout: float = 30.0) -> int:
        """The port its HTTP server bound (``listen: 127.0.0.1:0``)."""
        wait_until(lambda: bool(self.events("http.server.started")) or not self.alive,
                   timeout, "the HTTP server")
        assert self.alive, self.log.read_text()[-3000:]
        return int(self.events("http.server.started")[0]["port"])


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Metrics:
    """``/metrics``, each sample keyed by its name and sorted labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


class SidecarEnv:
    """One test's spool, state directory and config."""

    def __init__(self, tmp: Path, schema: str) -> None:
        self.tmp, self.schema = tmp, schema
        self.spool, self.state = tmp / "spool", tmp / "state"
        self.spool.mkdir()
        self.config = tmp / "sidecar.yaml"
        self.daemons: list[Daemon] = []
        self.configure()

    def configure(self, **sections: dict[str, Any]) -> Path:
        cfg: dict[str, Any] = {
            "spool": {"dir": str(self.spool), "state_dir": str(self.state),
                      "rescan_interval_s": 0.5},
            "batch": {"max_wait_ms": 100},
            "postgres": {"dsn": PG_DSN, "schema": self.schema},
            "opik": {"enabled": False},
            "http": {"enabled": False},
            "health": {"enabled": False},
            "shutdown": {"drain_timeout_s": 5},
            "retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.5},
            "logging": {"format": "json"},
            # the daemon invalidates cached statistics in Redis: this test's keys only
            "cache": {"key_prefix": f"{self.schema}:"},
        }
        for name, values in sections.items():
            cfg[name] = {**cfg.get(name, {}), **values}
        self.config.write_text(yaml.safe_dump(cfg))
        return self.config

    def daemon(self, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(self.config, self.tmp / f"daemon-{len(self.daemons)}.log", env)
        self.daemons.append(d)
        return d.start()

    def rows(self) -> int:
        return row_count(self.schema)

    def quarantine(self, sink: str = "postgres") -> list[dict[str, Any]]:
        path = self.state / "quarantine" / f"{sink}.jsonl"
        if not path.exists():
            return []
        return [orjson.loads(x) for x in path.read_bytes().splitlines() if x]

    def stop_all(self) -> None:
        for d in self.daemons:
            if d.alive:
                d.kill()
