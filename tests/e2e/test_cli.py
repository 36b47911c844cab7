"""The command line as operators use it: exit codes, messages, status, replay, emit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from tests.support import REPO, SidecarEnv, append, line, span, wait_until, write_spans


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=60)


def test_check_config_lists_every_error_with_key_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("spool:\n  dir: /tmp/x\n  dirr: /tmp/y\nbatch:\n  max_records: many\n")
    result = cli("check-config", "--config", str(cfg))
    assert result.returncode == 2
    assert "spool.dirr" in result.stderr and "unknown key" in result.stderr
    assert "batch.max_records" in result.stderr and str(cfg) in result.stderr


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("postgres:\n  dsn: postgresql://u:${PGPW}@db/x\n  password: ${PGPW}\n"
                   "opik:\n  api_key: ${OPIK_API_KEY}\n")
    result = cli("check-config", "--config", str(cfg),
                 env={"PGPW": "hunter2-secret", "OPIK_API_KEY": "opik-secret-key"})
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout and "opik-secret-key" not in result.stdout
    assert "postgresql://u:***@db/x" in result.stdout
    assert "enabled: true" in result.stdout.split("opik:")[1]  # on because OPIK_API_KEY is set


def test_shipped_config_is_valid() -> None:
    result = cli("check-config", "--config", str(REPO / "config" / "sidecar.yaml"))
    assert result.returncode == 0, result.stderr


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "file not found" in result.stderr


def test_migrate_command_is_idempotent(sidecar_env: SidecarEnv) -> None:
    first = cli("migrate", "--config", str(sidecar_env.config))
    assert first.returncode == 0 and "0001_spans" in first.stdout, first.stderr
    second = cli("migrate", "--config", str(sidecar_env.config))
    assert second.returncode == 0 and "up to date" in second.stdout


def test_status_reports_bytes_behind_without_a_daemon(sidecar_env: SidecarEnv) -> None:
    """Before any daemon ran, everything is behind; after, nothing is."""
    path = sidecar_env.spool / "a-h-1-0.jsonl"
    write_spans(path, [span(i) for i in range(10)])
    before = json.loads(cli("status", "--json", "--config", str(sidecar_env.config)).stdout)
    assert before["sinks"][0]["bytes_behind"] == path.stat().st_size
    assert before["sinks"][0]["records_behind"] == 10
    d = sidecar_env.daemon().wait_started()
    wait_until(lambda: sidecar_env.rows() == 10, 10)
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    after = json.loads(cli("status", "--json", "--config", str(sidecar_env.config)).stdout)
    assert after["sinks"][0]["bytes_behind"] == 0 and after["sinks"][0]["breaker"] == "closed"
    text = cli("status", "--config", str(sidecar_env.config)).stdout
    assert "postgres" in text and "behind: 0 records, 0 B in 0 files" in text


def test_emit_writes_a_span_that_reaches_postgres(sidecar_env: SidecarEnv) -> None:
    sidecar_env.daemon().wait_started()
    result = cli("emit", "--name", "smoke", "--agent", "ops", "--config", str(sidecar_env.config))
    assert result.returncode == 0, result.stderr
    span_id = result.stdout.strip()
    assert result.stderr.startswith(f"wrote 1 span to {sidecar_env.spool}/ops-")
    from tests.support import query

    sql = f'SELECT name, agent_name FROM "{sidecar_env.schema}".ml_observability_spans ' \
          "WHERE span_id = $1::uuid"
    wait_until(lambda: len(query(sql, span_id)) == 1, 10, "the emitted span")
    assert tuple(query(sql, span_id)[0]) == ("smoke", "ops")


def test_replay_quarantine_ships_what_is_now_valid(sidecar_env: SidecarEnv) -> None:
    """Quarantined records that parse now are shipped; the rest stay quarantined."""
    d = sidecar_env.daemon().wait_started()
    fixable = span(1)
    append(sidecar_env.spool / "a-h-1-0.jsonl", line(fixable) + b"{broken\n")
    wait_until(lambda: len(sidecar_env.quarantine()) == 1, 10)
    # Simulate an entry that failed under an older rule but is valid now.
    qpath = sidecar_env.state / "quarantine" / "postgres.jsonl"
    valid = span(2)
    entry = {"sink": "postgres", "source": "x", "offset": 0, "reason": "old rule",
             "raw": orjson.dumps(valid).decode()}
    append(qpath, orjson.dumps(entry) + b"\n")
    result = cli("replay-quarantine", "--sink", "postgres", "--json",
                 "--config", str(sidecar_env.config))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["results"][0]
    assert summary["replayed"] == 1 and summary["still_invalid"] == 1
    wait_until(lambda: sidecar_env.rows() == 2, 10, "the replayed span")
    remaining = sidecar_env.quarantine()
    assert len(remaining) == 1 and remaining[0]["raw"] == "{broken"
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0


def test_secrets_never_reach_the_logs(sidecar_env: SidecarEnv) -> None:
    """A DSN password and an Opik key stay out of every log line, even on failures."""
    sidecar_env.configure(postgres={"dsn": "postgresql://u:SECRETPW@127.0.0.1:1/test",
                                    "connect_timeout_s": 0.5})
    d = sidecar_env.daemon(env={"OPIK_API_KEY": "SECRETKEY"}).wait_started()
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(1)])
    wait_until(lambda: len(d.events("sink.batch.failed")) >= 1, 20, "a failed attempt")
    d.signal(signal.SIGTERM)
    d.wait(15)
    text = d.log.read_text()
    assert "SECRETPW" not in text and "SECRETKEY" not in text
    assert "postgresql://u:***@127.0.0.1:1/test" in text
