-- One row per span, keyed by the span id: re-delivery is a no-op.
CREATE TABLE IF NOT EXISTS ml_observability_spans (
    span_id              uuid PRIMARY KEY,
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
    ingested_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS ml_observability_spans_trace_id_idx
    ON ml_observability_spans (trace_id);
CREATE INDEX IF NOT EXISTS ml_observability_spans_agent_start_idx
    ON ml_observability_spans (agent_name, start_time);
