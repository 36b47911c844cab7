"""A real daemon with the receiver on, and the real Opik SDK pointed at it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.opik_emulator import OpikEmulator
from tests.support import Daemon, SidecarEnv, wait_until

AGENT = Path(__file__).with_name("sdk_agent.py")


def receiver_daemon(env: SidecarEnv, emu: OpikEmulator | None,
                    **receivers: Any) -> tuple[Daemon, str]:
    """Both sinks (Opik only with ``emu``), the receiver on an ephemeral port;
    returns the daemon and the receiver's base URL."""
    opik: dict[str, Any] = {"enabled": False}
    if emu is not None:
        opik = {"enabled": True, "url": emu.base_url, "timeout_s": 2.0}
    env.configure(opik=opik, receivers={"enabled": True, "listen": "127.0.0.1:0", **receivers},
                  breaker={"failure_threshold": 3, "reset_timeout_s": 1.0})
    daemon = env.daemon().wait_started()
    return daemon, f"http://127.0.0.1:{receiver_port(daemon)}"


def receiver_port(daemon: Daemon) -> int:
    wait_until(lambda: bool(daemon.events("receivers.server.started")), 10, "the receiver")
    return int(daemon.events("receivers.server.started")[-1]["port"])


def run_sdk_agent(base_url: str, *args: str, workspace: str = "team-a",
                  api_key: str | None = None) -> dict[str, str]:
    """The agent process: the Opik SDK, configured by its environment only
    (``api_key``: OPIK_API_KEY, which the SDK sends as ``Authorization``)."""
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and k != "OPIK_API_KEY"}
    if api_key is not None:
        env["OPIK_API_KEY"] = api_key
    env.update(OPIK_URL_OVERRIDE=f"{base_url}/api", OPIK_WORKSPACE=workspace,
               OPIK_SENTRY_ENABLE="false", OPIK_ANALYTICS_ENABLE="false",
               OPIK_CONFIG_PATH=os.devnull)
    done = subprocess.run([sys.executable, str(AGENT), *args], env=env, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out: dict[str, str] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return out
