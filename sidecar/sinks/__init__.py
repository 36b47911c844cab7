"""Sinks: where batches go (PostgreSQL, Opik), all behind one Protocol."""
