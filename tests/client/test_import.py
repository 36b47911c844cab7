"""What an agent pays to import the client: no daemon dependencies, no pydantic."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pydantic", "asyncpg", "redis", "opik", "watchfiles", "structlog", "aiohttp", "httpx",
         "opentelemetry", "yaml")


def test_importing_the_client_pulls_in_no_daemon_dependency() -> None:
    code = (
        "import sys, sidecar.client\n"
        "from sidecar.client import Tracer\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_the_otel_module_is_the_only_one_that_imports_opentelemetry() -> None:
    code = "import sys, sidecar.client.otel; print('opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "True"
