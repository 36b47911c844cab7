"""Several processes on one spool, fork, and a full disk: whole lines, no exceptions."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sidecar.client import SpoolWriter, Tracer, new_id
from sidecar.schema import SpanRecord

from .helpers import spool_files, spool_lines, spool_records

FORK = multiprocessing.get_context("fork")


def _child_work(writer: SpoolWriter, tracer: Tracer, worker: int) -> None:
    """Runs in a forked child that inherited the parent's writer and tracer."""

    def spans(thread: int) -> None:
        for n in range(300):
            with tracer.trace_agent(f"w{worker}-t{thread}-{n}"):
                pass

    threads = [threading.Thread(target=spans, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tracer.log_feedback(new_id(), "score", 1.0)
    writer.close()


def test_forked_processes_and_their_threads_write_only_whole_valid_lines(spool: Path) -> None:
    writer = SpoolWriter(spool, "multi", max_bytes=40_000)
    tracer = Tracer("multi", writer=writer)
    with tracer.trace_agent("parent-before-fork"):
        pass
    parent_file = writer.stats().path
    procs = [FORK.Process(target=_child_work, args=(writer, tracer, w)) for w in range(4)]
    for proc in procs:
        proc.start()
    with tracer.trace_agent("parent-during-children"):
        pass
    deadline = time.monotonic() + 60
    try:
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            assert proc.exitcode == 0
    finally:  # a child stuck on a lock copied at fork would also hang pytest's exit
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert writer.stats().path == parent_file  # the children never touched the parent's file
    writer.close()

    records = spool_records(spool, schema=False)
    spans = [r for r in records if isinstance(r, SpanRecord)]
    assert len(spans) == 2 + 4 * 2 * 300 == len({s.id for s in spans})
    assert len(records) - len(spans) == 4  # one feedback record per child
    pids = {p.name.split("-")[-2] for p in spool_files(spool)}
    assert len(pids) == 5 and str(os.getpid()) in pids
    assert all(p.name.endswith(".jsonl.done") for p in spool_files(spool))


def test_a_forked_child_writes_its_own_file_not_its_parents(spool: Path) -> None:
    writer = SpoolWriter(spool, "fork")
    writer.write({"id": new_id(), "trace_id": new_id(), "name": "parent",
                  "start_time": "2024-01-01T00:00:00Z"})
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its file name, then leave without cleanup
        try:
            writer.write({"id": new_id(), "trace_id": new_id(), "name": "child",
                          "start_time": "2024-01-01T00:00:00Z"})
            os.write(write_end, (writer.stats().path or "").encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_path = os.read(read_end, 4096).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child_path and child_path != writer.stats().path
    assert f"-{pid}-0.jsonl" in child_path
    assert [line for line in Path(writer.stats().path or "").read_bytes().splitlines()
            if b'"child"' in line] == []
    writer.close()


_FULL_DISK = """
import json, logging, resource, signal, sys
from sidecar.client import SpoolWriter, Tracer
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("sidecar.client").addHandler(Keep())
tracer = Tracer("full", sys.argv[1])
ids = []
for n in range(50):
    with tracer.trace_agent(f"span-{n}", input={"pad": "x" * 200}) as span:
        ids.append(span.id)
    tracer.log_metric("m", n)
    tracer.trace_llm_call("model", "provider", "in", "out")
tracer.close()
print(json.dumps({"stats": tracer.writer.stats().__repr__(), "warnings": warnings,
                  "written": tracer.writer.stats().records_written,
                  "dropped": tracer.writer.stats().records_dropped}))
"""


@pytest.mark.parametrize("limit", [0, 1500])
def test_a_full_disk_never_raises_into_the_agent(spool: Path, limit: int) -> None:
    """RLIMIT_FSIZE makes every write past ``limit`` bytes fail with EFBIG, as ENOSPC would."""
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(spool), str(limit)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["written"] + report["dropped"] == 150
    assert report["dropped"] > 0
    assert report["written"] >= report["dropped"] or limit == 0  # a new file after a short write
    assert len(report["warnings"]) == 1 and "client.spool.write_failed" in report["warnings"][0]
    # A write cut short leaves a partial tail; the writer then moves to a new file,
    # so every complete line is a whole, valid record.
    records = spool_records(spool, allow_partial_tail=True, schema=False)
    assert len(records) == report["written"]
    if limit == 0:
        assert report["written"] == 0 and spool_lines(spool) == []
    else:
        assert report["written"] > 0
