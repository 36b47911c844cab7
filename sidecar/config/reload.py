"""Live reload (SIGHUP): which settings may change while the daemon runs.

Policies (``sampling``, ``spans`` but ``max_line_bytes``), ``batch`` (but
``queue_batches``), ``breaker``, ``retry``, ``logging.level`` and the spool
quota (``spool.max_bytes``, ``spool.on_full``) apply to what happens from
then on. Everything else (spool and state directories, sinks, DSN, URLs,
the HTTP listener, ...) is read once at start: a change is reported as
needing a restart and ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from sidecar.config.loader import ConfigError, load_settings
from sidecar.config.settings import Settings

log = structlog.get_logger("sidecar.reload")

LIVE = ("sampling.", "spans.", "batch.", "breaker.", "retry.", "logging.level",
        "spool.max_bytes", "spool.on_full")
NOT_LIVE = ("spans.max_line_bytes", "batch.queue_batches")


def live_settings(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``old`` with the live keys of ``new``; and the changed keys that need a restart."""
    effective = old.model_copy(update={
        "sampling": new.sampling,
        "spans": new.spans.model_copy(update={"max_line_bytes": old.spans.max_line_bytes}),
        "batch": new.batch.model_copy(update={"queue_batches": old.batch.queue_batches}),
        "breaker": new.breaker, "retry": new.retry,
        "logging": old.logging.model_copy(update={"level": new.logging.level}),
        "spool": old.spool.model_copy(update={"max_bytes": new.spool.max_bytes,
                                               "on_full": new.spool.on_full}),
    })
    restart = [key for key in changed_keys(old, new) if not _is_live(key)]
    return effective, restart


def _is_live(key: str) -> bool:
    return key not in NOT_LIVE and any(key == p or key.startswith(p) for p in LIVE)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted names of the keys whose values differ (values are never returned)."""
    a, b = _flat(old.model_dump()), _flat(new.model_dump())
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Reloadable(Protocol):
    settings: Settings

    def reload(self, new: Settings) -> list[str]: ...


def reload_config(app: Reloadable, path: Path | None,
                  load: Callable[[Path | None], Settings] = load_settings) -> bool:
    """Re-read the config the daemon started with and apply it; never raises.

    An invalid file is refused with every problem logged, and the running
    config stays. Returns whether the new config was applied.
    """
    try:
        new = load(path)
    except ConfigError as exc:
        log.error("config.reload.refused", source=exc.source, errors=exc.problems)
        return False
    except Exception as exc:  # a reload must never take the daemon down
        log.error("config.reload.refused", error_type=type(exc).__name__)
        return False
    changed = [k for k in changed_keys(app.settings, new) if _is_live(k)]
    restart = app.reload(new)
    if restart:
        log.warning("config.reload.needs_restart", keys=restart,
                    note="these keys are read at start only; the running values stay")
    log.info("config.reload.applied", changed=changed)
    return True
