"""A full disk while writing state never corrupts it (RLIMIT_FSIZE in a subprocess:
writes past the limit fail with EFBIG, as they would with ENOSPC)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import REPO

SCRIPT = textwrap.dedent("""
    import errno, os, resource, signal, sys
    from pathlib import Path
    from sidecar.clock import SystemClock
    from sidecar.spool.checkpoints import CheckpointStore, FileMark
    from sidecar.spool.quarantine import Quarantine
    from sidecar.spool.state import StateDir

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    state = StateDir(Path(sys.argv[1]))
    store = CheckpointStore(state, "postgres")
    small = {(1, i): FileMark(1, i, "ab" * 16, 1024, 4096, f"/s/a-{i}.jsonl") for i in range(3)}
    store.save(small)
    quarantine = Quarantine(state, "postgres", SystemClock())
    quarantine.put(b'{"bad": 1}', "/s/a.jsonl", 0, "first")
    quarantine.sync()
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    big = {(1, i): FileMark(1, i, "ab" * 16, 1024, 8192, f"/s/b-{i}.jsonl") for i in range(200)}
    try:
        store.save(big)
    except OSError as exc:
        assert exc.errno in (errno.EFBIG, errno.ENOSPC), exc
        print("checkpoint-refused")
    try:
        quarantine.put(b"x" * 20000, "/s/a.jsonl", 10, "second")
    except OSError as exc:
        print("quarantine-refused")
    assert store.load() == small, "the previous checkpoint must be intact"
    print("ok")
""")


def test_checkpoint_and_quarantine_survive_a_full_disk(tmp_path: Path) -> None:
    """The previous checkpoint stays intact and loadable, no temp file is left, and
    the quarantine holds no torn entry."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    said = [x for x in done.stdout.splitlines() if x in ("checkpoint-refused",
                                                         "quarantine-refused", "ok")]
    assert said == ["checkpoint-refused", "quarantine-refused", "ok"], done.stdout
    assert not (tmp_path / "checkpoints" / "postgres.tmp").exists()
    entries = (tmp_path / "quarantine" / "postgres.jsonl").read_bytes().splitlines()
    assert len(entries) == 1 and b'"first"' in entries[0]
