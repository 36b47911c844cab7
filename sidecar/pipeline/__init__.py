"""Delivery: one pipeline per sink (tail -> parse -> batch -> send -> ack ->
checkpoint), its batches, and the drain at a stop."""
