"""Live reload: one list of live keys decides both what is applied and what is reported."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from sidecar.config.reload import Reload, live_settings, reload_config
from sidecar.config.settings import Settings

OLD = Settings.model_validate({
    "sampling": {"agent_overrides": {"a": 0.5, "b": 0.2}, "tiers": {1: 0.3}},
    "batch": {"max_records": 100, "queue_batches": 2},
    "spans": {"max_line_bytes": 4096, "max_field_bytes": 2048},
    "spool": {"state_dir": "/var/lib/one", "max_bytes": 1 << 20},
    "logging": {"level": "info", "format": "json"}}, context={"env": {}})
NEW = Settings.model_validate({
    "sampling": {"agent_overrides": {"a": 0.5}, "tiers": {1: 0.4}},
    "batch": {"max_records": 200, "queue_batches": 4},
    "spans": {"max_line_bytes": 8192, "max_field_bytes": 4096},
    "spool": {"state_dir": "/var/lib/two", "max_bytes": 2 << 20},
    "logging": {"level": "debug", "format": "console"}}, context={"env": {}})


def test_live_keys_are_applied_and_the_others_reported_and_kept() -> None:
    change = live_settings(OLD, NEW)
    assert change.applied == ["batch.max_records", "logging.level",
                              "sampling.agent_overrides.b", "sampling.tiers",
                              "spans.max_field_bytes", "spool.max_bytes"]
    assert change.restart == ["batch.queue_batches", "logging.format",
                              "spans.max_line_bytes", "spool.state_dir"]
    s = change.settings
    assert s.sampling == NEW.sampling and s.batch.max_records == 200
    assert s.spans.max_field_bytes == 4096 and s.logging.level == "debug"
    assert s.spool.max_bytes == 2 << 20
    assert s.batch.queue_batches == 2 and s.spans.max_line_bytes == 4096
    assert s.spool.state_dir == Path("/var/lib/one") and s.logging.format == "json"


def test_a_config_with_nothing_new_changes_nothing() -> None:
    change = live_settings(OLD, OLD)
    assert change == Reload(OLD, [], [])


class _App:
    def __init__(self) -> None:
        self.settings = OLD

    def reload(self, new: Settings) -> Reload:
        change = live_settings(self.settings, new)
        self.settings = change.settings
        return change


def test_reload_config_logs_what_it_applied_and_what_needs_a_restart() -> None:
    app = _App()
    with capture_logs() as logs:
        assert reload_config(app, None, load=lambda _: NEW)
    events = {e["event"]: e for e in logs}
    assert events["config.reload.applied"]["changed"] == live_settings(OLD, NEW).applied
    assert events["config.reload.needs_restart"]["keys"] == live_settings(OLD, NEW).restart
    assert app.settings.batch.max_records == 200
