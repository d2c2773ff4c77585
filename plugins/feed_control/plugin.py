"""Registers the ``pi_control`` processor through the public hook, like any plugin."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .processor import PiControlOptions, PiControlProcessor

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"


@hookimpl
def pat_gateway_register_processors(registry: Registry) -> None:
    registry.add_processor(
        "pi_control",
        PiControlProcessor,
        PiControlOptions,
        "PI loop from a measured signal to a write target (anti-windup, rate limits,"
        " auto/manual, hold and fallback profile on bad input, pump heartbeat)",
    )
