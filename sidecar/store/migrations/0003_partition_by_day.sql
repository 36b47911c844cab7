-- ml_observability_spans becomes a table partitioned by day (UTC) on
-- start_time, so that retention drops whole days instead of deleting rows.
-- The primary key becomes (span_id, start_time): a span's start time never
-- changes, so a re-delivered span still collides with its stored row and
-- re-delivery stays a no-op. A default partition takes any row no day
-- partition covers, so no row is ever refused.
--
-- An unpartitioned table (0.1) is renamed, its rows copied into the new
-- table inside this migration's transaction, and dropped: every row is kept.
-- Day partitions are created for the days that hold rows (from 400 days ago
-- to 60 days ahead, so that a few absurd timestamps cannot create thousands
-- of partitions; rows outside go to the default partition) and for the next
-- three days. The running daemon keeps creating them ahead after that.

DROP VIEW IF EXISTS v_agent_latency_summary;

DO $$
BEGIN
    IF to_regclass('ml_observability_spans') IS NOT NULL THEN
        ALTER TABLE ml_observability_spans RENAME TO ml_observability_spans_v01;
        ALTER INDEX IF EXISTS ml_observability_spans_pkey
            RENAME TO ml_observability_spans_v01_pkey;
        ALTER INDEX IF EXISTS ml_observability_spans_trace_id_idx
            RENAME TO ml_observability_spans_v01_trace_id_idx;
        ALTER INDEX IF EXISTS ml_observability_spans_agent_start_idx
            RENAME TO ml_observability_spans_v01_agent_start_idx;
    END IF;
END $$;

CREATE TABLE ml_observability_spans (
    span_id              uuid NOT NULL,
    trace_id             uuid NOT NULL,
    parent_span_id       uuid,
    name                 text NOT NULL,
    type                 text NOT NULL,
    agent_name           text,
    agent_tier           integer,
    project_name         text,
    start_time           timestamptz NOT NULL,
    end_time             timestamptz,
    duration_ms          double precision,
    status               text NOT NULL CHECK (status IN ('ok', 'error')),
    model                text,
    provider             text,
    prompt_tokens        bigint,
    completion_tokens    bigint,
    total_tokens         bigint,
    total_estimated_cost double precision,
    error_info           jsonb,
    input                jsonb,
    output               jsonb,
    metadata             jsonb,
    events               jsonb,
    tags                 text[],
    last_updated_at      timestamptz,
    ingested_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (span_id, start_time)
) PARTITION BY RANGE (start_time);

CREATE TABLE ml_observability_spans_default PARTITION OF ml_observability_spans DEFAULT;

CREATE INDEX ml_observability_spans_trace_id_idx ON ml_observability_spans (trace_id);
CREATE INDEX ml_observability_spans_agent_start_idx
    ON ml_observability_spans (agent_name, start_time);

DO $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    day   date;
BEGIN
    FOR day IN
        SELECT today + i FROM generate_series(0, 3) AS g(i)
        UNION
        SELECT DISTINCT (start_time AT TIME ZONE 'UTC')::date
          FROM ml_observability_spans_v01
         WHERE start_time >= (today - 400)::timestamp AT TIME ZONE 'UTC'
           AND start_time <  (today + 60)::timestamp AT TIME ZONE 'UTC'
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF ml_observability_spans FOR VALUES FROM (%L) TO (%L)',
            'ml_observability_spans_p' || to_char(day, 'YYYYMMDD'),
            day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END $$;

INSERT INTO ml_observability_spans (
    span_id, trace_id, parent_span_id, name, type, agent_name, agent_tier, project_name,
    start_time, end_time, duration_ms, status, model, provider, prompt_tokens,
    completion_tokens, total_tokens, total_estimated_cost, error_info, input, output,
    metadata, events, tags, last_updated_at, ingested_at)
SELECT
    span_id, trace_id, parent_span_id, name, type, agent_name, agent_tier, project_name,
    start_time, end_time, duration_ms, status, model, provider, prompt_tokens,
    completion_tokens, total_tokens, total_estimated_cost, error_info, input, output,
    metadata, events, tags, last_updated_at, ingested_at
FROM ml_observability_spans_v01;

DROP TABLE ml_observability_spans_v01;

-- Unchanged from 0002: per agent, over every stored span.
CREATE VIEW v_agent_latency_summary AS
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
