"""The sink contract as docs/architecture.md states it (issue 18)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from sidecar.config.settings import Settings
from sidecar.sinks.base import Sink, batches_in_flight
from sidecar.sinks.registry import sink_sections


def test_a_sink_without_batches_in_flight_gets_one_batch_at_a_time() -> None:
    assert batches_in_flight(cast(Sink, SimpleNamespace(name="x"))) == 1
    assert batches_in_flight(cast(Sink, SimpleNamespace(batches_in_flight=3))) == 3
    assert batches_in_flight(cast(Sink, SimpleNamespace(batches_in_flight=0))) == 1


def test_every_sink_section_names_its_target_with_credentials_masked() -> None:
    settings = Settings.model_validate({
        "postgres": {"dsn": "postgresql://u:hunter22@db/x"},
        "opik": {"url": "https://k:tok-secret@opik.example/api", "enabled": True}})
    targets: dict[str, Any] = {n: s.target() for n, s in sink_sections(settings).items()}
    assert targets == {"postgres": "postgresql://u:***@db/x",
                       "opik": "https://k:***@opik.example/api"}
