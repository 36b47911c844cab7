"""A disabled sink's backlog is kept, named and released on purpose, never silently.

A sink turned off (``enabled: false``, or its URL variable left out at a
restart) leaves its checkpoint in the state directory. The spool files it
never acknowledged are what it would still ship if it came back; the janitor
used to look at the enabled sinks only, and deleted them. Now such a sink
*holds* those files for ``spool.disabled_sink_keep_s`` (24 h by default),
counted from when a daemon first saw it disabled, written to
``state_dir/disabled/<sink>.json`` so that a restart does not extend it; or
until ``span-sidecar forget-sink NAME`` drops its checkpoint. The daemon
names each such sink at start (``spool.backlog.kept``, a warning) and
``span-sidecar status`` shows it.

Behind, for a disabled sink, is every byte its checkpoint does not cover,
files written after it was turned off included: that is what it missed. A
sink enabled again loses its ``disabled`` record, so a later disable starts a
new keep time. The checkpoints are re-read at every sweep, so ``forget-sink``
takes effect on a running daemon too.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import structlog

from sidecar.clock import Clock
from sidecar.config.settings import Settings, SpoolSettings
from sidecar.sinks.registry import enabled_sinks, sink_sections
from sidecar.spool.checkpoints import FileMark, read_marks
from sidecar.spool.state import StateDir
from sidecar.spool.tailer import spool_files

log = structlog.get_logger("sidecar.janitor")

Marks = Mapping[tuple[int, int], FileMark]


def disabled_file(state: StateDir, sink: str) -> Path:
    """Where the time a daemon first saw ``sink`` disabled is kept."""
    return state.root / "disabled" / f"{sink}.json"


def with_checkpoint(state: StateDir, enabled: Collection[str]) -> list[str]:
    """The sinks that have a checkpoint but are not enabled, by name."""
    try:
        names = {p.stem for p in state.checkpoints.glob("*.json") if p.is_file()}
    except OSError:
        return []
    return sorted(names - set(enabled))


def first_seen(state: StateDir, sink: str) -> float | None:
    """The wall time a daemon first saw ``sink`` disabled; None when none did."""
    try:
        since = orjson.loads(disabled_file(state, sink).read_bytes())["since"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return float(since) if isinstance(since, int | float) else None


def _record_first_seen(state: StateDir, sink: str, now: float) -> float:
    since = first_seen(state, sink)
    if since is not None:
        return since
    path = disabled_file(state, sink)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"sink": sink, "since": now}))
        os.replace(tmp, path)
    except OSError as exc:  # kept from now on anyway; a restart starts the time again
        log.warning("spool.backlog.unrecorded", sink=sink, error=exc.strerror)
    return now


def backlog(marks: Marks, files: list[tuple[str, os.stat_result]]) -> tuple[int, int]:
    """(files, bytes) of ``files`` that ``marks`` does not cover."""
    count = size = 0
    for _, st in files:
        mark = marks.get((st.st_dev, st.st_ino))
        acked = mark.offset if mark is not None and mark.offset <= st.st_size else 0
        if st.st_size > acked:
            count, size = count + 1, size + st.st_size - acked
    return count, size


def covers(marks: Marks, dev: int, ino: int, size: int) -> bool:
    """Has the sink of ``marks`` acknowledged this file to its end?"""
    mark = marks.get((dev, ino))
    return mark is not None and mark.offset >= size


@dataclass(frozen=True, slots=True)
class _Held:
    sink: str
    until: float  # wall time


class DisabledSinks:
    """The janitor's view of the sinks that are off but still have a backlog."""

    def __init__(self, settings: SpoolSettings, enabled: Collection[str], clock: Clock) -> None:
        self.state = StateDir(settings.state_dir)
        self.settings = settings
        self.enabled = frozenset(enabled)
        self.clock = clock
        self._held: list[_Held] = []
        self._started = False

    def start(self) -> None:
        """Record when each disabled sink was first seen off; name those behind."""
        self._started = True
        for sink in self.enabled:
            disabled_file(self.state, sink).unlink(missing_ok=True)
        files = spool_files(self.settings.dir, self.settings.patterns)
        now = self.clock.wall()
        for sink in with_checkpoint(self.state, self.enabled):
            until = _record_first_seen(self.state, sink, now) + self.settings.disabled_sink_keep_s
            self._held.append(_Held(sink, until))
            behind_files, behind_bytes = backlog(read_marks(self.state, sink), files)
            if behind_files:
                log.warning("spool.backlog.kept", sink=sink, files_behind=behind_files,
                            bytes_behind=behind_bytes, kept_until=_iso(until),
                            kept_s=round(max(0.0, until - now)),
                            hint=f"enable {sink} again to ship them, or run "
                                 f"`span-sidecar forget-sink {sink}` to let them go")

    def holding(self) -> list[Marks]:
        """The checkpoints of the sinks still within their keep time (read now)."""
        if not self._started:
            self.start()
        now = self.clock.wall()
        out: list[Marks] = []
        for held in list(self._held):
            if not self.state.checkpoint_file(held.sink).exists():
                self._held.remove(held)
                log.info("spool.backlog.released", sink=held.sink, why="forgotten")
            elif now >= held.until:
                self._held.remove(held)
                log.info("spool.backlog.released", sink=held.sink, why="keep time over")
            else:
                out.append(read_marks(self.state, held.sink))
        return out


def forget(state: StateDir, sink: str) -> list[Path]:
    """Drop a sink's checkpoint, status and disabled record; return what went.

    Its quarantine stays (``replay-quarantine --sink`` can still use it). A
    sink enabled later starts from the beginning of the spool (every write is
    idempotent, so what is still there is shipped once more at most).
    """
    ckpt = state.checkpoint_file(sink)
    paths = [ckpt, ckpt.with_suffix(".corrupt"), ckpt.with_suffix(".tmp"),
             state.status_file(sink), disabled_file(state, sink)]
    gone = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        gone.append(path)
    return gone


class ForgetRefused(ValueError):
    """``forget-sink`` was asked for an enabled sink, or one that never was."""


def forget_sink(settings: Settings, sink: str) -> list[Path]:
    """``span-sidecar forget-sink NAME``: forget a disabled sink's progress so
    that its backlog no longer holds spool files; what was removed."""
    if sink in enabled_sinks(settings):
        raise ForgetRefused(f"sink {sink} is enabled; disable it first (its checkpoint is "
                            "how it knows what it shipped)")
    state = StateDir(settings.spool.state_dir)
    gone = forget(state, sink)
    if not gone and sink not in sink_sections(settings):
        raise ForgetRefused(f"no sink is named {sink!r} and {state.root} holds nothing for it")
    return gone


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
