from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import SpoolWriter, Tracer


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def tracer(spool: Path) -> Iterator[Tracer]:
    t = Tracer("tester", writer=SpoolWriter(spool, "tester"), agent_tier=1, project_name="proj")
    yield t
    t.close()
