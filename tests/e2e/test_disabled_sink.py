"""A disabled sink's backlog with the real daemon (issue 21): named at start,
shown by ``status``, held by the janitor while everything else is deleted, and
let go by ``forget-sink`` while the daemon runs."""

from __future__ import annotations

import json
import os
import signal

from sidecar.spool.checkpoints import CheckpointStore, FileMark
from sidecar.spool.state import StateDir
from tests.ops.helpers import cli
from tests.support import SidecarEnv, span, wait_until, write_spans


def test_the_backlog_of_a_disabled_sink_is_kept_until_forgotten(
        sidecar_env: SidecarEnv) -> None:
    env = sidecar_env
    env.state.mkdir()
    opik = CheckpointStore(StateDir(env.state), "opik")
    opik.save({})  # Opik shipped before; it is off now (no OPIK_URL_OVERRIDE this time)
    behind = env.spool / "b-h-1-0.jsonl.done"
    write_spans(behind, [span(i) for i in range(20)])
    d = env.daemon().wait_started()
    wait_until(lambda: bool(d.events("spool.backlog.kept")), 10, "the start warning")
    (kept,) = d.events("spool.backlog.kept")
    assert (kept["sink"], kept["level"], kept["files_behind"]) == ("opik", "warning", 1)
    wait_until(lambda: env.rows() == 20, 20, "Postgres to ship the backlog")

    # A file both sinks have whole: the janitor deletes it, and the sweep that
    # does also saw the Opik backlog (Postgres acknowledged it first) and kept it.
    done = env.tmp / "a-h-1-0.jsonl.done"
    write_spans(done, [span(i) for i in range(5)])
    st = done.stat()
    opik.save({(st.st_dev, st.st_ino): FileMark(st.st_dev, st.st_ino, "", 0, st.st_size,
                                                str(done))})
    os.rename(done, env.spool / done.name)
    wait_until(lambda: not (env.spool / done.name).exists(), 20, "the shipped file deleted")
    assert behind.exists()

    report = json.loads(cli("status", "--json", "--config", str(env.config), cwd=env.tmp).stdout)
    row = next(s for s in report["sinks"] if s["sink"] == "opik")
    assert (row["enabled"], row["files_behind"], row["records_behind"]) == (False, 1, 20)
    assert row["kept_for_s"] > 86000  # the default keep time, 24 h, counted from this start

    forgot = cli("forget-sink", "opik", "--config", str(env.config), cwd=env.tmp)
    assert forgot.returncode == 0, forgot.stderr
    wait_until(lambda: not behind.exists(), 20, "the backlog let go")
    assert d.events("spool.backlog.released")[0]["why"] == "forgotten"
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
