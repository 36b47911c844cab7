"""Where the configuration comes from: which file, which variables, which defaults.

The file is ``--config FILE``, else ``$SIDECAR_CONFIG``, else
``./config/sidecar.yaml`` when it exists, else
``/etc/span-sidecar/sidecar.yaml`` when it exists, else none (all defaults).
A file named by ``--config`` or ``$SIDECAR_CONFIG`` that is missing is an
error; the two fallbacks are only looked for.

A container is often configured by its environment alone, so the variables
of ``ENV_KEYS`` set their keys with or without a file, and win over what the
file says (as the Opik SDK's own variables do). An empty variable counts as
unset, as ``${VAR:-default}`` does. With an Opik API key and no Opik URL
anywhere, the URL is Opik Cloud's, as in the Opik SDK.

Everything here works on plain data (the YAML tree before validation), so
that the models in ``settings.py`` know nothing of it (``loader.py`` joins them).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

LOCAL_CONFIG = Path("config/sidecar.yaml")
SYSTEM_CONFIG = Path("/etc/span-sidecar/sidecar.yaml")
OPIK_CLOUD_URL = "https://www.comet.com/opik/api"

Key = tuple[str, ...]

EXAMPLE = "example-config.yaml"  # package data: the repository's config/sidecar.yaml


def example_config() -> str:
    """The example configuration installed with the package (to start from)."""
    return resources.files("sidecar").joinpath(EXAMPLE).read_text(encoding="utf-8")


# variable -> the key it sets
ENV_KEYS: dict[str, Key] = {
    "SIDECAR_SPOOL_DIR": ("spool", "dir"),
    "SIDECAR_STATE_DIR": ("spool", "state_dir"),
    "SIDECAR_PG_DSN": ("postgres", "dsn"),
    "SIDECAR_PG_PASSWORD": ("postgres", "password"),
    # Applied only when the settings model has a ``redis`` section: until the
    # statistics cache lands, ``redis.*`` is refused as "not implemented yet",
    # and an ambient SIDECAR_REDIS_URL must not make every config invalid.
    "SIDECAR_REDIS_URL": ("redis", "url"),
    "SIDECAR_HTTP_LISTEN": ("http", "listen"),
    "SIDECAR_RECEIVERS_LISTEN": ("receivers", "listen"),
    "OPIK_URL_OVERRIDE": ("opik", "url"),
    "OPIK_API_KEY": ("opik", "api_key"),
    "OPIK_WORKSPACE": ("opik", "workspace"),
    "OPIK_PROJECT_NAME": ("opik", "project_name"),
    # The Opik SDK's switch for TLS verification ("false" turns it off).
    "OPIK_CHECK_TLS_CERTIFICATE": ("opik", "verify_tls"),
}


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The file to read (None: none, all defaults), why it was chosen, and
    whether its absence is an error."""

    path: Path | None
    origin: str
    required: bool


def locate(cli_path: Path | None, env: Mapping[str, str], cwd: Path | None = None,
           system: Path = SYSTEM_CONFIG) -> ConfigFile:
    """Apply the lookup order (see the module docstring) without reading the file."""
    if cli_path is not None:
        return ConfigFile(cli_path, "--config", required=True)
    if env.get("SIDECAR_CONFIG"):
        return ConfigFile(Path(env["SIDECAR_CONFIG"]), "$SIDECAR_CONFIG", required=True)
    local = (cwd or Path.cwd()) / LOCAL_CONFIG
    if local.is_file():
        return ConfigFile(local, "./config/sidecar.yaml", required=False)
    if system.is_file():
        return ConfigFile(system, str(system), required=False)
    return ConfigFile(None, "no file found: all defaults", required=False)


def _get(tree: Mapping[str, Any], key: Key) -> Any:
    node: Any = tree
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set(tree: dict[str, Any], key: Key, value: Any) -> None:
    node = tree
    for part in key[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[key[-1]] = value


def apply_environment(tree: dict[str, Any], env: Mapping[str, str],
                      sections: Collection[str]) -> dict[Key, str]:
    """Set each key of ``ENV_KEYS`` whose variable is set; derive Opik's URL.

    ``tree`` is the expanded YAML (changed in place); ``sections`` the
    top-level sections the settings model has. Returns where each key set
    here came from (the variable's name, or why it was derived).
    """
    origins: dict[Key, str] = {}
    for var, key in ENV_KEYS.items():
        value = env.get(var)
        if value and key[0] in sections:
            _set(tree, key, value)
            origins[key] = f"environment {var}"
    url, api_key = _get(tree, ("opik", "url")), _get(tree, ("opik", "api_key"))
    if not url and api_key:
        _set(tree, ("opik", "url"), OPIK_CLOUD_URL)
        origins[("opik", "url")] = "Opik Cloud: an API key and no URL"
    return origins


def flatten(tree: Mapping[str, Any], prefix: Key = ()) -> dict[Key, Any]:
    """Every leaf of a nested mapping by its key path; a mapping whose keys are
    not all strings (``sampling.tiers``) is one leaf."""
    out: dict[Key, Any] = {}
    for name, value in tree.items():
        key = (*prefix, str(name))
        if isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value):
            out.update(flatten(value, key))
        else:
            out[key] = value
    return out


def describe(effective: Mapping[str, Any], defaults: Mapping[str, Any],
             file_lines: Mapping[Key, int], env_origins: Mapping[Key, str],
             chosen_env: str = "") -> list[tuple[str, Any, str]]:
    """``(key, value, origin)`` of every value that differs from its default.

    ``effective`` and ``defaults`` are dumps with secrets already masked;
    ``file_lines`` the line of each key in the file (``environments.<name>``
    keys included); ``env_origins`` what ``apply_environment`` returned.
    """
    base = flatten(defaults)
    out = []
    for key, value in flatten(effective).items():
        if key in base and base[key] == value:
            continue
        out.append((".".join(key), value,
                    _origin(key, file_lines, env_origins, chosen_env)))
    return out


def _origin(key: Key, file_lines: Mapping[Key, int], env_origins: Mapping[Key, str],
            chosen_env: str) -> str:
    for n in range(len(key), 0, -1):
        if key[:n] in env_origins:
            return env_origins[key[:n]]
    for n in range(len(key), 0, -1):
        line = file_lines.get(("environments", chosen_env, *key[:n])) if chosen_env else None
        if line:
            return f"file, line {line} (environments.{chosen_env})"
        if key[:n] in file_lines:
            return f"file, line {file_lines[key[:n]]}"
    return "derived"
