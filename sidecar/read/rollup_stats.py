"""Stats of a window from the rollups (migration 0005, ``sidecar/store/rollups.py``).

A window ``[since, +inf)`` is cut in three: daily rows for the whole UTC days
it covers, hourly rows for the whole hours of its first partial day, raw rows
for the partial hour at its start; the pending deltas (hourly buckets, not yet
merged by the rollup pass) count for every whole hour. A row is either in a
rollup or in a pending delta within one snapshot (the pass moves it in one
transaction), so counts, sums, min and max are exact and current. Quantiles
come from the merged histograms (``span_hist_quantiles``: within 1 % of
``percentile_cont``). Future-dated spans count, as in the raw query.

Windows holding few rows (``EXACT_MAX_ROWS``, 20,000: <= ~30 ms to fetch and
sort, measured in /tmp/notes/fleet-design.md) are answered from the raw rows
by the caller instead, exactly. JIT is off: the planner's estimates of the
partitioned raw scans are huge and JIT cost 1.2 s of a 1.5 s query.
"""

from __future__ import annotations

from sidecar.store.migrate import quote_ident
from sidecar.store.table import TABLE

EXACT_MAX_ROWS = 20_000
_COLS = ("agent_name, span_count, error_count, duration_count, duration_sum, duration_min, "
         "duration_max, prompt_tokens, completion_tokens, total_tokens, cost, zero_count, "
         "hist_idx, hist_cnt")

_SQL = """
WITH b AS MATERIALIZED (
    SELECT $1::timestamptz AS since, h1,
           CASE WHEN date_trunc('day', h1, 'UTC') = h1 THEN h1
                ELSE date_trunc('day', h1, 'UTC') + interval '1 day' END AS d1
      FROM (SELECT CASE WHEN date_trunc('hour', $1::timestamptz, 'UTC') = $1::timestamptz
                        THEN $1::timestamptz
                        ELSE date_trunc('hour', $1::timestamptz, 'UTC') + interval '1 hour'
                   END AS h1) h
), roll AS MATERIALIZED (
    SELECT {cols} FROM {s}.span_rollup_daily r, b WHERE r.bucket >= b.d1 AND {rfilter}
    UNION ALL
    SELECT {cols} FROM {s}.span_rollup_hourly r, b
     WHERE r.bucket >= b.h1 AND r.bucket < b.d1 AND {rfilter}
    UNION ALL
    SELECT {cols} FROM {s}.span_rollup_delta r, b WHERE r.bucket >= b.h1 AND {rfilter}
), raw AS MATERIALIZED (
    SELECT s.agent_name, s.status, s.duration_ms, s.prompt_tokens, s.completion_tokens,
           s.total_tokens, s.total_estimated_cost
      FROM {s}.{table} s, b
     WHERE s.start_time >= b.since AND s.start_time < b.h1 AND {sfilter}
), totals AS MATERIALIZED (
    SELECT agent_name, sum(span_count)::bigint AS span_count,
           sum(error_count)::bigint AS error_count, sum(duration_count)::bigint AS n,
           sum(duration_sum) AS dsum, min(duration_min) AS dmin, max(duration_max) AS dmax,
           sum(prompt_tokens)::bigint AS prompt_tokens,
           sum(completion_tokens)::bigint AS completion_tokens,
           sum(total_tokens)::bigint AS total_tokens, sum(cost) AS cost,
           sum(zero_count)::bigint AS zeros
      FROM (SELECT agent_name, span_count, error_count, duration_count, duration_sum,
                   duration_min, duration_max, prompt_tokens, completion_tokens, total_tokens,
                   cost, zero_count FROM roll
            UNION ALL
            SELECT agent_name, count(*), count(*) FILTER (WHERE status = 'error'),
                   count(duration_ms), coalesce(sum(duration_ms), 0), min(duration_ms),
                   max(duration_ms), coalesce(sum(prompt_tokens), 0),
                   coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0),
                   coalesce(sum(total_estimated_cost), 0),
                   count(*) FILTER (WHERE duration_ms <= 0)
              FROM raw GROUP BY agent_name) p
     GROUP BY agent_name
), hist AS MATERIALIZED (
    SELECT k, array_agg(i ORDER BY i) AS idx, array_agg(n ORDER BY i) AS cnt
      FROM (SELECT k, i, sum(n)::bigint AS n
              FROM (SELECT coalesce(r.agent_name, chr(1)) AS k, u.i, u.n
                      FROM roll r, unnest(r.hist_idx, r.hist_cnt) u(i, n)
                    UNION ALL
                    SELECT coalesce(agent_name, chr(1)), {s}.span_hist_index(duration_ms), 1
                      FROM raw WHERE duration_ms > 0) x
             GROUP BY k, i) m
     GROUP BY k
)
SELECT t.agent_name, t.span_count, t.error_count,
       {s}.span_hist_quantiles(h.idx, h.cnt, t.zeros, t.dmin, t.dmax,
                               ARRAY[0.5, 0.95, 0.99]::double precision[]) AS pct,
       t.dmin AS min_ms, t.dmax AS max_ms, t.dsum / nullif(t.n, 0) AS mean_ms,
       t.prompt_tokens, t.completion_tokens, t.total_tokens, t.cost AS total_cost
  FROM totals t LEFT JOIN hist h ON h.k = coalesce(t.agent_name, chr(1))
 WHERE t.span_count > 0
 ORDER BY t.agent_name NULLS LAST
"""


def rollup_stats_sql(schema: str, all_agents: bool) -> str:
    """The query; parameters ``$1`` since, then ``$2`` the agent, or ``$2, $3``
    the health spans' agent and name (all agents leave them out)."""
    if all_agents:
        rfilter = "NOT r.health"
        sfilter = "(s.agent_name IS DISTINCT FROM $2 OR s.name <> $3)"
    else:
        rfilter, sfilter = "r.agent_name = $2", "s.agent_name = $2"
    return _SQL.format(s=quote_ident(schema), table=TABLE, cols=_COLS, rfilter=rfilter,
                       sfilter=sfilter)


def backfill_done_sql(schema: str) -> str:
    return f"SELECT done FROM {quote_ident(schema)}.span_rollup_backfill"
