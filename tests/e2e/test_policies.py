"""Policies through the real daemon, real Postgres and the Opik emulator:
sampling, redaction, truncation, SIGHUP reload and the spool quota."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sidecar.policies.sampling import trace_point
from sidecar.sinks.opik_ids import to_v7
from tests.core.secrets_corpus import NON_SECRETS, OPIK_KEY, SECRETS
from tests.opik_emulator import OpikEmulator
from tests.support import (
    Daemon,
    SidecarEnv,
    append,
    line,
    query,
    row_count,
    span,
    span_ids,
    wait_until,
    write_spans,
)

R = "[REDACTED]"


def _metrics(d: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    wait_until(lambda: bool(d.events("http.server.started")), 20, "the HTTP server")
    port = int(d.events("http.server.started")[0]["port"])
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _checkpointed(env: SidecarEnv, state: Path, sink: str = "postgres") -> bool:
    """Every spool byte acknowledged by ``sink`` (so every decision was made)."""
    path = state / "checkpoints" / f"{sink}.json"
    if not path.exists():
        return False
    marks = {m["path"]: m["offset"] for m in json.loads(path.read_bytes())["files"]}
    files = list(env.spool.glob("*.jsonl*"))
    return bool(files) and all(marks.get(str(f)) == f.stat().st_size for f in files)


# -- sampling -----------------------------------------------------------------------------------

def _traces(n: int) -> list[dict[str, Any]]:
    out = []
    for t in range(n):
        trace = str(uuid.uuid4())
        out += [span(t * 3 + k, trace_id=trace) for k in range(3)]
        if t % 10 == 0:
            out.append(span(t, trace_id=trace, error_info={"exception_type": "Timeout"}))
    return out


def test_sampling_keeps_whole_traces_at_the_rate_and_every_error(
        sidecar_env: SidecarEnv, pg_schema: str) -> None:
    """rate 0.3 over 600 traces: whole traces kept, within 4 sigma of 30 %; every error
    span kept; a second daemon from fresh state (new state dir, new schema) keeps
    exactly the same spans."""
    rate = 0.3
    sidecar_env.configure(sampling={"default_rate": rate})
    spans = _traces(600)
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", spans)
    d = sidecar_env.daemon().wait_started()
    wait_until(lambda: _checkpointed(sidecar_env, sidecar_env.state), 60, "every line decided")
    kept = set(span_ids(pg_schema))
    expected = {s["id"] for s in spans
                if trace_point(uuid.UUID(s["trace_id"])) < rate or "error_info" in s}
    assert kept == expected
    errors = {s["id"] for s in spans if "error_info" in s}
    assert errors <= kept
    by_trace: dict[str, set[bool]] = {}
    for s in spans:
        if "error_info" not in s:
            by_trace.setdefault(s["trace_id"], set()).add(s["id"] in kept)
    assert all(len(v) == 1 for v in by_trace.values())  # kept or dropped whole
    share = sum(v == {True} for v in by_trace.values()) / len(by_trace)
    sigma = (rate * (1 - rate) / len(by_trace)) ** 0.5
    assert abs(share - rate) < 4 * sigma, share
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0

    other = f"{pg_schema}_b"
    try:
        sidecar_env.configure(sampling={"default_rate": rate},
                              spool={"state_dir": str(sidecar_env.tmp / "state-b")},
                              postgres={"schema": other})
        d2 = sidecar_env.daemon().wait_started()
        wait_until(lambda: _checkpointed(sidecar_env, sidecar_env.tmp / "state-b"), 60,
                   "the second daemon")
        assert set(span_ids(other)) == kept
        d2.signal(signal.SIGTERM)
        assert d2.wait(15) == 0
    finally:
        query(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')


# -- redaction and truncation -------------------------------------------------------------------

def _secret_span(i: int, name: str, secret: str) -> dict[str, Any]:
    return span(i, input={"prompt": f"Please use {secret} for the call"},
                output={"text": f"done with {secret}"}, metadata={"nested": [{"v": secret}]},
                tags=["corpus", secret], events=[{"name": "tool", "attributes": {"arg": secret}}],
                error_info={"exception_type": "AuthError", "message": f"bad key {secret}",
                            "traceback": f"line 1\n{secret}"})


def test_secrets_are_masked_in_postgres_and_opik_and_look_alikes_survive(
        sidecar_env: SidecarEnv, pg_schema: str, emu: OpikEmulator) -> None:
    """Every corpus secret, in every redacted field, is masked in both sinks; the
    non-secrets and tokens_used stay; an over-long input ships as a truncation marker;
    /metrics counts masks per pattern name."""
    sidecar_env.configure(opik={"enabled": True, "url": emu.base_url, "api_key": OPIK_KEY},
                          spans={"max_field_bytes": 2048},
                          http={"enabled": True, "listen": "127.0.0.1:0"})
    spans = [_secret_span(i, name, secret) for i, (name, secret) in enumerate(SECRETS)]
    clean = span(100, input={"texts": list(NON_SECRETS)}, metadata={"tokens_used": 1234})
    big = span(101, input={"blob": "word " * 2000})
    spans += [clean, big]
    d = sidecar_env.daemon().wait_started()
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", spans)
    wait_until(lambda: sidecar_env.rows() == len(spans), 30, "every span in Postgres")
    want = {str(to_v7(uuid.UUID(s["id"]))) for s in spans}
    emu.wait_for(lambda: want <= set(emu.spans()), timeout=30, what="every span in Opik")

    rows = {r["span_id"]: r for r in query(
        f'SELECT span_id::text, input::text, output::text, metadata::text, events::text, '
        f'error_info::text, array_to_string(tags, \',\') AS tags '
        f'FROM "{pg_schema}".ml_observability_spans')}
    pg_text = {k: " ".join(str(v) for v in r.values()) for k, r in rows.items()}
    opik_text = {k: json.dumps(v) for k, v in emu.spans().items()}
    for s, (name, secret) in zip(spans, SECRETS, strict=False):
        v7 = str(to_v7(uuid.UUID(s["id"])))
        for text in (pg_text[s["id"]], opik_text[v7]):
            assert secret not in text, name
            assert text.count(R) >= 7, (name, text)  # 7 places per span
    clean_pg = json.loads(rows[clean["id"]]["input"])
    assert clean_pg == {"texts": list(NON_SECRETS)}
    assert json.loads(rows[clean["id"]]["metadata"]) == {"tokens_used": 1234}
    assert emu.spans()[str(to_v7(uuid.UUID(clean["id"])))]["input"] == {"texts": list(NON_SECRETS)}
    for marker in (json.loads(rows[big["id"]]["input"]),
                   emu.spans()[str(to_v7(uuid.UUID(big["id"])))]["input"]):
        assert marker["_truncated"] is True and marker["_original_bytes"] > 2048
        assert marker["_cut_bytes"] > 0 and marker["_head"].startswith('{"blob":"word word')
    m = _metrics(d)
    assert m[("span_sidecar_redactions_total", (("pattern", "aws_access_key_id"),))] == 2 * 7
    assert m[("span_sidecar_redactions_total", (("pattern", "card"),))] == 4 * 7
    assert m[("span_sidecar_fields_truncated_total", (("field", "input"),))] == 1
    log_text = sidecar_env.daemons[0].log.read_text()
    assert not any(secret in log_text for _, secret in SECRETS)
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0


# -- SIGHUP -------------------------------------------------------------------------------------

def test_sighup_applies_a_valid_config_and_refuses_an_invalid_one_while_spans_flow(
        sidecar_env: SidecarEnv, pg_schema: str) -> None:
    """Same pid throughout; every span stored once; spans read after the reload get the
    new user pattern; a broken file is refused (logged) and the pattern stays."""
    d = sidecar_env.daemon().wait_started()
    assert d.proc is not None
    pid = d.proc.pid
    written: list[str] = []
    stop = threading.Event()
    path = sidecar_env.spool / "flow-h-1-0.jsonl"

    def flow() -> None:
        for i in range(400):  # bounded: at most 400 writes of 5 spans
            if stop.is_set():
                return
            batch = [span(i * 5 + k) for k in range(5)]
            written.extend(s["id"] for s in batch)
            append(path, b"".join(line(s) for s in batch))
            stop.wait(0.01)  # the writer's pace, not a synchronisation

    writer = threading.Thread(target=flow)
    writer.start()
    try:
        wait_until(lambda: sidecar_env.rows() > 50, 20, "spans flowing")
        sidecar_env.configure(spans={"redaction": {"patterns": [
            {"name": "ticket", "regex": "TCK-[0-9]{6}"}]}}, batch={"max_wait_ms": 50})
        d.signal(signal.SIGHUP)
        wait_until(lambda: bool(d.events("config.reload.applied")), 10, "the reload")
        after = span(9000, input={"ticket": "see TCK-123456"})
        write_spans(sidecar_env.spool / "b-h-1-0.jsonl", [after])
        sidecar_env.config.write_text("sampling:\n  default_rate: 7\nbatch: [\n")
        d.signal(signal.SIGHUP)
        wait_until(lambda: bool(d.events("config.reload.refused")), 10, "the refusal")
        late = span(9001, input={"ticket": "and TCK-654321"})
        write_spans(sidecar_env.spool / "b-h-1-0.jsonl", [late])
    finally:
        stop.set()
        writer.join(30)
    total = len(written) + 2
    wait_until(lambda: sidecar_env.rows() == total, 30, "every span")
    assert d.alive and d.proc.pid == pid
    assert sorted(span_ids(pg_schema)) == sorted([*written, after["id"], late["id"]])
    for s in (after, late):
        row = query(f'SELECT input::text FROM "{pg_schema}".ml_observability_spans '
                    "WHERE span_id = $1", uuid.UUID(s["id"]))
        assert "TCK-" not in row[0][0] and R in row[0][0]
    refused = d.events("config.reload.refused")[0]
    assert refused["errors"], refused
    applied = d.events("config.reload.applied")[0]
    assert "spans.redaction.patterns" in applied["changed"]
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0


def test_sighup_reports_keys_that_need_a_restart(sidecar_env: SidecarEnv) -> None:
    d = sidecar_env.daemon().wait_started()
    sidecar_env.configure(spool={"state_dir": str(sidecar_env.tmp / "elsewhere")})
    d.signal(signal.SIGHUP)
    wait_until(lambda: bool(d.events("config.reload.needs_restart")), 10, "the warning")
    assert d.events("config.reload.needs_restart")[0]["keys"] == ["spool.state_dir"]
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(0)])
    wait_until(lambda: sidecar_env.rows() == 1, 20, "shipping goes on")
    # the checkpoint is saved just after the commit: wait for it, in the old place
    wait_until((sidecar_env.state / "checkpoints" / "postgres.json").exists, 10, "checkpoint")
    assert not (sidecar_env.tmp / "elsewhere").exists()
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0


# -- the spool quota ----------------------------------------------------------------------------

def test_drop_oldest_counts_exactly_the_records_it_dropped(
        sidecar_env: SidecarEnv, pg_schema: str, emu: OpikEmulator) -> None:
    """Opik is down, Postgres has everything; once the files are done, the quota (1 MiB)
    deletes the oldest until the spool fits. When Opik recovers it receives exactly
    what was not dropped: written = received + dropped."""
    emu.fail(503)
    # Opik holds at most a few batches of 100 read ahead: most of the oldest file is unread.
    sidecar_env.configure(opik={"enabled": True, "url": emu.base_url, "timeout_s": 1.0,
                                "max_batch_records": 100},
                          breaker={"failure_threshold": 2, "reset_timeout_s": 0.5},
                          spool={"max_bytes": 1 << 20, "on_full": "drop_oldest"},
                          http={"enabled": True, "listen": "127.0.0.1:0"})
    ids: list[str] = []
    files = []
    now = time.time()
    for n in range(4):
        f = sidecar_env.spool / f"q-h-1-{n}.jsonl"
        ids += write_spans(f, [span(n * 1000 + i) for i in range(800)])
        os.utime(f, (now - 100 + n, now - 100 + n))  # oldest first, not idle
        files.append(f)
    d = sidecar_env.daemon().wait_started()
    wait_until(lambda: row_count(pg_schema) == len(ids), 60, "Postgres has every span")
    for f in files:
        f.rename(f.with_name(f.name + ".done"))
    wait_until(lambda: bool(d.events("spool.file.dropped")), 20, "a drop")
    wait_until(lambda: sum(f.stat().st_size for f in sidecar_env.spool.iterdir()) <= 1 << 20,
               20, "the spool to fit")
    dropped = sum(e["records"] for e in d.events("spool.file.dropped"))
    assert 0 < dropped < len(ids)
    emu.healthy()
    want = {str(to_v7(uuid.UUID(i))) for i in ids}

    def settled() -> bool:
        return len(want & set(emu.spans())) + dropped == len(ids)

    emu.wait_for(settled, timeout=60, what="Opik to receive what was left")
    m = _metrics(d)
    assert m[("span_sidecar_records_dropped_total", (("reason", "spool_full"),))] == dropped
    assert row_count(pg_schema) == len(ids)
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
