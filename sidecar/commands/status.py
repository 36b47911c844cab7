"""``span-sidecar status``: what each sink still has to ship, and how fast it goes.

From disk, with no daemon needed: the spool, each sink's checkpoints and
quarantine, and the breaker state each pipeline last recorded. Records
behind are *estimated* from bytes: a short sample at the start and the end
of each file's unshipped part gives the bytes per line (a part no bigger
than two samples is counted exactly), so a backlog of millions of lines
answers in milliseconds instead of being read whole. Quarantine files are
counted the same way.

When the daemon answers on its HTTP address (``GET /status``), status also
shows what only the daemon knows: the current rate, the ETA, the live
breaker state and the lag as the daemon measures it. It says whether the
daemon is running.

The oldest unshipped age from disk is the modification time of the oldest
file with unshipped bytes (the daemon, which watches files grow, knows it
more precisely and its figure is shown when it runs).

A sink that is disabled now but left a checkpoint gets a row too: what it
never received, and how long the janitor keeps those files for it
(``sidecar.spool.disabled_sinks``). With the daemon running, the health verdict's
reasons are listed under it, each with when it clears.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sidecar.config.settings import Settings
from sidecar.sinks.registry import enabled_sinks
from sidecar.spool.checkpoints import FileMark, read_marks
from sidecar.spool.disabled_sinks import first_seen, with_checkpoint
from sidecar.spool.files import count_newlines
from sidecar.spool.state import StateDir
from sidecar.spool.tailer import spool_files

SAMPLE_BYTES = 64 << 10
DAEMON_TIMEOUT_S = 0.5


def _spool_files(settings: Settings) -> list[tuple[Path, os.stat_result]]:
    return sorted((Path(p), st) for p, st in spool_files(settings.spool.dir,
                                                         settings.spool.patterns))


def count_lines(path: Path, start: int, end: int) -> tuple[int, bool]:
    """Lines between two offsets: ``(count, estimated)``; never reads more
    than two samples of ``SAMPLE_BYTES``."""
    size = end - start
    if size <= 0:
        return 0, False
    try:
        with path.open("rb") as fh:
            if size <= 2 * SAMPLE_BYTES:
                return count_newlines(fh.fileno(), start, end)[0], False
            fh.seek(start)
            head = fh.read(SAMPLE_BYTES)
            fh.seek(end - SAMPLE_BYTES)
            tail = fh.read(SAMPLE_BYTES)
    except FileNotFoundError:
        return 0, False
    newlines = head.count(b"\n") + tail.count(b"\n")
    if newlines == 0:
        return 0, True  # a single huge line (or none): it will be quarantined
    return round(size * newlines / (len(head) + len(tail))), True


def _sink_report(name: str, files: list[tuple[Path, os.stat_result]],
                 marks: dict[tuple[int, int], FileMark], state: StateDir) -> dict[str, Any]:
    behind_files, behind_bytes, behind_records, estimated, oldest = 0, 0, 0, False, None
    for path, st in files:
        mark = marks.get((st.st_dev, st.st_ino))
        acked = mark.offset if mark and mark.offset <= st.st_size else 0
        if st.st_size > acked:
            behind_files += 1
            behind_bytes += st.st_size - acked
            lines, guessed = count_lines(path, acked, st.st_size)
            behind_records += lines
            estimated |= guessed
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
    qfile = state.quarantine_file(name)
    qsize = qfile.stat().st_size if qfile.exists() else 0
    quarantined, q_estimated = count_lines(qfile, 0, qsize)
    return {
        "sink": name, "files_behind": behind_files, "bytes_behind": behind_bytes,
        "records_behind": behind_records, "records_behind_estimated": estimated,
        "oldest_unshipped_age_s": None if oldest is None else round(time.time() - oldest, 1),
        "breaker": state.read_status(name).get("breaker", "unknown"),
        "quarantined": quarantined, "quarantined_estimated": q_estimated,
    }


def _disabled_reports(settings: Settings, files: list[tuple[Path, os.stat_result]],
                      state: StateDir, enabled: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row for each disabled sink that left a checkpoint: what it never got,
    and until when the janitor keeps it (``sidecar.spool.disabled_sinks``)."""
    rows = []
    for name in with_checkpoint(state, [r["sink"] for r in enabled]):
        report = _sink_report(name, files, read_marks(state, name), state)
        since = first_seen(state, name)
        until = None if since is None else since + settings.spool.disabled_sink_keep_s
        report.update(enabled=False, breaker="disabled", kept_until=until,
                      kept_for_s=None if until is None else round(max(0.0, until - time.time())))
        rows.append(report)
    return rows


def daemon_status(settings: Settings) -> dict[str, Any]:
    """Ask a running daemon (``GET /status``); say why when nobody answers."""
    if not settings.http.enabled:
        return {"running": None, "reason": "http is disabled: cannot ask the daemon"}
    host, _, port = settings.http.listen.rpartition(":")  # as the server parses it
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"http://{where}/status"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(url, timeout=DAEMON_TIMEOUT_S) as response:
            data = json.loads(response.read())
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"running": False, "address": where,
                "reason": f"nothing answers at {where} ({reason})"}
    return {"running": True, "address": where, **data}


def collect(settings: Settings, ask_daemon: bool = True) -> dict[str, Any]:
    """Every figure of the report, machine-readable (``--json`` prints it as is)."""
    files = _spool_files(settings)
    state = StateDir(settings.spool.state_dir)
    daemon = daemon_status(settings) if ask_daemon else {"running": None}
    live: dict[str, dict[str, Any]] = {s["sink"]: s for s in daemon.get("sinks") or []}
    sinks = []
    for name in enabled_sinks(settings):
        report = _sink_report(name, files, read_marks(state, name), state)
        report["enabled"] = True
        if name in live:
            d = live[name]
            report["daemon"] = {k: d.get(k) for k in (
                "records_per_s", "bytes_per_s", "drain_bytes_per_s", "eta_s", "lag_seconds",
                "lag_bytes", "records_shipped", "breaker", "behind")}
            report["breaker"] = d.get("breaker", report["breaker"])
        sinks.append(report)
    sinks.extend(_disabled_reports(settings, files, state, sinks))
    return {"spool_dir": str(settings.spool.dir), "spool_files": len(files),
            "spool_bytes": sum(st.st_size for _, st in files),
            "daemon": {k: v for k, v in daemon.items() if k != "sinks"}, "sinks": sinks}


# -- human units -----------------------------------------------------------------------------

def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def human_count(n: float) -> str:
    return f"{n:,.0f}"


def _daemon_lines(d: dict[str, Any]) -> list[str]:
    if d.get("running"):
        return [f"daemon: running (pid {d.get('pid')}, {d.get('address')}, "
                f"health {d.get('health')})", *_health_lines(d.get("health_reasons") or [])]
    if d.get("running") is False:
        return [f"daemon: not running ({d.get('reason')})"]
    return [f"daemon: unknown ({d.get('reason', 'not asked')})"]


def _health_lines(reasons: list[dict[str, Any]]) -> list[str]:
    """Why the verdict is not healthy, and when each reason clears."""
    out = []
    for r in reasons:
        if r.get("clears_in_s") is not None:
            when = (f"clears by {r['clears_at']} (in {human_duration(r['clears_in_s'])}) "
                    "unless it happens again")
        else:
            when = f"clears {r.get('clears_when') or 'when the condition ends'}"
        out.append(f"  health {r['level']}: {r['reason']}; {when}")
    return out


def _pace(live: dict[str, Any] | None) -> str:
    if live is None:
        return ""
    rate = live.get("records_per_s")
    if rate is None:
        return "; rate: measuring"
    eta = live.get("eta_s")
    if eta is None:
        when = "ETA: not catching up" if rate else "ETA: stalled"
    else:
        when = "ETA: now" if eta == 0 else f"ETA {human_duration(eta)}"
    return f"; rate {human_count(rate)} records/s ({human_bytes(live.get('bytes_per_s') or 0)}/s)" \
           f", {when}"


def _disabled_line(s: dict[str, Any]) -> str:
    approx = "~" if s["records_behind_estimated"] else ""
    line = (f"  {s['sink']:<9} disabled; never received: {approx}"
            f"{human_count(s['records_behind'])} records, {human_bytes(s['bytes_behind'])} "
            f"in {s['files_behind']} files")
    if not s["files_behind"]:
        return line
    if s["kept_until"] is None:
        keep = "kept from the daemon's next start"
    elif s["kept_for_s"]:
        keep = f"kept {human_duration(s['kept_for_s'])} more"
    else:
        keep = "no longer kept (spool.disabled_sink_keep_s is over)"
    return f"{line}; {keep}; `span-sidecar forget-sink {s['sink']}` lets them go"


def render(report: dict[str, Any]) -> str:
    """The report for a person: human units, one line per sink."""
    out = [f"spool {report['spool_dir']}: {report['spool_files']} files, "
           f"{human_bytes(report['spool_bytes'])}", *_daemon_lines(report["daemon"])]
    for s in report["sinks"]:
        if s.get("enabled") is False:
            out.append(_disabled_line(s))
            continue
        approx = "~" if s["records_behind_estimated"] else ""
        age = s["oldest_unshipped_age_s"]
        live = s.get("daemon")
        if live and live.get("lag_seconds") is not None and s["bytes_behind"]:
            age = live["lag_seconds"]
        oldest = "" if age is None or not s["bytes_behind"] else \
            f", oldest unshipped {human_duration(age)} old"
        q = f"{'~' if s['quarantined_estimated'] else ''}{human_count(s['quarantined'])}"
        out.append(
            f"  {s['sink']:<9} behind: {approx}{human_count(s['records_behind'])} records, "
            f"{human_bytes(s['bytes_behind'])} in {s['files_behind']} files{oldest}"
            f"{_pace(live)}; breaker {s['breaker']}; quarantined {q}")
    return "\n".join(out)
