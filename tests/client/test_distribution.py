"""The client alone: a wheel of ``sidecar/client`` with orjson as its only dependency."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson

from sidecar import __version__

REPO = Path(__file__).resolve().parents[2]
DAEMON_MODULES = ("asyncpg", "aiohttp", "httpx", "pydantic", "watchfiles", "redis", "structlog",
                  "yaml", "prometheus_client", "opentelemetry")


def run(*args: str | Path, cwd: Path) -> str:
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_the_client_distribution_has_the_daemons_version() -> None:
    meta = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    assert meta["version"] == __version__ and meta["dependencies"] == ["orjson>=3.9"]


def _copy_orjson(site: Path) -> None:
    """orjson from this environment (nothing is downloaded): its package and dist-info."""
    pkg = Path(orjson.__file__).parent
    for item in [pkg, *pkg.parent.glob("orjson-*.dist-info")]:
        shutil.copytree(item, site / item.name)


def test_the_client_installs_alone_and_imports_nothing_of_the_daemon(tmp_path: Path) -> None:
    # Build from a copy, so that the repository gets no build/ or egg-info.
    src = tmp_path / "src"
    shutil.copytree(REPO / "client", src / "client", ignore=shutil.ignore_patterns("build"))
    shutil.copytree(REPO / "sidecar" / "client", src / "sidecar" / "client",
                    ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        src / "client", "-w", wheels, cwd=tmp_path)
    (wheel,) = wheels.glob("span_sidecar_client-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                    cwd=tmp_path).strip())
    _copy_orjson(site)
    run(python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels,
        "span-sidecar-client", cwd=tmp_path)
    installed = run(python, "-m", "pip", "list", "--format=freeze", cwd=tmp_path)
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert names - {"pip", "setuptools"} == {"orjson", "span-sidecar-client"}, names
    spool = tmp_path / "spool"
    code = (
        "import sys\n"
        "from sidecar.client import Tracer, emit_test_span\n"
        f"tracer = Tracer('probe', spool_dir={str(spool)!r})\n"
        "with tracer.trace_agent('step', input={'q': 1}):\n"
        "    pass\n"
        "tracer.close()\n"
        f"emit_test_span({str(spool)!r}, 'emitted', 'probe')\n"
        f"heavy = [m for m in {DAEMON_MODULES!r} if m in sys.modules]\n"
        "daemon = sorted(m for m in sys.modules if m.startswith('sidecar.')\n"
        "                and not m.startswith('sidecar.client'))\n"
        "import importlib.util\n"
        "print(heavy, daemon, importlib.util.find_spec('sidecar.config') is None)\n"
    )
    # -I: isolated, so neither the repository nor PYTHONPATH can lend it a module
    out = run(python, "-I", "-c", code, cwd=tmp_path).strip()
    assert out == "[] [] True", out
    lines = [orjson.loads(x) for f in spool.glob("*.jsonl*") for x in f.read_bytes().splitlines()]
    assert sorted(r["name"] for r in lines) == ["emitted", "step"]
    assert wheel.name.startswith(f"span_sidecar_client-{__version__}-")
