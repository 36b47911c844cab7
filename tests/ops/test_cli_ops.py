"""The command line: --version, options on either side of the command, check-config."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from sidecar import __version__
from sidecar.config_sources import example_config
from tests.opik_emulator import OpikEmulator
from tests.ops.helpers import cli, free_port
from tests.support import PG_DSN


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
        tmp_path: Path, emu: OpikEmulator) -> None:
    dead = free_port()  # nothing listens there
    env = {"SIDECAR_PG_DSN": PG_DSN, "OPIK_URL_OVERRIDE": f"http://127.0.0.1:{dead}/api"}
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


def test_check_config_connect_names_postgres_when_it_is_down(tmp_path: Path) -> None:
    dead = free_port()
    result = cli("check-config", "--connect", cwd=tmp_path,
                 env={"SIDECAR_PG_DSN": f"postgresql://u:pw@127.0.0.1:{dead}/x"})
    assert result.returncode == 1
    assert "cannot reach postgres" in result.stderr
    assert "opik      skipped" in result.stdout
    assert ":pw@" not in result.stdout + result.stderr
