"""``span-sidecar run``: the App under signal handling (uvicorn's shell)."""

from __future__ import annotations

import asyncio
import os

import structlog

from sidecar.app import App
from sidecar.settings import Settings

log = structlog.get_logger("sidecar.daemon")


async def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; 0 after a drain, 1 when forced by a second signal."""
    from sidecar.cli import install_signal_handlers

    stop = asyncio.Event()
    main = asyncio.current_task()
    forced = False

    def force() -> None:
        nonlocal forced
        forced = True
        if main is not None:
            main.cancel()

    install_signal_handlers(stop, force)
    app = App(settings)
    try:
        await app.run(stop)
    except asyncio.CancelledError:
        if forced:
            log.warning("app.exit.forced")
            return 1
        raise
    log.info("app.exit.clean", pid=os.getpid())
    return 0
