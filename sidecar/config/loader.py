"""Loading the configuration: ``YAML -> ${VAR} expansion -> environments
overlay -> environment variables -> validation``.

Every problem is reported at once, each with the line it is on; values under
a secret section or key are never echoed in an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sidecar.config.secrets import is_secret_name, redacted, scrub
from sidecar.config.settings import Settings
from sidecar.config.sources import (
    LOCAL_CONFIG,
    ConfigFile,
    Key,
    apply_environment,
    describe,
    locate,
)

DEFAULT_CONFIG = LOCAL_CONFIG  # the first fallback; see sidecar/config/sources.py
ENVIRONMENTS = ("development", "staging", "production")


# Keys of the public configuration whose feature is not built yet: setting one
# is an error, never a silent no-op (an operator who sets a redaction key must
# not believe that secrets are masked).
NOT_IMPLEMENTED: dict[tuple[str, ...], str] = {}


def _not_implemented(raw: dict[str, Any], lines: KeyLines,
                     prefix: tuple[str, ...] = ()) -> list[str]:
    """A problem for each such key in ``raw``, which is removed (so that
    validation reports everything else, not these keys a second time)."""
    problems = []
    for path, feature in NOT_IMPLEMENTED.items():
        parent: Any = raw
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent:
            del parent[path[-1]]
            full = (*prefix, *path)
            problems.append(f"{_line_of(lines, full)}{'.'.join(full)}: not implemented yet "
                            f"({feature}); remove the key, it would have no effect")
    return problems


class ConfigError(Exception):
    """An invalid configuration: every problem, each with where it is."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: Any, env: Mapping[str, str]) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    return value


def _overlay(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """Settings, the file they were read from, and where each value came from."""

    settings: Settings
    file: ConfigFile
    env_origins: dict[Key, str]
    file_lines: dict[Key, int]
    chosen_env: str

    def sources(self) -> list[tuple[str, Any, str]]:
        """``(key, masked value, origin)`` of every value that is not its default."""
        defaults = Settings.model_validate({}, context={"env": {}})
        return describe(redacted(self.settings), redacted(defaults), self.file_lines,
                        self.env_origins, self.chosen_env)


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``load_config``; raise ``ConfigError``."""
    return load_config(path, env).settings


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> LoadedConfig:
    """Find, read, expand, overlay, apply the environment and validate; raise ``ConfigError``.

    ``path`` is ``--config`` (None: the lookup order of ``config_sources.locate``).
    A missing file that was named is an error; a fallback that is absent is not.
    Every problem is collected before any is raised, so all are reported at once.
    """
    env = os.environ if env is None else env
    found = locate(path, env, cwd)
    source = str(found.path) if found.path else "(no config file)"
    raw, lines = _read_yaml(found, source)
    chosen = env.get("SIDECAR_ENV", "")
    environments, problems = _environments(raw, lines, chosen)
    problems += _unbuilt_keys(raw, environments, lines)
    tree = expand(_overlay(raw, environments.get(chosen) or {}), env)
    origins = _environment_origins(tree, env)
    try:
        settings = Settings.model_validate(tree, context={"env": env})
    except ValidationError as exc:
        raise ConfigError(source, [*problems, *_problems(exc, lines, chosen, origins)]) from None
    if problems:
        raise ConfigError(source, problems)
    return LoadedConfig(settings, found, origins, lines, chosen)


def _environments(raw: dict[str, Any], lines: KeyLines,
                  chosen: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The ``environments:`` overlays (taken out of ``raw``), each a mapping,
    and a problem for each that is not, is unknown, or for an unknown
    ``SIDECAR_ENV``."""
    environments = raw.pop("environments", None) or {}
    problems: list[str] = []
    if not isinstance(environments, dict):
        problems.append(f"{_line_of(lines, ('environments',))}environments: "
                        "must be a mapping of environment name to overrides")
        environments = {}
    for name, section in environments.items():
        where = _line_of(lines, ("environments", str(name)))
        if name not in ENVIRONMENTS:
            problems.append(f"{where}environments.{name}: unknown environment "
                            f"(use {', '.join(ENVIRONMENTS)})")
        elif section is not None and not isinstance(section, dict):
            problems.append(f"{where}environments.{name}: must be a mapping of overrides")
    if chosen and chosen not in ENVIRONMENTS:
        problems.append(f"SIDECAR_ENV={chosen!r}: unknown environment "
                        f"(use {', '.join(ENVIRONMENTS)})")
    return {str(k): v for k, v in environments.items() if isinstance(v, dict)}, problems


def _unbuilt_keys(raw: dict[str, Any], environments: dict[str, dict[str, Any]],
                  lines: KeyLines) -> list[str]:
    """``NOT_IMPLEMENTED`` keys, at the top and in every overlay (removed)."""
    problems = _not_implemented(raw, lines)
    for name, section in environments.items():
        problems.extend(_not_implemented(section, lines, ("environments", name)))
    return problems


def _environment_origins(tree: dict[str, Any], env: Mapping[str, str]) -> dict[Key, str]:
    """Apply the variables of ``ENV_KEYS`` to ``tree``; where each value came
    from that is not the file (``opik.enabled``'s default says what it follows)."""
    origins = apply_environment(tree, env, Settings.model_fields)
    opik_tree = tree.get("opik")
    if not (isinstance(opik_tree, dict) and opik_tree.get("enabled") is not None):
        origins.setdefault(("opik", "enabled"),
                           "default: on when OPIK_URL_OVERRIDE or OPIK_API_KEY is set")
    return origins


KeyLines = dict[tuple[str, ...], int]


def _read_yaml(found: ConfigFile, source: str) -> tuple[dict[str, Any], KeyLines]:
    """The YAML tree, and the line of every key in it (for error messages)."""
    if found.path is None:
        return {}, {}
    try:
        text = found.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not found.required:
            return {}, {}  # it existed a moment ago: as if it never had
        raise ConfigError(source, [f"file not found (named by {found.origin})"]) from None
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = scrub(str(getattr(exc, "problem", exc)))  # a scanner may quote the text
        raise ConfigError(source, [f"{where}invalid YAML ({problem})"]) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["the top level must be a mapping of sections"])
    return data, _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))


def _key_lines(root: yaml.Node | None) -> KeyLines:
    """Map the path of every mapping key to its 1-based line."""
    lines: KeyLines = {}
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())] if root is not None else []
    seen: set[int] = set()  # aliases share nodes (and may be recursive)
    while stack:
        node, path = stack.pop()
        if id(node) in seen or not isinstance(node, yaml.MappingNode):
            continue
        seen.add(id(node))
        for key, value in node.value:
            sub = (*path, str(key.value))
            lines.setdefault(sub, key.start_mark.line + 1)
            stack.append((value, sub))
    return lines


def _deepest(lines: KeyLines, loc: tuple[str, ...]) -> tuple[int, int]:
    """How many keys of ``loc`` the file spells out, and the line of the last."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return n, lines[loc[:n]]
    return 0, 0


def _line_of(lines: KeyLines, loc: tuple[str, ...], chosen: str = "") -> str:
    """``"line N: "`` for the key of ``loc`` (or its nearest parent), else ``""``.

    A key that the chosen environment overrides is reported at the override.
    """
    depth, line = _deepest(lines, loc)
    if chosen:
        env_depth, env_line = _deepest(lines, ("environments", chosen, *loc))
        if env_depth - 2 >= max(depth, 1):
            depth, line = env_depth, env_line
    return f"line {line}: " if depth else ""


def _problems(exc: ValidationError, lines: KeyLines, chosen: str,
              origins: Mapping[Key, str]) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        path = tuple(str(p) for p in err["loc"])
        loc = ".".join(path)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] != "extra_forbidden" and _echoable(path, err.get("input")):
            msg += f" (got {scrub(repr(err['input']))})"
        where = origins.get(path)
        where = f"{where}: " if where else _line_of(lines, path, chosen)
        out.append(f"{where}{loc}: {scrub(msg)}")
    return out


# Sections that hold a secret (or a pattern that may spell one out): nothing
# under them is echoed, whatever its type (a DSN written where the section's
# mapping belongs is still the DSN).
_SECRET_SECTIONS = ("postgres", "opik", "redis", "receivers", "redaction")


def _echoable(path: tuple[str, ...], value: Any) -> bool:
    """Whether a bad value may be shown: a scalar, under no secret section or key."""
    if not path or isinstance(value, dict | list | tuple):
        return False
    return not any(_secret_loc(part) for part in path)


def _secret_loc(loc: str) -> bool:
    return loc in _SECRET_SECTIONS or is_secret_name(loc) or any(
        word in loc for word in ("password", "api_key", "dsn", "url", "redaction", "token"))
