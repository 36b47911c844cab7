"""Where the client writes when the agent names no directory (issue 21).

The order: the argument, else ``SIDECAR_SPOOL_DIR`` (the daemon's variable, so
that the README's one export moves both sides), else ``SPAN_SIDECAR_SPOOL_DIR``
(the client's older name, kept), else ``/var/spool/span-sidecar``. An empty
variable counts as unset, as it does for the daemon.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.client import Tracer, default_spool_dir
from sidecar.client.tracer import DEFAULT_SPOOL_DIR

from .helpers import spool_records


@pytest.mark.parametrize(("env", "expected"), [
    ({"SIDECAR_SPOOL_DIR": "/a", "SPAN_SIDECAR_SPOOL_DIR": "/b"}, "/a"),
    ({"SIDECAR_SPOOL_DIR": "/a"}, "/a"),
    ({"SPAN_SIDECAR_SPOOL_DIR": "/b"}, "/b"),
    ({"SIDECAR_SPOOL_DIR": "", "SPAN_SIDECAR_SPOOL_DIR": "/b"}, "/b"),
    ({"SIDECAR_SPOOL_DIR": "", "SPAN_SIDECAR_SPOOL_DIR": ""}, DEFAULT_SPOOL_DIR),
    ({}, DEFAULT_SPOOL_DIR),
])
def test_default_spool_dir_takes_the_variables_in_order(env: dict[str, str],
                                                        expected: str) -> None:
    assert default_spool_dir(env) == expected


def _written_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: Path | None,
                env: dict[str, str]) -> list[str]:
    """The directories (under tmp_path) that hold the span a Tracer wrote."""
    for name in ("SIDECAR_SPOOL_DIR", "SPAN_SIDECAR_SPOOL_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracer = Tracer("order", given)
    with tracer.trace_agent("step"):
        pass
    tracer.close()
    return sorted(d.name for d in tmp_path.iterdir() if d.is_dir() and spool_records(d))


def test_the_argument_wins_over_both_variables(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SIDECAR_SPOOL_DIR": str(tmp_path / "daemon"),
           "SPAN_SIDECAR_SPOOL_DIR": str(tmp_path / "client")}
    assert _written_to(tmp_path, monkeypatch, tmp_path / "given", env) == ["given"]


def test_the_daemons_variable_wins_over_the_clients(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SIDECAR_SPOOL_DIR": str(tmp_path / "daemon"),
           "SPAN_SIDECAR_SPOOL_DIR": str(tmp_path / "client")}
    assert _written_to(tmp_path, monkeypatch, None, env) == ["daemon"]


def test_the_clients_variable_is_still_honoured(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SPAN_SIDECAR_SPOOL_DIR": str(tmp_path / "client")}
    assert _written_to(tmp_path, monkeypatch, None, env) == ["client"]


def test_without_argument_or_variable_the_default_is_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SIDECAR_SPOOL_DIR", "SPAN_SIDECAR_SPOOL_DIR"):
        monkeypatch.delenv(name, raising=False)
    tracer = Tracer("order")  # nothing is written, so nothing is created
    assert str(tracer.writer.spool_dir) == DEFAULT_SPOOL_DIR
    tracer.close()
