-- Rollups of ml_observability_spans (issue 19): one row per (agent, UTC hour,
-- health?) and per (agent, UTC day, health?) with exact counts, sums, min/max
-- and a DDSketch-style latency histogram (relative accuracy 1 %), so that stats
-- for any window merge a few hundred rows instead of sorting every duration.
--
-- Every statement that inserts spans (the sink's COPY, its ON CONFLICT merge,
-- any other writer) aggregates what it inserted into span_rollup_delta in its
-- own transaction (a statement trigger over the transition table): append-only,
-- no unique key, so writers never wait on each other, and a rolled-back batch
-- leaves no delta. One sidecar at a time merges the deltas into the hourly and
-- daily rows (sidecar/store/rollups.py). Stats read rollups + pending deltas.
-- Spans are append-only: an UPDATE or DELETE of stored rows (retention) leaves
-- the rollups as they are.
--
-- Rows stored before this migration (ingested before `cutoff`) are rolled up
-- afterwards by the daemon, a few hours of start_time per short transaction
-- (span_rollup_backfill tracks it); until it is done, stats and
-- v_agent_latency_summary read the raw rows as before.

-- gamma = (1 + a) / (1 - a), a = 0.01; a duration x > 0 falls in bucket
-- ceil(log_gamma(x)), i.e. (gamma^(i-1), gamma^i]; the bucket's value
-- 2 gamma^i / (gamma + 1) is within a of every x in it. Durations <= 0 count in
-- zero_count (their value: the exact minimum).
CREATE FUNCTION span_hist_index(x double precision) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN ceil(ln(x) / ln(1.01::double precision / 0.99))::integer;

-- Quantiles as percentile_cont defines them (linear interpolation between the
-- 0-based ranks floor(q (n - 1)) and the next) over a merged histogram: each
-- rank's value is its bucket's value, clamped to the exact [dmin, dmax].
CREATE FUNCTION span_hist_quantiles(idx integer[], cnt bigint[], zeros bigint,
                                    dmin double precision, dmax double precision,
                                    qs double precision[]) RETURNS double precision[]
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    g     constant double precision := 1.01::double precision / 0.99;
    n     bigint := coalesce(zeros, 0);
    ranks bigint[] := '{}';
    vals  double precision[] := '{}';
    out   double precision[] := '{}';
    j     integer;
    k     integer;
    upto  bigint;
    h     double precision;
BEGIN
    FOR k IN 1 .. coalesce(array_length(cnt, 1), 0) LOOP
        n := n + cnt[k];
    END LOOP;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    FOR k IN 1 .. array_length(qs, 1) LOOP
        h := qs[k] * (n - 1);
        ranks := ranks || floor(h)::bigint || least(floor(h)::bigint + 1, n - 1);
    END LOOP;
    FOR j IN 1 .. array_length(ranks, 1) LOOP  -- not ascending: 2 ranks per quantile
        upto := coalesce(zeros, 0);
        vals[j] := dmin;
        IF ranks[j] >= upto THEN
            FOR k IN 1 .. coalesce(array_length(cnt, 1), 0) LOOP
                upto := upto + cnt[k];
                IF ranks[j] < upto THEN
                    vals[j] := greatest(dmin, least(dmax, 2 * power(g, idx[k]) / (g + 1)));
                    EXIT;
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    FOR k IN 1 .. array_length(qs, 1) LOOP
        h := qs[k] * (n - 1);
        out := out || (vals[2 * k - 1] + (h - floor(h)) * (vals[2 * k] - vals[2 * k - 1]));
    END LOOP;
    RETURN out;
END $$;

CREATE TABLE span_rollup_hourly (
    bucket            timestamptz      NOT NULL,   -- start of the UTC hour (day) of start_time
    agent_name        text,                        -- NULL agents roll up together
    health            boolean          NOT NULL,   -- the sidecars' own health spans
    span_count        bigint           NOT NULL,
    error_count       bigint           NOT NULL,
    duration_count    bigint           NOT NULL,   -- spans with a duration
    duration_sum      double precision NOT NULL,
    duration_min      double precision,
    duration_max      double precision,
    prompt_tokens     bigint           NOT NULL,
    completion_tokens bigint           NOT NULL,
    total_tokens      bigint           NOT NULL,
    cost              double precision NOT NULL,
    zero_count        bigint           NOT NULL,   -- durations <= 0
    start_min         timestamptz      NOT NULL,
    start_max         timestamptz      NOT NULL,
    hist_idx          integer[]        NOT NULL,   -- bucket indexes, ascending
    hist_cnt          bigint[]         NOT NULL,   -- their counts
    CONSTRAINT span_rollup_hourly_key UNIQUE NULLS NOT DISTINCT (agent_name, bucket, health)
);
CREATE INDEX span_rollup_hourly_bucket_idx ON span_rollup_hourly (bucket);

CREATE TABLE span_rollup_daily (LIKE span_rollup_hourly INCLUDING ALL);

-- Pending deltas: hourly buckets, append-only, merged and deleted by the rollup pass.
CREATE TABLE span_rollup_delta (LIKE span_rollup_hourly INCLUDING DEFAULTS);
CREATE INDEX span_rollup_delta_bucket_idx ON span_rollup_delta (bucket);

-- The rows stored before this migration (ingested before `cutoff`) still to roll up:
-- start times in [next_start, last_start]; NULLs: not measured yet.
CREATE TABLE span_rollup_backfill (
    cutoff     timestamptz NOT NULL,
    next_start timestamptz,
    last_start timestamptz,
    done       boolean     NOT NULL
);
INSERT INTO span_rollup_backfill (cutoff, done)
SELECT now(), NOT EXISTS (SELECT 1 FROM ml_observability_spans);

-- Rows ingested from `cutoff` on get their deltas here; older ones (a batch in
-- flight while this migration ran) are the backfill's.
CREATE FUNCTION span_rollup_capture() RETURNS trigger
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO span_rollup_delta
    WITH src AS MATERIALIZED (
        SELECT date_trunc('hour', start_time, 'UTC') AS bucket, agent_name,
               (agent_name IS NOT DISTINCT FROM 'span-sidecar'
                AND name = 'span-sidecar.health') AS health,
               status, duration_ms, prompt_tokens, completion_tokens, total_tokens,
               total_estimated_cost, start_time
          FROM new_spans
         WHERE ingested_at >= (SELECT cutoff FROM span_rollup_backfill)
    ), t AS (
        SELECT bucket, agent_name, health, count(*) AS span_count,
               count(*) FILTER (WHERE status = 'error') AS error_count,
               count(duration_ms) AS duration_count, coalesce(sum(duration_ms), 0) AS dsum,
               min(duration_ms) AS dmin, max(duration_ms) AS dmax,
               coalesce(sum(prompt_tokens), 0) AS pt, coalesce(sum(completion_tokens), 0) AS ct,
               coalesce(sum(total_tokens), 0) AS tt, coalesce(sum(total_estimated_cost), 0) AS cost,
               count(*) FILTER (WHERE duration_ms <= 0) AS zeros,
               min(start_time) AS smin, max(start_time) AS smax
          FROM src GROUP BY 1, 2, 3
    ), h AS (
        SELECT bucket, agent_name, health, array_agg(i ORDER BY i) AS idx,
               array_agg(n ORDER BY i) AS cnt
          FROM (SELECT bucket, agent_name, health, span_hist_index(duration_ms) AS i,
                       count(*) AS n
                  FROM src WHERE duration_ms > 0 GROUP BY 1, 2, 3, 4) x
         GROUP BY 1, 2, 3
    )
    SELECT t.bucket, t.agent_name, t.health, t.span_count, t.error_count, t.duration_count,
           t.dsum, t.dmin, t.dmax, t.pt, t.ct, t.tt, t.cost, t.zeros, t.smin, t.smax,
           coalesce(h.idx, '{}'), coalesce(h.cnt, '{}')
      FROM t LEFT JOIN h ON h.bucket = t.bucket AND h.health = t.health
                        AND h.agent_name IS NOT DISTINCT FROM t.agent_name;
    RETURN NULL;
END $$;

CREATE TRIGGER span_rollup_capture AFTER INSERT ON ml_observability_spans
    REFERENCING NEW TABLE AS new_spans FOR EACH STATEMENT EXECUTE FUNCTION span_rollup_capture();

-- The raw reads of stats are time ranges at a window's edge: rows arrive
-- roughly in start_time order, so a BRIN index is tiny (~800 kB per 10M rows) and fits.
CREATE INDEX ml_observability_spans_start_brin_idx
    ON ml_observability_spans USING brin (start_time) WITH (pages_per_range = 16);

-- Same columns as 0004, from the daily rollups and pending deltas once the
-- backfill is done (from the raw rows until then); health spans left out.
CREATE OR REPLACE VIEW v_agent_latency_summary AS
WITH parts AS (
    SELECT agent_name, span_count, error_count, duration_count, duration_sum, duration_min,
           duration_max, zero_count, start_min, start_max, hist_idx, hist_cnt
      FROM span_rollup_daily WHERE NOT health
    UNION ALL
    SELECT agent_name, span_count, error_count, duration_count, duration_sum, duration_min,
           duration_max, zero_count, start_min, start_max, hist_idx, hist_cnt
      FROM span_rollup_delta WHERE NOT health
), totals AS (
    SELECT agent_name, sum(span_count)::bigint AS span_count,
           sum(error_count)::bigint AS error_count, sum(duration_count)::bigint AS n,
           sum(duration_sum) AS dsum, min(duration_min) AS dmin, max(duration_max) AS dmax,
           sum(zero_count)::bigint AS zeros, min(start_min) AS first_start,
           max(start_max) AS last_start
      FROM parts GROUP BY agent_name
), hist AS (
    SELECT agent_name, array_agg(i ORDER BY i) AS idx, array_agg(n ORDER BY i) AS cnt
      FROM (SELECT p.agent_name, u.i, sum(u.n)::bigint AS n
              FROM parts p, unnest(p.hist_idx, p.hist_cnt) u(i, n) GROUP BY 1, 2) m
     GROUP BY agent_name
), rolled AS (
    SELECT t.*, span_hist_quantiles(h.idx, h.cnt, t.zeros, t.dmin, t.dmax,
                                    ARRAY[0.5, 0.95, 0.99]::double precision[]) AS pct
      FROM totals t LEFT JOIN hist h ON h.agent_name IS NOT DISTINCT FROM t.agent_name
)
SELECT agent_name, span_count, error_count,
       error_count::double precision / greatest(span_count, 1)     AS error_rate,
       dsum / nullif(n, 0)                                          AS avg_ms,
       pct[1] AS p50_ms, pct[2] AS p95_ms, pct[3] AS p99_ms, first_start, last_start
  FROM rolled
 WHERE (SELECT done FROM span_rollup_backfill)
UNION ALL
SELECT
    agent_name,
    count(*)                                                        AS span_count,
    count(*) FILTER (WHERE status = 'error')                        AS error_count,
    (count(*) FILTER (WHERE status = 'error'))::double precision
        / greatest(count(*), 1)                                     AS error_rate,
    avg(duration_ms)                                                AS avg_ms,
    percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_ms)       AS p50_ms,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)       AS p95_ms,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)       AS p99_ms,
    min(start_time)                                                 AS first_start,
    max(start_time)                                                 AS last_start
FROM ml_observability_spans
WHERE NOT (SELECT done FROM span_rollup_backfill)
  AND (agent_name IS DISTINCT FROM 'span-sidecar' OR name <> 'span-sidecar.health')
GROUP BY agent_name;

COMMENT ON VIEW v_agent_latency_summary IS
    'Per agent, without the sidecar''s own health spans (agent span-sidecar, name '
    'span-sidecar.health), from the daily rollups (kept retention.rollup_ttl_days, which may '
    'be longer than the raw rows): p50/p95/p99 within 1 % of percentile_cont.';
