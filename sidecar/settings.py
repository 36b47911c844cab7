"""The configuration: one frozen pydantic tree, one section per component.

Loading is ``YAML -> ${VAR} expansion -> environments overlay -> validation``.
Every key has a default (an empty file is valid) and unknown keys are errors,
so a typo in an operator's file is reported instead of silently ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sidecar import secrets
from sidecar.config_sources import (
    LOCAL_CONFIG,
    ConfigFile,
    Key,
    apply_environment,
    describe,
    locate,
)
from sidecar.secrets import is_secret_name

DEFAULT_CONFIG = LOCAL_CONFIG  # the first fallback; see sidecar/config_sources.py
ENVIRONMENTS = ("development", "staging", "production")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpoolSettings(Section):
    dir: Path = Path("/var/spool/span-sidecar")
    state_dir: Path = Path("/var/lib/span-sidecar")
    patterns: tuple[str, ...] = ("*.jsonl", "*.jsonl.done")
    # inotify (watchfiles) plus a periodic rescan; "poll" for network volumes.
    watch: Literal["inotify", "poll"] = "inotify"
    rescan_interval_s: float = Field(default=5.0, gt=0)
    poll_interval_ms: int = Field(default=250, gt=0)
    # Files of writers that died are treated as done after this idle time.
    idle_done_after_s: float = Field(default=86400.0, gt=0)
    # Where acknowledged .done files go; null deletes them.
    archive_dir: Path | None = None
    read_chunk_bytes: int = Field(default=1 << 20, ge=4096)
    # The spool quota: null means none. "keep" only warns (health degraded,
    # then unhealthy); "drop_oldest" deletes the oldest complete files.
    max_bytes: int | None = Field(default=None, ge=1 << 20)
    on_full: Literal["keep", "drop_oldest"] = "keep"
    # Spool files a sink that is now disabled never acknowledged are kept this
    # long (its backlog is never deleted silently); `forget-sink` drops them sooner.
    disabled_sink_keep_s: float = Field(default=86400.0, ge=0)


class BatchSettings(Section):
    max_records: int = Field(default=500, ge=1)
    max_wait_ms: int = Field(default=1000, ge=1)
    # Batches built ahead of the one being sent (bounds memory per sink).
    queue_batches: int = Field(default=1, ge=1, le=16)
    # A batch is also full at this many raw bytes, so big spans cannot make a
    # few thousand-record batches cost gigabytes.
    max_bytes: int = Field(default=8 << 20, ge=64 << 10)


class SinkSection(Section):
    """A section that configures a sink: the registry finds sinks by it.

    ``SINK`` names the module that builds the sink (a ``build(settings,
    clock)`` function); adding a sink is that module plus one such section.
    """

    SINK: ClassVar[str]
    enabled: bool | None = True


class PostgresSettings(SinkSection):
    SINK: ClassVar[str] = "sidecar.sinks.postgres"
    enabled: bool = True
    dsn: str = "postgresql://localhost/postgres"
    # Kept apart from the DSN so that it can come from a secret; never printed.
    password: SecretStr | None = None
    db_schema: str = Field(default="public", alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    auto_migrate: bool = True
    # Postgres is fastest with thousands of rows per COPY (a few ms fixed cost each).
    max_batch_records: int = Field(default=5000, ge=1)
    pool_size: int = Field(default=2, ge=1, le=32)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    command_timeout_s: float = Field(default=60.0, gt=0)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OpikSettings(SinkSection):
    SINK: ClassVar[str] = "sidecar.sinks.opik"
    # null: on when OPIK_URL_OVERRIDE or OPIK_API_KEY is set (see Settings).
    enabled: bool | None = None
    url: str = "http://localhost:5173/api"
    api_key: SecretStr | None = None
    workspace: str = "default"
    project_name: str = "Default Project"
    max_batch_records: int = Field(default=1000, ge=1, le=1000)
    max_request_bytes: int = Field(default=8 << 20, ge=64 << 10)
    timeout_s: float = Field(default=10.0, gt=0)
    max_in_flight: int = Field(default=2, ge=1, le=16)
    # Batches sent at once, acknowledged in order: the next batch is encoded
    # and sent while Opik works on the previous one.
    max_batches_in_flight: int = Field(default=2, ge=1, le=8)
    max_events_per_minute: int | None = Field(default=None, ge=1)
    # gzip request bodies: "auto" when the body is large enough and Opik is
    # not on this machine (see sidecar/sinks/opik_http.py for the figures).
    compress: Literal["auto", "always", "never"] = "auto"
    # TLS: the system's trust store; a CA bundle (PEM) instead; or no check.
    ca_bundle: Path | None = None
    verify_tls: bool = True


class RedisSettings(Section):
    """Redis for the statistics cache; the URL may carry a password (never logged)."""

    url: str = "redis://localhost:6379/0"
    # Connect and command timeout: the longest a dead Redis can delay one
    # request before the cache's breaker takes it out of the path.
    timeout_s: float = Field(default=0.25, gt=0)


class BreakerSettings(Section):
    failure_threshold: int = Field(default=5, ge=1)
    reset_timeout_s: float = Field(default=30.0, gt=0)
    half_open_max_calls: int = Field(default=1, ge=1)


class RetrySettings(Section):
    initial_backoff_s: float = Field(default=0.5, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)


Rate = Annotated[float, Field(ge=0, le=1)]


class SamplingSettings(Section):
    default_rate: Rate = 1.0
    # Replaces default_rate when SIDECAR_ENV=production.
    production_rate: Rate | None = None
    always_sample_errors: bool = True
    agent_overrides: dict[str, Rate] = Field(default_factory=dict)
    tiers: dict[int, Rate] = Field(default_factory=dict)

    def environment_rate(self, environment: str) -> float:
        """The rate of agents without an override or tier rate."""
        if environment == "production" and self.production_rate is not None:
            return self.production_rate
        return self.default_rate


class RedactionPattern(Section):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    regex: str = Field(min_length=1)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        # User patterns run on RE2 (linear time): what RE2 cannot compile
        # (backreferences, lookarounds) is a config error, not a runtime one.
        import re2

        try:
            re2.compile(value)
        except Exception as exc:
            raise ValueError(f"not a valid RE2 regular expression: {exc}") from None
        return value


DEFAULT_SECRET_KEYS = ("password", "passwd", "secret", "api_key", "apikey", "token",
                       "access_token", "authorization", "cookie")


class RedactionSettings(Section):
    enabled: bool = True
    builtin: bool = True
    patterns: tuple[RedactionPattern, ...] = ()
    keys: tuple[str, ...] = DEFAULT_SECRET_KEYS
    replacement: str = "[REDACTED]"

    @model_validator(mode="after")
    def _unique_names(self) -> RedactionSettings:
        names = [p.name for p in self.patterns]
        if len(names) != len(set(names)):
            raise ValueError("patterns: each name must be unique")
        return self


class SpansSettings(Section):
    max_line_bytes: int = Field(default=1 << 20, ge=1024)
    # A longer input/output/metadata/events/error_info value is truncated.
    max_field_bytes: int = Field(default=64 << 10, ge=1024)
    redaction: RedactionSettings = RedactionSettings()


class RetentionSettings(Section):
    """How long spans stay in Postgres; the daemon also keeps day partitions ahead."""

    # null: keep spans forever; else spans whose start_time is older go.
    ttl_days: int | None = Field(default=None, ge=1)
    # How often a running daemon creates partitions ahead and applies the TTL.
    interval_s: float = Field(default=3600.0, gt=0)
    # Day partitions kept ready ahead of today (UTC).
    partitions_ahead_days: int = Field(default=3, ge=1, le=60)
    # Rows deleted per transaction where a whole partition cannot be dropped.
    delete_batch_rows: int = Field(default=10_000, ge=100)
    # false: a partly expired day stays until all of it has expired (up to a
    # day past ttl_days), so retention never deletes from day partitions.
    trim_partial_day: bool = True


_WINDOW = r"^[1-9][0-9]{0,5}[mhd]$"


class CacheSettings(Section):
    """The statistics cache: Redis first, an in-memory TTL cache as fallback."""

    backend: Literal["redis", "memory"] = "redis"
    # Seconds a window's statistics stay cached; windows not listed are not cached.
    ttl_s: dict[Annotated[str, StringConstraints(pattern=_WINDOW)],
                Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {"1h": 60.0, "24h": 300.0, "7d": 600.0})
    # Deployment-wide prefix before obs_metrics:{window}:{agent} (e.g. "prod:").
    key_prefix: str = Field(default="", max_length=128)
    # After a Redis failure, the cache answers from memory this long before trying again.
    retry_after_s: float = Field(default=5.0, gt=0)
    memory_max_entries: int = Field(default=1024, ge=1)


class QuarantineSettings(Section):
    # The quarantine's size cap per sink: past it the oldest entries are dropped
    # (and counted), so bad input cannot fill the state directory.
    max_bytes: int = Field(default=32 << 20, ge=1 << 16)


class StatsSettings(Section):
    # The longest window `stats` and GET /stats answer; longer ones get a 400.
    max_window: Annotated[str, StringConstraints(pattern=_WINDOW)] = "31d"


class HealthThresholds(Section):
    error_rate_warning: float = Field(default=0.10, ge=0, le=1)
    error_rate_critical: float = Field(default=0.50, ge=0, le=1)
    latency_p95_warning_ms: float = Field(default=2000.0, gt=0)
    latency_p95_critical_ms: float = Field(default=10000.0, gt=0)
    lag_warning_s: float = Field(default=60.0, gt=0)
    lag_critical_s: float = Field(default=600.0, gt=0)


class HealthSettings(Section):
    enabled: bool = True  # the health span; the verdict is evaluated either way
    interval_s: float = Field(default=60.0, gt=0)
    # How often the verdict (/metrics, /readyz body, status) is re-evaluated.
    evaluate_interval_s: float = Field(default=5.0, gt=0)
    window_s: float = Field(default=300.0, gt=0)
    thresholds: HealthThresholds = HealthThresholds()


class HttpSettings(Section):
    enabled: bool = True
    listen: str = Field(default="127.0.0.1:9464", pattern=r"^.+:\d{1,5}$")


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ShutdownSettings(Section):
    drain_timeout_s: float = Field(default=10.0, gt=0)


class Settings(Section):
    spool: SpoolSettings = SpoolSettings()
    batch: BatchSettings = BatchSettings()
    postgres: PostgresSettings = PostgresSettings()
    opik: OpikSettings = OpikSettings()
    redis: RedisSettings = RedisSettings()
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    sampling: SamplingSettings = SamplingSettings()
    spans: SpansSettings = SpansSettings()
    retention: RetentionSettings = RetentionSettings()
    cache: CacheSettings = CacheSettings()
    stats: StatsSettings = StatsSettings()
    quarantine: QuarantineSettings = QuarantineSettings()
    health: HealthSettings = HealthSettings()
    http: HttpSettings = HttpSettings()
    logging: LoggingSettings = LoggingSettings()
    shutdown: ShutdownSettings = ShutdownSettings()

    @model_validator(mode="after")
    def _opik_default(self, info: ValidationInfo) -> Settings:
        if self.opik.enabled is None:
            # The environment load_settings() was given, else the process's.
            env = (info.context or {}).get("env", os.environ)
            on = bool(env.get("OPIK_URL_OVERRIDE") or env.get("OPIK_API_KEY"))
            object.__setattr__(self, "opik", self.opik.model_copy(update={"enabled": on}))
        return self


# Keys of the public configuration whose feature is not built yet: setting one
# is an error, never a silent no-op (an operator who sets a redaction key must
# not believe that secrets are masked).
NOT_IMPLEMENTED: dict[tuple[str, ...], str] = {
    ("receivers",): "the Opik and OTLP HTTP receivers",
}


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
    """
    env = os.environ if env is None else env
    found = locate(path, env, cwd)
    source = str(found.path) if found.path else "(no config file)"
    raw, lines = _read_yaml(found, source)
    environments = raw.pop("environments", None) or {}
    chosen = env.get("SIDECAR_ENV", "")
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
    problems.extend(_not_implemented(raw, lines))
    for name, section in environments.items():
        if isinstance(section, dict):
            problems.extend(_not_implemented(section, lines, ("environments", str(name))))
    if chosen and isinstance(environments.get(chosen), dict):
        raw = _overlay(raw, environments[chosen])
    tree = expand(raw, env)
    origins = apply_environment(tree, env, Settings.model_fields)
    opik_tree = tree.get("opik")
    if not (isinstance(opik_tree, dict) and opik_tree.get("enabled") is not None):
        origins.setdefault(("opik", "enabled"),
                           "default: on when OPIK_URL_OVERRIDE or OPIK_API_KEY is set")
    try:
        settings = Settings.model_validate(tree, context={"env": env})
    except ValidationError as exc:
        problems.extend(_problems(exc, lines, chosen, origins))
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return LoadedConfig(settings, found, origins, lines, chosen)


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


def scrub(text: str) -> str:
    """Free text (an error message) with every secret masked (``sidecar.secrets``)."""
    return secrets.scrub(text)


def mask_url(url: str) -> str:
    """A URL/DSN with the password of its userinfo and its secret-named query
    parameters masked (``postgresql://u:***@h/db?api_key=***``, ``password=***``)."""
    return secrets.scrub(url)


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective config as plain data with every secret masked: each value
    of a key named like a secret, and the credentials in every URL and DSN."""
    masked: dict[str, Any] = _redact(settings.model_dump(mode="json", by_alias=True))
    return masked


def _redact(node: Any, key: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _redact(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v, key) for v in node]
    if isinstance(node, str) and is_secret_name(key):
        return "***"
    if isinstance(node, str) and (key in ("url", "dsn") or "://" in node):
        return mask_url(node)
    return node
