"""Fixtures of the fleet tests: a private PgBouncer in transaction pooling mode."""

from tests.pgbouncer import pgbouncer, pgbouncer_factory

__all__ = ["pgbouncer", "pgbouncer_factory"]
