-- Per agent: span count, error rate and latency percentiles over stored spans.
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
GROUP BY agent_name;
