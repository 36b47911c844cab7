"""Receivers: agents that already speak Opik's REST API or OTLP/HTTP write to
the spool through the daemon (``receivers.enabled``), answered only after
their records are appended; from there on a receiver is just another writer.
"""
