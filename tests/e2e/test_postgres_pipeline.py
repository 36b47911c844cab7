"""The daemon as a real subprocess, the real Postgres: nothing lost, nothing twice."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import orjson

from tests.support import SidecarEnv, append, line, span, wait_until, write_spans


def _distinct_and_total(env: SidecarEnv) -> tuple[int, int]:
    from tests.support import query

    row = query(f'SELECT count(DISTINCT span_id), count(*) FROM "{env.schema}"'
                ".ml_observability_spans")
    return int(row[0][0]), int(row[0][1])


def test_spans_appear_in_postgres_within_a_second(sidecar_env: SidecarEnv) -> None:
    """A span appended to the spool is a row within about a second, with its fields."""
    d = sidecar_env.daemon().wait_started()
    rec = span(7, error_info={"exception_type": "ValueError", "message": "x", "traceback": "tb"})
    write_spans(sidecar_env.spool / "agent-h-1-0.jsonl", [rec])
    wait_until(lambda: sidecar_env.rows() == 1, 10, "the row")
    from tests.support import query

    row = query(f'SELECT * FROM "{sidecar_env.schema}".ml_observability_spans')[0]
    assert str(row["span_id"]) == rec["id"]
    assert row["status"] == "error"
    assert row["agent_name"] == "agent-1" and row["agent_tier"] == 1
    assert row["total_tokens"] == 168 and abs(row["duration_ms"] - 127.0) < 1e-6
    assert orjson.loads(row["input"]) == rec["input"]
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0


def test_bad_input_is_quarantined_and_never_blocks(sidecar_env: SidecarEnv) -> None:
    """Every kind of bad line goes to the quarantine with its reason; good lines ship."""
    sidecar_env.configure(spans={"max_line_bytes": 1 << 20})
    d = sidecar_env.daemon().wait_started()
    path = sidecar_env.spool / "bad-h-1-0.jsonl"
    good = [span(i) for i in range(7)]
    bad_lines = [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2, 3]",
        orjson.dumps({"name": "no ids", "start_time": "2026-01-01T00:00:00Z"}),
        orjson.dumps(span(100, agent_tier="high")),
        orjson.dumps(span(101, start_time="2026-01-01T00:00:00")),  # no offset
        b'{"id": "' + b"x" * (5 << 20) + b'"}',  # 5 MiB
    ]
    data = b""
    for g, b in zip(good, bad_lines, strict=True):
        data += line(g) + b + b"\n"
    append(path, data)
    # A partial line, completed after longer than every flush timer.
    tail = line(span(200))
    append(path, tail[:40])
    wait_until(lambda: len(sidecar_env.quarantine()) == len(bad_lines), 15, "quarantine")
    wait_until(lambda: sidecar_env.rows() == 7, 15, "good rows")
    threading.Event().wait(0.5)  # time passing is the behaviour under test here
    append(path, tail[40:])
    wait_until(lambda: sidecar_env.rows() == 8, 10, "the completed line")
    q = sidecar_env.quarantine()
    reasons = [e["reason"] for e in q]
    assert "UTF-8" in reasons[0] and "raw_b64" in q[0]
    assert "invalid JSON" in reasons[1]
    assert reasons[2] == "not a JSON object"
    assert "id" in reasons[3] and "trace_id" in reasons[3]
    assert "agent_tier" in reasons[4]
    assert "start_time" in reasons[5] and "timezone" in reasons[5]
    assert "max_line_bytes" in reasons[6] and q[6]["size"] == (5 << 20) + 10
    assert q[6].get("truncated") is True
    assert all(e["source"] == str(path) for e in q)
    assert len(d.events("quarantine.record.stored")) == len(bad_lines)
    assert _distinct_and_total(sidecar_env) == (8, 8)


def test_postgres_rejected_record_is_isolated(sidecar_env: SidecarEnv) -> None:
    """A span Postgres refuses (a number beyond jsonb's numeric) is quarantined; the
    rest of its batch ships. (A NUL no longer is one: it is stored as U+FFFD.)"""
    sidecar_env.daemon().wait_started()
    recs = [span(i) for i in range(50)]
    lines = [line(r) for r in recs]
    lines[17] = lines[17].replace(b'"input":{', b'"input":{"n":1e999999,', 1)
    append(sidecar_env.spool / "a-h-1-0.jsonl", b"".join(lines))
    # the rows commit before the reject is quarantined: wait for both
    wait_until(lambda: sidecar_env.rows() == 49 and len(sidecar_env.quarantine()) == 1, 15,
               "49 rows and the quarantined record")
    q = sidecar_env.quarantine()
    assert len(q) == 1 and "rejected by postgres" in q[0]["reason"]
    assert f'"id":"{recs[17]["id"]}"' in q[0]["raw"]  # (orjson refuses 1e999999)


def test_rotation_to_done_and_cleanup(sidecar_env: SidecarEnv) -> None:
    """A file renamed to .done mid-stream keeps its offset and is deleted once shipped."""
    sidecar_env.daemon().wait_started()
    path = sidecar_env.spool / "a-h-1-0.jsonl"
    ids = write_spans(path, [span(i) for i in range(100)])
    wait_until(lambda: sidecar_env.rows() == 100, 10)
    ids += write_spans(path, [span(i) for i in range(100, 150)])
    done = path.with_name(path.name + ".done")
    os.rename(path, done)
    ids += write_spans(sidecar_env.spool / "a-h-1-1.jsonl", [span(i) for i in range(150, 200)])
    wait_until(lambda: sidecar_env.rows() == 200, 10)
    wait_until(lambda: not done.exists(), 10, "the .done file to be deleted")
    assert (sidecar_env.spool / "a-h-1-1.jsonl").exists()
    assert _distinct_and_total(sidecar_env) == (200, 200)


def test_symlinks_and_other_files_are_never_read(sidecar_env: SidecarEnv, tmp_path: Path) -> None:
    """A symlink to a file outside the spool, a fifo and a directory are ignored."""
    outside = tmp_path / "outside.jsonl"
    write_spans(outside, [span(i) for i in range(5)])
    os.symlink(outside, sidecar_env.spool / "link-h-1-0.jsonl")
    os.mkfifo(sidecar_env.spool / "fifo-h-1-0.jsonl")
    (sidecar_env.spool / "dir-h-1-0.jsonl").mkdir()
    write_spans(sidecar_env.spool / "other.txt", [span(9)])
    d = sidecar_env.daemon().wait_started()
    write_spans(sidecar_env.spool / "real-h-1-0.jsonl", [span(i) for i in range(3)])
    wait_until(lambda: sidecar_env.rows() == 3, 10)
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    assert sidecar_env.rows() == 3


def test_sigterm_under_load_drains_and_loses_nothing(sidecar_env: SidecarEnv) -> None:
    """SIGTERM while spans flow: exit 0; after a restart every span is stored once."""
    d = sidecar_env.daemon().wait_started()
    ids = write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(5000)])
    wait_until(lambda: sidecar_env.rows() > 0, 10)
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    after_stop = sidecar_env.rows()
    sidecar_env.daemon().wait_started()
    wait_until(lambda: sidecar_env.rows() == len(ids), 20)
    assert _distinct_and_total(sidecar_env) == (5000, 5000)
    assert after_stop <= 5000


def test_sigterm_with_postgres_down_exits_within_drain_timeout(sidecar_env: SidecarEnv) -> None:
    """With the sink unreachable, SIGTERM exits 0 within the drain timeout and the
    checkpoint has not moved: everything ships after a restart with the sink back."""
    sidecar_env.configure(postgres={"dsn": "postgresql://postgres@127.0.0.1:1/test",
                                    "connect_timeout_s": 1},
                          shutdown={"drain_timeout_s": 2})
    d = sidecar_env.daemon().wait_started()
    ids = write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(300)])
    wait_until(lambda: len(d.events("sink.batch.failed")) >= 1, 15, "a failed attempt")
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    assert time.monotonic() - t0 < 2 + 3
    assert (sidecar_env.spool / "a-h-1-0.jsonl").exists()
    sidecar_env.configure()
    sidecar_env.daemon().wait_started()
    wait_until(lambda: sidecar_env.rows() == len(ids), 20)


def test_restart_after_rotation_while_stopped_reads_only_new_lines(sidecar_env: SidecarEnv) -> None:
    """Rotated while stopped (Fluent Bit #1330): the old file resumes at its offset;
    no batch collides with stored rows (the merge path is never needed)."""
    d = sidecar_env.daemon().wait_started()
    path = sidecar_env.spool / "a-h-1-0.jsonl"
    write_spans(path, [span(i) for i in range(100)])
    wait_until(lambda: sidecar_env.rows() == 100, 10)
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    write_spans(path, [span(i) for i in range(100, 150)])
    os.rename(path, path.with_name(path.name + ".done"))
    write_spans(sidecar_env.spool / "a-h-1-1.jsonl", [span(i) for i in range(150, 200)])
    d2 = sidecar_env.daemon().wait_started()
    wait_until(lambda: sidecar_env.rows() == 200, 10)
    assert d2.events("sink.postgres.merged") == []


def test_corrupt_checkpoint_resumes_safely(sidecar_env: SidecarEnv) -> None:
    """A garbled checkpoint and a stale temp file: the daemon starts, says so, re-ships
    from a safe point, and Postgres holds each span once."""
    d = sidecar_env.daemon().wait_started()
    path = sidecar_env.spool / "a-h-1-0.jsonl"
    write_spans(path, [span(i) for i in range(100)])
    wait_until(lambda: sidecar_env.rows() == 100, 10)
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    ckpt = sidecar_env.state / "checkpoints" / "postgres.json"
    ckpt.write_bytes(b"\x00" * 64)
    ckpt.with_suffix(".tmp").write_bytes(b'{"version": 1, "fi')
    write_spans(path, [span(i) for i in range(100, 150)])
    d2 = sidecar_env.daemon().wait_started()
    wait_until(lambda: sidecar_env.rows() == 150, 10)
    assert _distinct_and_total(sidecar_env) == (150, 150)
    assert d2.events("checkpoint.file.corrupt")
    assert not ckpt.with_suffix(".tmp").exists()


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(sidecar_env: SidecarEnv) -> None:
    """SIGKILL five times while four writers append 20k spans (with rotation):
    afterwards every span is in Postgres exactly once (no position saved before delivery)."""
    sidecar_env.configure(batch={"max_wait_ms": 50})
    total, writers = 20_000, 4
    rng = random.Random(os.getpid())
    all_ids: list[list[str]] = [[] for _ in range(writers)]

    def writer(w: int) -> None:
        per = total // writers
        seq = 0
        for start in range(0, per, 250):
            path = sidecar_env.spool / f"w{w}-h-{w}-{seq}.jsonl"
            all_ids[w] += write_spans(path, [span(w * per + i) for i in range(start, start + 250)])
            if start % 2500 == 2250:  # rotate now and then, as writers do
                os.rename(path, path.with_name(path.name + ".done"))
                seq += 1
            threading.Event().wait(0.01)  # pacing the writer, not synchronisation

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for _ in range(5):
        d = sidecar_env.daemon().wait_started()
        target = sidecar_env.rows() + rng.randint(200, 3000)
        wait_until(lambda t=target, d=d: sidecar_env.rows() >= min(t, total) or not d.alive, 30)
        threading.Event().wait(rng.random() * 0.3)  # a random moment after progress
        d.kill()
    for t in threads:
        t.join(60)
    sidecar_env.daemon().wait_started()
    wait_until(lambda: sidecar_env.rows() >= total, 60, "all spans")
    distinct, count = _distinct_and_total(sidecar_env)
    assert (distinct, count) == (total, total)
    from tests.support import span_ids

    assert set(span_ids(sidecar_env.schema)) == {i for ids in all_ids for i in ids}


def test_sigterm_exits_in_bounded_time_when_postgres_hangs(sidecar_env: SidecarEnv) -> None:
    """A network black hole in the middle of a COPY: SIGTERM still ends the process
    within the drain timeout plus the grace period, and a restart ships everything."""
    from tests.tcp_proxy import TcpProxy

    with TcpProxy("127.0.0.1", 5432) as proxy:
        sidecar_env.configure(postgres={"dsn": f"postgresql://postgres@127.0.0.1:{proxy.port}/test"},
                              shutdown={"drain_timeout_s": 1})
        d = sidecar_env.daemon().wait_started()
        path = sidecar_env.spool / "a-h-1-0.jsonl"
        ids = write_spans(path, [span(i) for i in range(100)])
        wait_until(lambda: sidecar_env.rows() == 100, 15)
        proxy.freeze()
        ids += write_spans(path, [span(i) for i in range(100, 3000)])
        threading.Event().wait(0.5)  # let the daemon get stuck in the COPY (the scenario)
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        d.wait(30)
        assert time.monotonic() - t0 < 1 + 5 + 3
        assert d.events("app.drain.timed_out"), "the scenario did not get stuck"
        proxy.thaw()
    sidecar_env.configure()
    sidecar_env.daemon().wait_started()
    wait_until(lambda: sidecar_env.rows() == len(ids), 20)


def test_a_nul_in_a_streamed_batch_is_stored_as_the_replacement_character(
        sidecar_env: SidecarEnv) -> None:
    """The streamed COPY does not search spans for U+0000; Postgres refuses the
    batch that holds one, and the batch is stored through the ordinary path,
    the NUL as U+FFFD, every span once."""
    d = sidecar_env.daemon().wait_started()
    spans = [span(i) for i in range(300)]
    spans[150] = span(150, name="nul\x00name", input={"q": "a\x00b"})
    write_spans(sidecar_env.spool / "agent-h-1-0.jsonl", spans)
    wait_until(lambda: sidecar_env.rows() == 300, 15, "every span")
    assert _distinct_and_total(sidecar_env) == (300, 300)
    from tests.support import query

    (row,) = query(f'SELECT name, input::text AS input FROM "{sidecar_env.schema}"'
                   f".ml_observability_spans WHERE span_id = '{spans[150]['id']}'")
    assert row["name"] == "nul\ufffdname" and orjson.loads(row["input"]) == {"q": "a\ufffdb"}
    assert sidecar_env.quarantine() == []
    assert b'"sink.stream.fell_back"' in d.log.read_bytes()  # the path under test
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0


def test_a_replaced_spool_directory_ships_within_a_second(sidecar_env: SidecarEnv) -> None:
    """The spool directory renamed away and made anew under the running daemon
    (an operator, a volume mounted again): its watch is set up again, so a
    span written there is a row within about a second, not at the next
    rescan (a minute away here); the file of the old directory, its rows
    stored, is not sent twice."""
    sidecar_env.configure(spool={"rescan_interval_s": 60})
    d = sidecar_env.daemon().wait_started()
    spool = sidecar_env.spool
    write_spans(spool / "agent-h-1-0.jsonl", [span(1)])
    wait_until(lambda: sidecar_env.rows() == 1, 10, "the first row")
    spool.rename(spool.with_name("spool.old"))
    spool.mkdir()
    wait_until(lambda: bool(d.events("spool.watch.restored")), 10,
               "the watch set up again on the new directory")
    write_spans(spool / "agent-h-1-0.jsonl", [span(2)])
    # 10 s: without the watch, only the next rescan, 60 s away, would see it
    wait_until(lambda: sidecar_env.rows() == 2, 10, "the row written in the new directory")
    assert _distinct_and_total(sidecar_env) == (2, 2)
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
