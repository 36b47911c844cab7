"""The state directory's layout, owned in one place.

``state_dir/checkpoints/<sink>.json`` (how far each sink acknowledged each
file), ``state_dir/quarantine/<sink>.jsonl`` (lines a sink will never take),
and ``state_dir/status/<sink>.json`` (the breaker state the pipeline last
recorded, read by ``span-sidecar status`` while the daemon runs or not).

With a ``FaultTracker``, a status file that cannot be written for want of a
resource (full disk, file limit) is a fault episode, written again on the
clock, never an exception: it is advisory, and the pipeline must go on.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson

from sidecar.spool.faults import FaultTracker, is_resource_error


class StateDir:
    def __init__(self, root: Path, faults: FaultTracker | None = None) -> None:
        self.root = root
        self.faults = faults  # None: resource errors are raised (commands, tests)
        self.checkpoints = root / "checkpoints"
        self.quarantine = root / "quarantine"
        self.status = root / "status"

    def checkpoint_file(self, sink: str) -> Path:
        return self.checkpoints / f"{sink}.json"

    def quarantine_file(self, sink: str) -> Path:
        return self.quarantine / f"{sink}.jsonl"

    def status_file(self, sink: str) -> Path:
        return self.status / f"{sink}.json"

    def write_status(self, sink: str, status: dict[str, Any]) -> bool:
        """Replace a sink's status file atomically (advisory: not fsynced).
        False: deferred by a resource fault (written again on the clock)."""
        path = self.status_file(sink)
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(orjson.dumps(status))
            os.replace(tmp, path)
        except OSError as exc:
            if self.faults is None or not is_resource_error(exc):
                raise
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            self.faults.failed("state", f"{sink} status", exc, op="write_status",
                               retry=lambda: self.write_status(sink, status))
            return False
        if self.faults is not None:
            self.faults.cleared("state", f"{sink} status")
        return True

    def read_status(self, sink: str) -> dict[str, Any]:
        """A sink's last recorded status; empty when none or unreadable."""
        try:
            data = orjson.loads(self.status_file(sink).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}
