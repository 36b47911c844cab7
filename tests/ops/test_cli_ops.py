"""The command line: --version, options on either side of the command, check-config."""

from __future__ import annotations

import asyncio
import json
import platform
import socket
from pathlib import Path

import orjson
import pytest

from sidecar import __version__
from sidecar.config.sources import example_config
from tests.opik_emulator import OpikEmulator
from tests.ops.helpers import cli, free_port
from tests.support import PG_DSN, SidecarEnv, _fetch


def test_version_is_printed() -> None:
    result = cli("--version", cwd=Path("/"))
    assert result.returncode == 0
    python = platform.python_version()
    assert result.stdout.strip() == f"span-sidecar {__version__} (Python {python})"


@pytest.mark.parametrize("before", [True, False])
def test_config_may_stand_before_or_after_the_command(tmp_path: Path, before: bool) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch: {max_records: 77}\n")
    args = ["--config", str(cfg), "check-config"] if before else \
        ["check-config", "--config", str(cfg)]
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "max_records: 77" in result.stdout
    assert f"# config file: {cfg} (--config)" in result.stdout


def test_the_option_after_the_command_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("batch: {max_records: 1}\n")
    second.write_text("batch: {max_records: 2}\n")
    result = cli("--config", str(first), "check-config", "--config", str(second), cwd=tmp_path)
    assert "max_records: 2" in result.stdout


def test_check_config_says_which_file_and_where_values_came_from(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sidecar.yaml").write_text("batch:\n  max_records: 9\n")
    result = cli("check-config", cwd=tmp_path,
                 env={"SIDECAR_PG_DSN": "postgresql://u:hunter2@db/x", "OPIK_API_KEY": "sek"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "# config file: config/sidecar.yaml" not in out  # the full path is given
    assert f"# config file: {tmp_path / 'config' / 'sidecar.yaml'} (./config/sidecar.yaml)" in out
    assert "batch.max_records = 9  <- file, line 2" in out
    assert 'postgres.dsn = "postgresql://u:***@db/x"  <- environment SIDECAR_PG_DSN' in out
    assert 'opik.url = "https://www.comet.com/opik/api"  <- Opik Cloud' in out
    assert "hunter2" not in out and "'sek'" not in out and '"sek"' not in out


def test_check_config_without_any_file_says_so(tmp_path: Path) -> None:
    result = cli("check-config", cwd=tmp_path)
    assert result.returncode == 0
    assert "# config file: none (no file found: all defaults)" in result.stdout


def test_check_config_example_prints_the_packaged_example(tmp_path: Path) -> None:
    result = cli("check-config", "--example", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == example_config()


def test_a_missing_sidecar_config_file_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("check-config", cwd=tmp_path, env={"SIDECAR_CONFIG": str(tmp_path / "x.yaml")})
    assert result.returncode == 2 and "file not found (named by $SIDECAR_CONFIG)" in result.stderr


def test_check_config_connect_names_the_backend_that_is_down(
        tmp_path: Path, emu: OpikEmulator, pg_schema: str) -> None:
    dead = free_port()  # nothing listens there
    env = {"SIDECAR_PG_DSN": PG_DSN, "OPIK_URL_OVERRIDE": f"http://127.0.0.1:{dead}/api",
           "SIDECAR_CONFIG": str(_schema_config(tmp_path, pg_schema))}
    assert cli("migrate", cwd=tmp_path, env=env).returncode == 0
    down = cli("check-config", "--connect", cwd=tmp_path, env=env)
    assert down.returncode == 1, down.stdout + down.stderr
    report = [line for line in down.stdout.splitlines() if line.startswith(("postgres ", "opik "))]
    assert any(line.split()[:2] == ["postgres", "ok"] for line in report), report
    assert any(line.split()[:2] == ["opik", "DOWN"] for line in report), report
    assert "cannot reach opik" in down.stderr and "postgres" not in down.stderr
    up = cli("check-config", "--connect", cwd=tmp_path,
             env={**env, "OPIK_URL_OVERRIDE": emu.base_url})
    assert up.returncode == 0, up.stdout + up.stderr
    assert "opik      ok" in up.stdout


def _schema_config(tmp_path: Path, schema: str) -> Path:
    cfg = tmp_path / "schema.yaml"
    cfg.write_text(f"postgres: {{schema: {schema}}}\n")
    return cfg


def test_check_config_connect_changes_nothing_in_an_unmigrated_database(
        tmp_path: Path, pg_schema: str) -> None:
    """A probe reaches Postgres but migrates nothing, even with auto_migrate on:
    an unmigrated schema is reported, and it is still not there afterwards."""
    env = {"SIDECAR_PG_DSN": PG_DSN, "SIDECAR_CONFIG": str(_schema_config(tmp_path, pg_schema))}
    result = cli("check-config", "--connect", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "span-sidecar migrate" in result.stderr
    rows = asyncio.run(_fetch("SELECT 1 FROM pg_namespace WHERE nspname = $1", pg_schema))
    assert rows == [], "check-config --connect created the schema"


def test_check_config_connect_names_postgres_when_it_is_down(tmp_path: Path) -> None:
    dead = free_port()
    result = cli("check-config", "--connect", cwd=tmp_path,
                 env={"SIDECAR_PG_DSN": f"postgresql://u:pw@127.0.0.1:{dead}/x"})
    assert result.returncode == 1
    assert "cannot reach postgres" in result.stderr
    assert "opik      skipped" in result.stdout
    assert ":pw@" not in result.stdout + result.stderr


# -- emit: where it writes, one file, and saying which (issue 21) -------------

EMIT_DIR_CASES = {
    "the --spool-dir option first": (True, {"SIDECAR_SPOOL_DIR": "daemon",
                                            "SPAN_SIDECAR_SPOOL_DIR": "client"}, "given"),
    "then SIDECAR_SPOOL_DIR": (False, {"SIDECAR_SPOOL_DIR": "daemon",
                                       "SPAN_SIDECAR_SPOOL_DIR": "client"}, "daemon"),
    "then SPAN_SIDECAR_SPOOL_DIR": (False, {"SPAN_SIDECAR_SPOOL_DIR": "client"}, "client"),
    "then the config's spool.dir": (False, {}, "configured"),
}


@pytest.mark.parametrize("case", list(EMIT_DIR_CASES))
def test_emit_writes_where_the_client_would_and_says_which_file(tmp_path: Path,
                                                                case: str) -> None:
    given, env, expected = EMIT_DIR_CASES[case]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"spool: {{dir: {tmp_path / 'configured'}}}\n")
    args = ["emit", "--count", "3", "--config", str(cfg)]
    if given:
        args += ["--spool-dir", str(tmp_path / "given")]
    result = cli(*args, cwd=tmp_path, env={k: str(tmp_path / v) for k, v in env.items()})
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    [written] = [p for p in tmp_path.rglob("*.jsonl.done")]
    assert written.parent == tmp_path / expected
    assert result.stderr.strip() == f"wrote 3 spans to {written}"
    assert [orjson.loads(x)["id"] for x in written.read_bytes().splitlines()] == ids


# -- commands are quiet unless -v (issue 21) ----------------------------------

@pytest.mark.parametrize("verbose", [[], ["-v"], ["--verbose"]])
def test_commands_log_only_warnings_unless_verbose(sidecar_env: SidecarEnv,
                                                   verbose: list[str]) -> None:
    """`retention` logs retention.run.completed at info: shown only with -v."""
    config = str(sidecar_env.configure(retention={"ttl_days": 3}))
    assert cli("migrate", "--config", config, cwd=sidecar_env.tmp).returncode == 0
    result = cli("retention", *verbose, "--config", config, cwd=sidecar_env.tmp)
    assert result.returncode == 0, result.stderr
    assert "removed 0 spans" in result.stdout
    assert ("retention.run.completed" in result.stderr) == bool(verbose), result.stderr


def test_verbose_may_stand_before_the_command(sidecar_env: SidecarEnv) -> None:
    config = str(sidecar_env.configure(retention={"ttl_days": 3}))
    result = cli("-v", "retention", "--config", config, cwd=sidecar_env.tmp)
    assert result.returncode == 0 and "retention.run.completed" in result.stderr


# -- replay-quarantine prints text; --json the document (issue 21) ------------

def _quarantine_one_bad_line(env: SidecarEnv) -> None:
    q = env.state / "quarantine"
    q.mkdir(parents=True)
    entry = {"sink": "postgres", "source": "a.jsonl", "offset": 7, "reason": "invalid JSON",
             "size": 7, "time": 1.0, "raw": "{broken"}
    (q / "postgres.jsonl").write_bytes(orjson.dumps(entry) + b"\n")


def test_replay_quarantine_prints_text_and_does_not_log_what_it_put_back(
        sidecar_env: SidecarEnv) -> None:
    _quarantine_one_bad_line(sidecar_env)
    result = cli("replay-quarantine", "-v", "--config", str(sidecar_env.config),
                 cwd=sidecar_env.tmp)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "postgres: replayed 0, still quarantined 1"
    assert "quarantine.record.stored" not in result.stderr  # logged once, when it happened
    [kept] = sidecar_env.quarantine()
    assert (kept["raw"], kept["source"], kept["offset"], kept["time"]) == \
        ("{broken", "a.jsonl", 7, 1.0)


def test_replay_quarantine_json_is_the_document(sidecar_env: SidecarEnv) -> None:
    _quarantine_one_bad_line(sidecar_env)
    result = cli("replay-quarantine", "--json", "--config", str(sidecar_env.config),
                 cwd=sidecar_env.tmp)
    assert json.loads(result.stdout) == {"results": [
        {"sink": "postgres", "replayed": 0, "still_invalid": 1, "spool_files": []}]}


# -- the HTTP port in use names the setting (issue 21) ------------------------

def test_an_http_port_in_use_names_http_listen_and_its_variable(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = cli("run", cwd=tmp_path, timeout=60, env={
            "SIDECAR_HTTP_LISTEN": listen, "SIDECAR_PG_DSN": PG_DSN,
            "SIDECAR_SPOOL_DIR": str(tmp_path / "spool"),
            "SIDECAR_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"span-sidecar run: cannot listen on {listen}")
    assert "http.listen" in message and "SIDECAR_HTTP_LISTEN" in message
    assert "address already in use" in message
