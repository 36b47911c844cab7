"""The state directory's layout, owned in one place.

``state_dir/checkpoints/<sink>.json`` (how far each sink acknowledged each
file), ``state_dir/quarantine/<sink>.jsonl`` (lines a sink will never take),
and ``state_dir/status/<sink>.json`` (the breaker state the pipeline last
recorded, read by ``span-sidecar status`` while the daemon runs or not).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints = root / "checkpoints"
        self.quarantine = root / "quarantine"
        self.status = root / "status"

    def checkpoint_file(self, sink: str) -> Path:
        return self.checkpoints / f"{sink}.json"

    def quarantine_file(self, sink: str) -> Path:
        return self.quarantine / f"{sink}.jsonl"

    def status_file(self, sink: str) -> Path:
        return self.status / f"{sink}.json"

    def write_status(self, sink: str, status: dict[str, Any]) -> None:
        """Replace a sink's status file atomically (advisory: not fsynced)."""
        path = self.status_file(sink)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(status))
        os.replace(tmp, path)

    def read_status(self, sink: str) -> dict[str, Any]:
        """A sink's last recorded status; empty when none or unreadable."""
        try:
            data = orjson.loads(self.status_file(sink).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}
