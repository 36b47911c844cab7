"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``), without libsystemd.

Each message is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX
socket named by ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). Outside systemd the variable is unset and every method is a
no-op, so the app calls them unconditionally. Notification is advisory: a
failed send is logged once and never raises, because a daemon must not die
for want of telling systemd it is alive (the watchdog will say so anyway).

The watchdog pings come from the event loop itself: if the loop blocks, the
pings stop and systemd restarts the service, which is the point.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

from sidecar.clock import Clock, SystemClock, every

log = structlog.get_logger("sidecar.notify")


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half of ``WATCHDOG_USEC``), or None when not asked.

    ``WATCHDOG_PID``, when set, names the process systemd watches; a child
    that inherited the environment must not ping on its parent's behalf.
    """
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    try:
        if not usec or int(usec) <= 0 or (owner and int(owner) != pid):
            return None
        return int(usec) / 2_000_000
    except ValueError:
        return None


class Notifier:
    """Sends sd_notify messages; built from an environment mapping."""

    def __init__(self, env: Mapping[str, str] | None = None, clock: Clock | None = None) -> None:
        env = os.environ if env is None else env
        self._clock = clock or SystemClock()
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith("@"):
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        self.watchdog_s = watchdog_interval(env, os.getpid()) if self._address else None
        self._socket: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        """True when running under systemd with ``Type=notify``."""
        return self._address is not None

    def ready(self) -> None:
        """Startup finished: systemd may start units ordered after us."""
        self.send("READY=1")

    def status(self, text: str) -> None:
        """A one-line status shown by ``systemctl status``."""
        self.send("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> None:
        """Shutdown began (drain in progress)."""
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """One keep-alive ping."""
        self.send("WATCHDOG=1")

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` fields; True when sent."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            self._log_failure(exc)
            return False
        return True

    def _log_failure(self, exc: OSError) -> None:
        # Once at warning: a missing socket would otherwise log every ping.
        emit = log.debug if self._failed else log.warning
        emit("notify.send.failed", error_type=type(exc).__name__, errno=exc.errno)
        self._failed = True

    async def run_watchdog(self, stop_event: asyncio.Event) -> None:
        """Ping every ``watchdog_s`` until ``stop_event`` is set.

        Returns at once when no watchdog was asked for, so the app can start
        it unconditionally in its TaskGroup.
        """
        interval = self.watchdog_s
        if interval is None:
            return
        self.watchdog()
        await every(self._clock, interval, stop_event, self.watchdog)

    def close(self) -> None:
        """Release the socket (sending again reopens it)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
