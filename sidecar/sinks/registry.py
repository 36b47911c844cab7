"""Which sinks exist, which are enabled, and how each is built.

A sink is declared by its settings section (a ``SinkSection`` of
``Settings``, whose ``SINK`` names the module): the app, ``status`` and the
health code read this registry instead of spelling sink names. Adding a sink
is one module with a ``build(settings, context) -> Sink`` function plus one
settings section; nothing else changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from sidecar.config.settings import Settings, SinkSection
from sidecar.sinks.base import Sink, SinkContext

Build = Callable[[Settings, SinkContext], Sink]


def sink_sections(settings: Settings) -> dict[str, SinkSection]:
    """Every sink section of the settings, by sink name, in declaration order."""
    return {name: section for name, section in settings if isinstance(section, SinkSection)}


def enabled_sinks(settings: Settings) -> list[str]:
    """The names of the enabled sinks, in declaration order."""
    return [name for name, section in sink_sections(settings).items() if section.enabled]


def build_sink(name: str, settings: Settings, context: SinkContext) -> Sink:
    """Build the named sink (its module is imported only now)."""
    section = sink_sections(settings)[name]
    build: Build = importlib.import_module(section.SINK).build
    return build(settings, context)
