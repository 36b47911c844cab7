"""The Dockerfile, read as Docker reads it (no engine here), and its pins."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from typing import Any

from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .runtime_deps import closure
from .tools import DEPLOY, REPO, SPOOL_MODE

# An exact Python release on a named Debian release, optionally by digest too.
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?$")
ROOTS = {"root", "0"}


def stages() -> list[list[dict[str, Any]]]:
    """The instructions of each build stage, in order."""
    out: list[list[dict[str, Any]]] = []
    for ins in DockerfileParser(path=str(DEPLOY / "Dockerfile")).structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [str(i["value"]) for i in stage if i["instruction"] == instruction]


def test_every_stage_starts_from_an_exactly_versioned_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "multi-stage: the build tools stay behind"
    for stage in all_stages:
        image = values(stage, "FROM")[0].split()[0]
        assert PINNED_BASE.match(image), image


def test_the_final_stage_runs_the_console_script_as_its_own_user() -> None:
    final = stages()[-1]
    user = values(final, "USER")[-1]
    assert user.split(":")[0] not in ROOTS
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(values(final, "ENTRYPOINT")[-1]) == ["span-sidecar"]
    assert "span-sidecar" in scripts
    assert json.loads(values(final, "CMD")[-1])[0] == "run"
    uid = user.split(":")[0]
    made = " ".join(values(final, "RUN"))
    for directory in ("/var/spool/span-sidecar", "/var/lib/span-sidecar"):
        assert re.search(rf"install -d -o {uid} -g \d+ -m \d+ {directory}", made), directory
    spool_mode = re.search(r"-m (\d+) /var/spool/span-sidecar", made)
    assert spool_mode is not None and int(spool_mode[1], 8) == SPOOL_MODE


def test_the_final_stage_installs_nothing_and_copies_the_built_venv() -> None:
    final = stages()[-1]
    made = " ".join(values(final, "RUN"))
    assert not re.search(r"\b(apt-get|apk|pip|gcc|make)\b", made), made
    assert any(v.startswith("--from=build /opt/span-sidecar ") for v in values(final, "COPY"))
    build = " ".join(values(stages()[0], "RUN"))
    assert "-r deploy/constraints.txt" in build and "uninstall --yes pip setuptools" in build


def test_the_build_context_holds_every_file_copied() -> None:
    """.dockerignore lets in exactly what COPY needs (it excludes everything else)."""
    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines()
                if p and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for stage in stages():
        for copy in values(stage, "COPY"):
            if copy.startswith("--from="):
                continue
            for source in copy.split()[:-1]:
                assert any(fnmatch.fnmatch(source, a) for a in allowed), source
                assert (REPO / source).exists(), source


def test_constraints_pin_exactly_the_runtime_dependencies() -> None:
    """Every runtime dependency and nothing else (no test tools in the image).

    When this fails after a dependency change, regenerate the file:
    ``python -m tests.deploy.runtime_deps > deploy/constraints.txt``.
    """
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    hint = "regenerate: python -m tests.deploy.runtime_deps > deploy/constraints.txt"
    assert set(pins) == set(closure()), hint
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        req = Requirement(text)
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), (text, hint)


def test_the_image_config_listens_where_the_image_says() -> None:
    """The config the image ships, with the image's environment: 0.0.0.0:9477."""
    from sidecar.config.loader import load_settings

    env: dict[str, str] = {}
    for value in values(stages()[-1], "ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", value)))
    settings = load_settings(REPO / "config/sidecar.yaml", env=env)
    assert settings.http.listen == "0.0.0.0:9477"
    assert str(settings.spool.dir) == "/var/spool/span-sidecar"
    assert str(settings.spool.state_dir) == "/var/lib/span-sidecar"
