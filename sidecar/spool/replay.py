"""``span-sidecar replay-quarantine``: give quarantined records another chance.

The quarantine file is taken atomically (renamed); every entry that now
parses is written back into the spool as one ``replay-*.jsonl.done`` file,
which the running daemon ships like any other (to every enabled sink: the
writes are idempotent). Entries that still fail, or were kept only by their
head, go back to the quarantine as they were (with the current reason, and
without logging them again: each was logged when first quarantined); so does,
byte for byte, an entry that cannot be decoded at all. Nothing is dropped.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from sidecar.client.fsutil import fsync_dir
from sidecar.clock import SystemClock
from sidecar.config.settings import Settings
from sidecar.records import Rejected, parse_line
from sidecar.spool.quarantine import Quarantine, raw_of
from sidecar.spool.state import StateDir


def _take(path: Path) -> Path | None:
    """Rename the quarantine away while holding the lock its writer takes, so
    a running daemon's next entry goes to a fresh file (see Quarantine)."""
    taken = path.with_name(f"{path.stem}.replaying-{int(time.time() * 1000)}-"
                           f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st, own = os.stat(path), os.fstat(fd)
            if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
                os.link(path, taken)  # never replaces an existing file
                os.unlink(path)
                return taken
        except FileNotFoundError:
            pass  # another replay took it first: look again
        finally:
            os.close(fd)  # closing releases the lock


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
    fsync_dir(settings.spool.dir)  # durable before the quarantine copy goes
    return final


def replay_sink(settings: Settings, sink: str) -> dict[str, Any]:
    """Replay the sink's quarantine, and any file an interrupted replay left."""
    state = StateDir(settings.spool.state_dir)
    leftovers = sorted(state.quarantine.glob(f"{sink}.replaying-*.jsonl"))
    taken = _take(state.quarantine_file(sink))
    totals: dict[str, Any] = {"sink": sink, "replayed": 0, "still_invalid": 0, "spool_files": []}
    for path in [*leftovers, *([taken] if taken else [])]:
        result = _replay_file(settings, sink, path)
        totals["replayed"] += result["replayed"]
        totals["still_invalid"] += result["still_invalid"]
        if result["spool_file"]:
            totals["spool_files"].append(result["spool_file"])
    return totals


def _replay_file(settings: Settings, sink: str, taken: Path) -> dict[str, Any]:
    good: list[bytes] = []
    back = Quarantine(StateDir(settings.spool.state_dir), sink, SystemClock())
    still = 0
    for raw_entry in taken.read_bytes().splitlines():
        try:
            entry = orjson.loads(raw_entry)
            raw = raw_of(entry)
            result = parse_line(raw)
            if entry.get("truncated") or isinstance(result, Rejected):
                # Put back as it was (its source, offset, time), with today's
                # reason; silently: it was logged when it was first quarantined.
                if isinstance(result, Rejected):
                    entry["reason"] = result.reason
                back.restore(orjson.dumps(entry))
                still += 1
            else:
                good.append(raw)
        except Exception:  # not an entry we can read: it stays, as it is
            back.restore(raw_entry)
            still += 1
    back.close()
    written = _write_spool(settings, sink, good)
    taken.unlink()
    return {"replayed": len(good), "still_invalid": still,
            "spool_file": str(written) if written else None}


def replay(settings: Settings, sink: str | None) -> dict[str, Any]:
    """Replay one sink's quarantine, or every sink's."""
    qdir = StateDir(settings.spool.state_dir).quarantine
    names = [sink] if sink else sorted(p.stem for p in qdir.glob("*.jsonl")
                                       if ".replaying-" not in p.name)
    return {"results": [replay_sink(settings, name) for name in names]}
