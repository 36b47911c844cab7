"""span-sidecar: ship LLM-agent spans from a local spool to Opik and PostgreSQL."""

__version__ = "0.2.0"
