"""``span-sidecar status``: what each sink still has to ship, read from disk.

No running daemon is needed: it reads the spool, the checkpoints and the
quarantine files, and the breaker state each pipeline last recorded.

The oldest unshipped age means what ``lag_seconds`` means in ``/metrics``:
how long ago the oldest byte not yet acknowledged was known to exist. From
disk alone that is its file's modification time (the daemon, which watches
files grow, knows it more precisely).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sidecar.settings import Settings
from sidecar.sinks.registry import enabled_sinks
from sidecar.spool.checkpoints import FileMark, read_marks
from sidecar.spool.state import StateDir
from sidecar.spool.tailer import spool_files


def _spool_files(settings: Settings) -> list[tuple[Path, os.stat_result]]:
    return sorted((Path(p), st) for p, st in spool_files(settings.spool.dir,
                                                         settings.spool.patterns))


def _lines(path: Path, start: int = 0) -> int:
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _sink_report(name: str, files: list[tuple[Path, os.stat_result]],
                 marks: dict[tuple[int, int], FileMark], state: StateDir) -> dict[str, Any]:
    behind_files, behind_bytes, behind_records, oldest = 0, 0, 0, None
    for path, st in files:
        mark = marks.get((st.st_dev, st.st_ino))
        acked = mark.offset if mark and mark.offset <= st.st_size else 0
        if st.st_size > acked:
            behind_files += 1
            behind_bytes += st.st_size - acked
            behind_records += _lines(path, acked)
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
    breaker = state.read_status(name)
    return {
        "sink": name, "files_behind": behind_files, "bytes_behind": behind_bytes,
        "records_behind": behind_records,
        "oldest_unshipped_age_s": None if oldest is None else round(time.time() - oldest, 1),
        "breaker": breaker.get("breaker", "unknown"),
        "quarantined": _lines(state.quarantine_file(name)),
    }


def collect(settings: Settings) -> dict[str, Any]:
    files = _spool_files(settings)
    state = StateDir(settings.spool.state_dir)
    return {
        "spool_dir": str(settings.spool.dir),
        "spool_files": len(files),
        "spool_bytes": sum(st.st_size for _, st in files),
        "sinks": [_sink_report(n, files, read_marks(state, n), state)
                  for n in enabled_sinks(settings)],
    }


def render(report: dict[str, Any]) -> str:
    out = [f"spool {report['spool_dir']}: {report['spool_files']} files, "
           f"{report['spool_bytes']} bytes"]
    for s in report["sinks"]:
        age = s["oldest_unshipped_age_s"]
        out.append(
            f"  {s['sink']:<9} behind: {s['files_behind']} files, {s['records_behind']} records, "
            f"{s['bytes_behind']} bytes"
            f"{'' if age is None else f', oldest {age}s'}; breaker {s['breaker']}; "
            f"quarantined {s['quarantined']}")
    return "\n".join(out)
