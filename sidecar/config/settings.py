"""The configuration's models: one frozen pydantic tree, one section per component.

Every key has a default (an empty file is valid) and unknown keys are errors,
so a typo in an operator's file is reported instead of silently ignored.
Finding, reading and validating a file is ``sidecar/config/loader.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sidecar.config.secrets import SecretUrl, mask_url


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpoolSettings(Section):
    dir: Path = Path("/var/spool/span-sidecar")
    state_dir: Path = Path("/var/lib/span-sidecar")
    patterns: tuple[str, ...] = ("*.jsonl", "*.jsonl.done")
    # inotify (read by the event loop; watchfiles off Linux) plus a periodic
    # rescan; "poll" for network volumes.
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
    context)`` function); adding a sink is that module plus one such section.
    ``target()`` is where the sink ships to, for logs and ``check-config``,
    with its credentials masked.
    """

    SINK: ClassVar[str]
    enabled: bool | None = True

    def target(self) -> str:
        return ""


class PostgresSettings(SinkSection):
    SINK: ClassVar[str] = "sidecar.sinks.postgres"
    enabled: bool = True
    dsn: SecretUrl = "postgresql://localhost/postgres"
    # Kept apart from the DSN so that it can come from a secret; never printed.
    password: SecretStr | None = None
    db_schema: str = Field(default="public", alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    auto_migrate: bool = True
    # Postgres is fastest with thousands of rows per COPY (a few ms fixed cost each).
    max_batch_records: int = Field(default=5000, ge=1)
    # One pool per daemon, shared by the sink and the read side (store/pool.py):
    # at most this many connections while shipping, none after idle_timeout_s.
    pool_size: int = Field(default=1, ge=1, le=32)
    # An unused connection is closed after this long; shorter than health.interval_s,
    # so an idle sidecar (only its health span a minute) holds none half the time.
    idle_timeout_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    command_timeout_s: float = Field(default=60.0, gt=0)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def target(self) -> str:
        return mask_url(self.dsn)


class OpikSettings(SinkSection):
    SINK: ClassVar[str] = "sidecar.sinks.opik"
    # null: on when OPIK_URL_OVERRIDE or OPIK_API_KEY is set (see Settings).
    enabled: bool | None = None
    url: SecretUrl = "http://localhost:5173/api"
    api_key: SecretStr | None = None
    workspace: str = "default"
    project_name: str = "Default Project"
    max_batch_records: int = Field(default=1000, ge=1, le=1000)
    max_request_bytes: int = Field(default=8 << 20, ge=64 << 10)
    # Connecting, and each wait for Opik's bytes; a request as a whole gets
    # three times this plus a second for each 32 KiB of its body (its
    # transport, aiohttp, has no write timeout).
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

    def target(self) -> str:
        return mask_url(self.url)


class RedisSettings(Section):
    """Redis for the statistics cache; the URL may carry a password (never logged)."""

    url: SecretUrl = "redis://localhost:6379/0"
    # Connect and command timeout: the longest a dead Redis can delay one
    # request before the cache's breaker takes it out of the path.
    timeout_s: float = Field(default=0.25, gt=0)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        """What the redis client would refuse, refused when the config loads:
        the client is made at the cache's first use, long after start-up."""
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number in range)
        except ValueError:
            raise ValueError("the port must be a number from 0 to 65535") from None
        return value


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
    # Daily rollups (stats, v_agent_latency_summary) are kept this long, and never
    # less than ttl_days: a 90-day trend survives 7 days of raw spans. null: forever.
    rollup_ttl_days: int | None = Field(default=400, ge=1)
    # Hourly rollups (a window's first partial day): keep >= stats.max_window. null: forever.
    rollup_hourly_ttl_days: int | None = Field(default=35, ge=1)
    # How often a running daemon merges the pending rollup deltas (one sidecar at a time).
    rollup_interval_s: float = Field(default=10.0, gt=0)


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


class ReceiversSettings(Section):
    """Agents' HTTP writes (Opik's REST API, OTLP/HTTP), appended to the spool
    before they are answered (sidecar/receivers/)."""

    enabled: bool = False
    # Loopback by default: the receiver takes prompts and outputs from anyone who reaches it.
    listen: str = Field(default="127.0.0.1:4318", pattern=r"^.+:\d{1,5}$")
    # When set, every request needs `Authorization: Bearer <token>` (else 401).
    token: SecretStr | None = None
    # A larger request body (after gzip) is answered 413.
    max_request_bytes: int = Field(default=16 << 20, ge=64 << 10)
    # Bodies being handled at once; past it a request is answered 503 with Retry-After.
    max_inflight_bytes: int = Field(default=64 << 20, ge=64 << 10)
    # "always": each request's records are synced (one fdatasync) before the
    # answer; "interval": at most once a second (a host crash may lose that second).
    fsync: Literal["never", "interval", "always"] = "always"


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
    receivers: ReceiversSettings = ReceiversSettings()
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
