"""Finding the external tools the deployment tests run.

CI installs every one of them (`.ci/run`, and the test extra of
pyproject.toml), so there a missing tool fails the test. On a developer's
machine without it, the test is skipped and says what to install.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# The spool directory's one mode, wherever it is made (tmpfiles.d, the image)
# or written down (the READMEs): group-writable for agents, setgid so their
# files belong to the group, sticky so that no agent deletes another's files.
SPOOL_MODE = 0o3770


def tool(name: str, install: str) -> str:
    """The path of executable ``name``: this venv's first, then ``PATH``'s."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must install it (.ci/run)")
    pytest.skip(message)
