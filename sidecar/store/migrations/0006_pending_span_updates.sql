-- Span updates (spool kind "span_update", issue 20) whose span is not stored
-- yet. The Opik SDK sends an update (span.update(), span.end()) at once and
-- the create in its next batch, so an update often reaches the sink first:
-- it waits here, and the batch that stores the span applies and deletes it
-- in the same transaction (sidecar/sinks/postgres_updates.py). payload holds
-- the update's columns as the spans table names them; seq keeps their order.
CREATE TABLE IF NOT EXISTS span_sidecar_pending_updates (
    seq         bigserial PRIMARY KEY,
    span_id     uuid NOT NULL,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS span_sidecar_pending_updates_span_idx
    ON span_sidecar_pending_updates (span_id);
