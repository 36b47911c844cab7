"""``span-sidecar run``: the App under signal handling (uvicorn's shell).

The first SIGTERM/SIGINT starts a drain; a second exits at once. SIGHUP
re-reads the config file the daemon started with (``sidecar/config/reload.py``). The exit is
bounded whatever a driver does: after a stop signal the app has
``shutdown.drain_timeout_s`` plus a grace period, and past that the process
exits. That is safe at any moment: checkpoints are durable and only ever
trail what the sinks stored.

Exit status: 0 after a drain in which every reachable sink got every
complete line the spool held at the signal (a sink found unreachable is
skipped and its backlog logged, ``app.drain.finished``); 3
(``sidecar/exit_codes.py: EXIT_DRAIN_INCOMPLETE``) when the drain timeout cut it short, since in
Kubernetes what a drain leaves dies with the pod; 1 after a second signal or
a crash.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import structlog

from sidecar.app import App
from sidecar.config.reload import reload_config
from sidecar.config.settings import Settings
from sidecar.exit_codes import EXIT_DRAIN_INCOMPLETE
from sidecar.pipeline.drain import drain

log = structlog.get_logger("sidecar.daemon")

EXIT_GRACE_S = 5.0


def _exit_now(code: int, event: str) -> None:
    log.warning(event, exit_code=code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def raise_open_files_limit() -> None:
    """Take the hard limit, as headroom: a sink's reader holds few spool files
    open (up to 8 new ones, the one it reads, deleted ones it still reads;
    ``sidecar/spool/discovery.py``), but sockets and the state directory
    need descriptors too, and running out is only waited out
    (``sidecar/spool/faults.py``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            log.warning("app.open_files.limited", soft=soft, hard=hard)


# The hot path allocates a few short-lived objects per span (lines, records,
# rows) that form no reference cycles; collecting every 700 allocations (the
# interpreter's default) cost about a quarter of the daemon's CPU. Cycles are
# still collected, every 50,000 allocations. See README, "Performance".
GC_THRESHOLDS = (50_000, 20, 100)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
# Blocks of this size or more are mmapped (and unmapped when freed); below it
# they come from the heap, whose top is given back once this much is free.
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 8 << 20


def tune_gc() -> None:
    """Move start-up objects out of the collector's way; collect less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _fixed_mmap_threshold()


def _fixed_mmap_threshold() -> None:
    """Pin glibc's mmap threshold at 4 MiB and its trim threshold at 8 MiB.

    Left to itself glibc raises the mmap threshold to the largest block
    freed, up to 32 MiB, and RSS crept up while a backlog drained. Pinned at
    256 KiB (as it was), every spool read chunk (1 MiB), Opik request body
    (~1 MB) and COPY buffer was a fresh mapping, each page a minor fault
    with a zeroed page: 0.6-0.7 faults a span with Postgres alone, 1.8 with
    both sinks, ~6 % of the daemon's CPU. At 4 MiB they are reused from the
    heap (0.02 faults a span), and a 1M-span drain peaks at the same RSS
    (README, "Performance"). No-op off glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def install_signal_handlers(stop: asyncio.Event, force: Callable[[], None]) -> None:
    """First SIGTERM/SIGINT: drain; a second: ``force`` (exit at once, still safe)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("app.signal.forced", signal=signal.Signals(signum).name)
            force()
        else:
            log.info("app.signal.received", signal=signal.Signals(signum).name)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def install_reload_handler(app: App, config: Path | None) -> None:
    """SIGHUP: re-read ``config`` (as at start) and apply what can change live."""
    def on_hup() -> None:
        log.info("app.signal.received", signal="SIGHUP")
        reload_config(app, config)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)


async def run_daemon(settings: Settings, config: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT, drain, and return the exit status: 0 when the
    drain shipped everything to every reachable sink, ``EXIT_DRAIN_INCOMPLETE``
    when its timeout cut it short (a second signal exits with 1)."""
    raise_open_files_limit()
    tune_gc()
    stop = asyncio.Event()
    install_signal_handlers(stop, lambda: _exit_now(1, "app.exit.forced"))
    app = App(settings)
    install_reload_handler(app, config)
    task = asyncio.create_task(app.run(stop))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not await drain({task}, settings.shutdown.drain_timeout_s + EXIT_GRACE_S):
        _exit_now(_exit_code(app), "app.exit.stuck")  # a driver did not let go in time
    task.result()  # a crashed component: the CLI turns it into exit code 1
    code = _exit_code(app)
    log.info("app.exit.clean" if code == 0 else "app.exit.incomplete", pid=os.getpid(),
             exit_code=code)
    return code


def _exit_code(app: App) -> int:
    """0 when the drain left no reachable sink anything; no report: it never ended."""
    report = app.drain_report
    return report.exit_code if report is not None else EXIT_DRAIN_INCOMPLETE
