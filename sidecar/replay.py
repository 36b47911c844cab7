"""``span-sidecar replay-quarantine``: give quarantined records another chance.

The quarantine file is taken atomically (renamed); every entry that now
parses is written back into the spool as one ``replay-*.jsonl.done`` file,
which the running daemon ships like any other (to every enabled sink: the
writes are idempotent). Entries that still fail, or were kept only by their
head, go back to the quarantine. Nothing is dropped.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from sidecar.records import Rejected, parse_line
from sidecar.settings import Settings
from sidecar.spool.quarantine import Quarantine, raw_of


def _take(path: Path) -> Path | None:
    """Rename the quarantine away while holding the lock its writer takes, so
    a running daemon's next entry goes to a fresh file (see Quarantine)."""
    taken = path.with_name(f"{path.stem}.replaying-{int(time.time() * 1000)}.jsonl")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(path, taken)
    finally:
        os.close(fd)  # closing releases the lock
    return taken


def _write_spool(settings: Settings, sink: str, lines: list[bytes]) -> Path | None:
    if not lines:
        return None
    name = f"replay-{sink}-{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1000)}"
    tmp = settings.spool.dir / f".{name}.tmp"
    with tmp.open("wb") as fh:
        fh.write(b"".join(line + b"\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())
    final = settings.spool.dir / f"{name}.jsonl.done"
    os.rename(tmp, final)
    return final


def replay_sink(settings: Settings, sink: str) -> dict[str, Any]:
    qdir = settings.spool.state_dir / "quarantine"
    taken = _take(qdir / f"{sink}.jsonl")
    if taken is None:
        return {"sink": sink, "replayed": 0, "still_invalid": 0}
    good: list[bytes] = []
    back = Quarantine(settings.spool.state_dir, sink)
    still = 0
    for raw_entry in taken.read_bytes().splitlines():
        try:
            entry = orjson.loads(raw_entry)
        except orjson.JSONDecodeError:
            continue
        raw = raw_of(entry)
        result = parse_line(raw)
        if entry.get("truncated") or isinstance(result, Rejected):
            reason = result.reason if isinstance(result, Rejected) else str(entry["reason"])
            back.put(raw, str(entry.get("source")), int(entry.get("offset", 0)), reason,
                     size=entry.get("size"))
            still += 1
        else:
            good.append(raw)
    back.close()
    written = _write_spool(settings, sink, good)
    taken.unlink()
    return {"sink": sink, "replayed": len(good), "still_invalid": still,
            "spool_file": str(written) if written else None}


def replay(settings: Settings, sink: str | None) -> dict[str, Any]:
    """Replay one sink's quarantine, or every sink's."""
    qdir = settings.spool.state_dir / "quarantine"
    names = [sink] if sink else sorted(p.stem for p in qdir.glob("*.jsonl")
                                       if ".replaying-" not in p.name)
    return {"results": [replay_sink(settings, name) for name in names]}
