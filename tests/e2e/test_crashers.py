"""The crasher corpus through the real daemon and the real Postgres.

Each crasher once made the policy stage raise, the daemon exit 1 and every
restart die on the same line. Now: the daemon stays up, each crasher is
stored once with its secrets masked (or, were anything to raise for it,
quarantined with the exception named: never both, never neither), and the
good lines around it are stored.
"""

from __future__ import annotations

import json
import signal

from tests.core.crashers import crashers
from tests.support import SidecarEnv, append, line, query, span, wait_until

R = "[REDACTED]"


def _stored_inputs(env: SidecarEnv) -> dict[str, str]:
    rows = query(f'SELECT span_id, input::text AS input, metadata::text AS metadata '
                 f'FROM "{env.schema}".ml_observability_spans')
    return {str(r["span_id"]): f"{r['input']} {r['metadata']}" for r in rows}


def test_crashers_between_good_lines_do_not_stop_the_daemon(sidecar_env: SidecarEnv) -> None:
    d = sidecar_env.daemon().wait_started()
    corpus = crashers()
    nested = {"leaf": "jane@example.com"}
    for _ in range(12):  # JSON in a string in a string ...: past the nesting cap
        nested = {"s": json.dumps(nested)}
    capped = span(999, input=nested)
    good = [span(i) for i in range(len(corpus) + 1)]
    data = b""
    for g, (_, crasher) in zip(good, corpus, strict=False):
        data += line(g) + crasher + b"\n"
    data += line(capped) + line(good[-1])
    append(sidecar_env.spool / "crash-h-1-0.jsonl", data)
    total = len(good) + len(corpus) + 1
    wait_until(lambda: sidecar_env.rows() + len(sidecar_env.quarantine()) >= total
               or not d.alive, 60, "every line stored or quarantined")
    assert d.alive, d.log.read_text()[-3000:]
    stored = _stored_inputs(sidecar_env)
    quarantined = sidecar_env.quarantine()
    assert len(stored) + len(quarantined) == total  # each once: stored or quarantined
    assert all(g["id"] in stored for g in good)
    for entry in quarantined:  # none expected; if any, the reason names what raised
        assert "failed: " in entry["reason"], entry["reason"]
    for text in stored.values():
        assert "jane@example.com" not in text and "a@b.io" not in text
    assert R in stored[capped["id"]]
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0
