-- v_agent_latency_summary leaves out the daemon's own health spans (agent
-- `span-sidecar`, name `span-sidecar.health`, one every health.interval_s,
-- each ~60 s long): they skewed every figure. Same columns as 0002/0003;
-- they stay in ml_observability_spans (WHERE agent_name = 'span-sidecar').
CREATE OR REPLACE VIEW v_agent_latency_summary AS
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
WHERE agent_name IS DISTINCT FROM 'span-sidecar' OR name <> 'span-sidecar.health'
GROUP BY agent_name;

COMMENT ON VIEW v_agent_latency_summary IS
    'Per agent over stored spans, without the sidecar''s own health spans '
    '(agent span-sidecar, name span-sidecar.health): query ml_observability_spans for those.';
