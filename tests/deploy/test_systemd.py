"""The systemd unit, its user and its spool: verified and scored by systemd itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from sidecar.config.settings import Settings

from .tools import DEPLOY, REPO, SPOOL_MODE, tool

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "span-sidecar.service"
INSTALLED_BINARY = "/opt/span-sidecar/bin/span-sidecar"
MAX_EXPOSURE = 3.0
INSTALL = "Debian package systemd"


def directives(path: Path = UNIT) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_systemd_analyze_verify_reports_nothing(tmp_path: Path) -> None:
    """No unknown key, no unparsable value, every command executable.

    `verify` exits 0 on warnings, so its output must be empty too. The
    installed path of the console script does not exist here: the copy
    points at this checkout's instead, and only that line changes.
    """
    analyze = tool("systemd-analyze", INSTALL)
    here = REPO / ".venv" / "bin" / "span-sidecar"
    if not here.exists():  # a venv elsewhere: the script beside this Python
        here = Path(tool("span-sidecar", "pip install -e ."))
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_BINARY, str(here)))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stderr


def test_exposure_is_at_most_3() -> None:
    analyze = tool("systemd-analyze", INSTALL)
    out = subprocess.run([analyze, "security", "--offline=yes", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert score, out.stdout[-2000:]
    assert float(score.group(1)) <= MAX_EXPOSURE, out.stdout


def test_lifecycle_directives() -> None:
    """Notify + watchdog, reload by SIGHUP, no restart loop on a bad config, room to drain."""
    d = directives()
    assert d["Type"] == ["notify"] and d["WatchdogSec"]
    assert d["ExecStart"] == [f"{INSTALLED_BINARY} run --config /etc/span-sidecar/sidecar.yaml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"] and d["RestartPreventExitStatus"] == ["2"]
    assert float(d["TimeoutStopSec"][0]) > Settings().shutdown.drain_timeout_s
    assert d["CapabilityBoundingSet"] == [""] and d["ProtectSystem"] == ["strict"]
    assert d["SystemCallFilter"][0] == "@system-service"


def test_sysusers_and_tmpfiles_make_a_group_writable_spool(tmp_path: Path) -> None:
    """Applied to an empty root: the user exists, the spool is 3770 (sticky) and theirs."""
    sysusers = tool("systemd-sysusers", INSTALL)
    tmpfiles = tool("systemd-tmpfiles", INSTALL)
    (tmp_path / "etc").mkdir()
    for cmd in ([sysusers, f"--root={tmp_path}", str(SYSTEMD / "sysusers.d/span-sidecar.conf")],
                [tmpfiles, f"--root={tmp_path}", "--create",
                 str(SYSTEMD / "tmpfiles.d/span-sidecar.conf")]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    users = {line.split(":")[0]: line.split(":") for line in
             (tmp_path / "etc/passwd").read_text().splitlines()}
    d = directives()
    user = users[d["User"][0]]
    assert d["Group"] == d["User"]
    spool = tmp_path / "var/spool/span-sidecar"
    st = spool.stat()
    assert oct(st.st_mode & 0o7777) == oct(SPOOL_MODE)
    assert (st.st_uid, st.st_gid) == (int(user[2]), int(user[3]))
    # The unit may write there, and starts even where it does not exist yet.
    assert d["ReadWritePaths"] == [f"-/{spool.relative_to(tmp_path)}"]
