"""The connection budget: one daemon holds at most one connection while it
ships (the sink and the read side share one pool, ``postgres.pool_size`` 1)
and none once it has idled ``postgres.idle_timeout_s``.

Counted on the server, in ``pg_stat_activity``, by an ``application_name`` of
the test's own (asyncpg passes the DSN's query parameters as session
settings). Before issue 19 the daemon held two pools with a connection each
open for good (min_size 1): 2 while shipping, 2 forever after.
"""

from __future__ import annotations

import uuid

from tests.support import PG_DSN, SidecarEnv, query, span, wait_until, write_spans

SPANS = 5_500


def connections(app: str) -> int:
    return int(query("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                     app)[0][0])


def test_one_connection_while_shipping_none_after_idling(sidecar_env: SidecarEnv) -> None:
    app = f"sidecar-{uuid.uuid4().hex[:12]}"
    sidecar_env.configure(postgres={"dsn": f"{PG_DSN}?application_name={app}",
                                    "idle_timeout_s": 1.0, "max_batch_records": 500},
                          retention={"ttl_days": 365})
    write_spans(sidecar_env.spool / "a-h-1-0.jsonl", [span(i) for i in range(SPANS)])
    d = sidecar_env.daemon()
    most = 0

    def stored() -> bool:
        nonlocal most
        most = max(most, connections(app))
        return sidecar_env.rows() == SPANS

    wait_until(stored, 60, "every span stored")
    d.wait_started()
    wait_until(lambda: bool(d.events("retention.run.completed")), 20,
               "the retention pass at start (it borrows the same connection)")
    most = max(most, connections(app))
    assert most == 1
    # idle (the next retention pass is an hour away): closed after idle_timeout_s
    wait_until(lambda: connections(app) == 0, 20, "no connection left open")
