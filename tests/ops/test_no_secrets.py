"""No secret in any log line or output: each failure path driven with known secrets set.

The daemon (``span-sidecar run``, JSON and console logs) and ``check-config``
(with and without ``--connect``) run for real against the local Postgres,
Redis and the Opik emulator, with secrets in every place a secret lives: the
DSN's userinfo and query, ``postgres.password``, ``opik.api_key``,
``opik.url``'s query, the Redis URL. Every byte they write (stdout and
stderr, every log line) is searched for each secret.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.opik_emulator import OpikEmulator
from tests.ops.helpers import cli, free_port
from tests.support import Daemon, SidecarEnv, span, wait_until, write_spans

PG = "pgdsnpw-Zq81x"  # the password inside the DSN
FIELD = "pgfield-Yv27k"  # postgres.password
OPIK = "opikkey-Xw93m"  # opik.api_key
QUERY = "querytok-Us55h"  # a secret query parameter
REDIS = "redispw-Vt46j"  # the Redis URL's password
SECRETS = (PG, FIELD, OPIK, QUERY, REDIS)
HOST = "127.0.0.1:5432"

# Every DSN form that fails (or may fail: TLS) on the local server.
DSNS = {
    "bad_port": f"postgresql://app:{PG}@127.0.0.1:5x32/test",
    "port_out_of_range": f"postgresql://app:{PG}@127.0.0.1:99999/test",
    "malformed_url": f"postgresql://app:{PG}@[127.0.0.1/test",
    "key_value": f"host=127.0.0.1 port=5432 user=postgres password={PG} dbname=test",
    "no_such_database": f"postgresql://postgres:{PG}@{HOST}/no_such_db_x9?password={PG}",
    "no_such_role": f"postgresql://no_such_role_x9:{PG}@{HOST}/test",
    "tls_required": f"postgresql://postgres:{PG}@{HOST}/test?sslmode=require",
}


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def assert_clean(text: str) -> None:
    found = leaks(text)
    assert not found, f"secrets {found} in:\n{text[-4000:]}"


def stop(daemon: Daemon) -> str:
    daemon.signal(signal.SIGTERM)
    daemon.wait(30)
    return daemon.log.read_text(errors="replace")


@pytest.fixture
def closed_port() -> int:
    return free_port()  # nothing listens on it


def postgres(dsn: str) -> dict[str, Any]:
    return {"dsn": dsn, "password": FIELD, "connect_timeout_s": 2}


def failures(daemon: Daemon, sink: str = "postgres") -> int:
    return sum(1 for e in daemon.events("sink.batch.failed") if e.get("sink") == sink)


def run_failing(env: SidecarEnv, fmt: str = "json", sink: str = "postgres",
                **sections: dict[str, Any]) -> str:
    """Start the daemon on one span, wait for a retried failure (or delivery), stop it."""
    env.configure(logging={"format": fmt}, **sections)
    write_spans(env.spool / "a.jsonl", [span(i) for i in range(3)])
    daemon = env.daemon()
    wait_until(lambda: daemon.log.read_bytes().count(b"sink.batch.failed") >= 2
               or (sink == "postgres" and env.rows() == 3) or not daemon.alive,
               what="a retried failure")
    assert daemon.alive, daemon.log.read_text()[-3000:]  # a failure is retried, not fatal
    return stop(daemon)


# -- the daemon --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(DSNS))
def test_postgres_failures_log_no_secret(sidecar_env: SidecarEnv, case: str) -> None:
    text = run_failing(sidecar_env, postgres=postgres(DSNS[case]))
    assert_clean(text)
    assert '"locals"' not in text


def test_a_closed_port_logs_no_secret(sidecar_env: SidecarEnv, closed_port: int) -> None:
    dsn = f"postgresql://postgres:{PG}@127.0.0.1:{closed_port}/test"
    assert_clean(run_failing(sidecar_env, postgres=postgres(dsn)))


def test_console_logs_show_no_locals_and_no_secret(sidecar_env: SidecarEnv) -> None:
    text = run_failing(sidecar_env, "console", postgres=postgres(DSNS["bad_port"]))
    assert "Traceback" in text  # the crash is logged, without what its frames held
    assert_clean(text)


def test_an_opik_key_refused_with_401_is_not_logged(sidecar_env: SidecarEnv,
                                                    emu: OpikEmulator) -> None:
    emu.require_api_key("the-right-key")
    opik = {"enabled": True, "url": emu.base_url, "api_key": OPIK}
    text = run_failing(sidecar_env, sink="opik", postgres={"enabled": False}, opik=opik)
    assert {r.status for r in emu.requests()} == {401}  # refused, and retried
    assert_clean(text)


def test_an_unreachable_opik_is_logged_without_its_key(sidecar_env: SidecarEnv,
                                                       closed_port: int) -> None:
    opik = {"enabled": True, "url": f"http://127.0.0.1:{closed_port}/api", "api_key": OPIK}
    assert_clean(run_failing(sidecar_env, sink="opik", postgres={"enabled": False}, opik=opik))


@pytest.mark.parametrize("url", [f"redis://sidecar:{REDIS}@127.0.0.1:6379/0",
                                 f"redis://:{REDIS}@127.0.0.1:6379/0"])
def test_a_redis_password_is_not_logged(sidecar_env: SidecarEnv, url: str) -> None:
    sidecar_env.configure(redis={"url": url})
    write_spans(sidecar_env.spool / "a.jsonl", [span(i) for i in range(3)])
    daemon = sidecar_env.daemon()
    wait_until(lambda: sidecar_env.rows() == 3, what="spans stored")
    if "sidecar:" in url:  # AUTH refused: the invalidation after the store fails
        wait_until(lambda: bool(daemon.events("cache.redis.failed")), what="a Redis failure")
    assert_clean(stop(daemon))


# -- configuration errors and check-config -----------------------------------------------------

INVALID = {
    "postgres_as_a_string": f'postgres: "postgresql://u:{PG}@h/db"',
    "opik_as_a_string": f'opik: "{OPIK}"',
    "redis_as_a_list": f'redis: ["redis://:{REDIS}@h:6379"]',
    "password_as_a_list": f"postgres: {{password: [{FIELD}], dsn: {{x: {PG}}}}}",
    "api_key_as_a_mapping": f"opik: {{api_key: {{k: {OPIK}}}, url: [{QUERY}]}}",
    "unknown_key_beside_a_dsn": f'postgres: {{dsn: "postgresql://u:{PG}@h/db", pool: 1}}',
    "bad_value_beside_a_dsn": f'postgres: {{dsn: "host=h password={PG}", pool_size: 99}}',
    "bad_yaml_after_a_secret": f"postgres:\n  password: {FIELD}\n  dsn: [unclosed",
    "environment_override": f'environments:\n  production:\n    postgres: "x:{PG}"',
    # The redis client is made at its first use: its URL is checked at start.
    "redis_bad_scheme": f'redis: {{url: "http://:{REDIS}@h:6379/0"}}',
    "redis_bad_port": f'redis: {{url: "redis://:{REDIS}@h:99999/0"}}',
}


@pytest.fixture
def spool_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "spool").mkdir()
    return {"SIDECAR_SPOOL_DIR": str(tmp_path / "spool"),
            "SIDECAR_STATE_DIR": str(tmp_path / "state"), "SIDECAR_ENV": "production"}


@pytest.mark.parametrize("case", sorted(INVALID))
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_config_errors_print_no_secret(tmp_path: Path, spool_env: dict[str, str],
                                       case: str, command: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(INVALID[case] + "\n")
    result = cli("--config", str(path), command, cwd=tmp_path, env=spool_env, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "invalid configuration" in result.stderr
    assert_clean(result.stdout + result.stderr)


def _config(tmp_path: Path, emu_url: str, dsn: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump({
        "spool": {"dir": str(tmp_path / "spool"), "state_dir": str(tmp_path / "state")},
        "postgres": postgres(dsn),
        "opik": {"enabled": True, "url": f"{emu_url}?api_key={QUERY}", "api_key": OPIK},
        "redis": {"url": f"redis://sidecar:{REDIS}@127.0.0.1:6379/0"},
        "logging": {"format": "json"},
    }))
    return path


def test_check_config_masks_every_url(tmp_path: Path) -> None:
    path = _config(tmp_path, "https://user:pw@opik.example/api", f"{DSNS['bad_port']}&x=1")
    result = cli("--config", str(path), "check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stdout + result.stderr)
    assert "api_key=***" in result.stdout and "app:***@" in result.stdout
    assert "redis://sidecar:***@127.0.0.1:6379/0" in result.stdout


@pytest.fixture
def opik_401(emu: OpikEmulator) -> Iterator[str]:
    emu.require_api_key("the-right-key")
    yield emu.base_url


@pytest.mark.parametrize("case", sorted(DSNS))
def test_check_config_connect_reports_failures_without_secrets(
        tmp_path: Path, opik_401: str, case: str) -> None:
    path = _config(tmp_path, opik_401, DSNS[case])
    result = cli("--config", str(path), "check-config", "--connect", cwd=tmp_path)
    assert "postgres" in result.stdout and "redis" in result.stdout
    assert_clean(result.stdout + result.stderr)
