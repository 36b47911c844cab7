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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import structlog
from pydantic import BaseModel

from sidecar.config.loader import ConfigError, load_settings
from sidecar.config.settings import Settings
from sidecar.config.sources import flatten

log = structlog.get_logger("sidecar.reload")

# The one list of what a reload applies: a key, or a section ending in ".",
# and the keys under a live section that stay as they are.
LIVE = ("sampling.", "spans.", "batch.", "breaker.", "retry.", "logging.level",
        "spool.max_bytes", "spool.on_full")
NOT_LIVE = ("spans.max_line_bytes", "batch.queue_batches")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Reload:
    """What a new config changes: the settings to run with (the old ones with
    the new live values), the live keys that changed, and the changed keys
    that need a restart (their old values stay)."""

    settings: Settings
    applied: list[str]
    restart: list[str]


def live_settings(old: Settings, new: Settings) -> Reload:
    """``old`` with the live keys of ``new``, and which keys changed."""
    changed = changed_keys(old, new)
    applied = [key for key in changed if _is_live(key)]
    effective = old
    for key in applied:
        effective = _with(effective, new, key.split("."))
    return Reload(effective, applied, [key for key in changed if key not in applied])


def _with(old: M, new: BaseModel, path: list[str]) -> M:
    """``old`` with ``new``'s value at ``path`` (a whole mapping where the path
    goes into one: a sampling override is a key of a dict, not a field)."""
    head, rest = path[0], path[1:]
    value = getattr(new, head)
    inner = getattr(old, head)
    if rest and isinstance(inner, BaseModel):
        value = _with(inner, value, rest)
    return old.model_copy(update={head: value})


def _is_live(key: str) -> bool:
    return key not in NOT_LIVE and any(key == p or key.startswith(p) for p in LIVE)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted names of the keys whose values differ (values are never returned)."""
    a, b = flatten(old.model_dump()), flatten(new.model_dump())
    return sorted(".".join(k) for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class Reloadable(Protocol):
    settings: Settings

    def reload(self, new: Settings) -> Reload: ...


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
    change = app.reload(new)
    if change.restart:
        log.warning("config.reload.needs_restart", keys=change.restart,
                    note="these keys are read at start only; the running values stay")
    log.info("config.reload.applied", changed=change.applied)
    return True
