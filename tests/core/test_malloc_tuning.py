"""The daemon's glibc tuning: a freed 1 MiB buffer (a spool read chunk, an
Opik request body) is reused from the heap, not mapped afresh each time.

Run in a child interpreter: ``mallopt`` changes the whole process.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

CHILD = """
import json, resource
from sidecar.daemon import tune_gc
tune_gc()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
chunk = bytearray(1 << 20)  # warm the heap once
del chunk
before = faults()
for i in range(50):
    chunk = bytearray(1 << 20)  # every page written (zeroed)
    chunk[-1] = i
    del chunk
print(json.dumps({"faults": faults() - before}))
"""


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="glibc only")
def test_a_freed_one_mib_buffer_is_reused_without_page_faults() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=60)
    faults = json.loads(out.stdout)["faults"]
    # Mapped afresh each time, 50 buffers of 256 pages fault 12,800 times.
    assert faults < 50 * 256 // 10, faults
