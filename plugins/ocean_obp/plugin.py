"""Registers the ``ocean_obp`` driver through the public hook, as any vendor plugin would."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .driver import ObpSpectrometer
from .options import ObpOptions

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver(
        "ocean_obp",
        ObpSpectrometer,
        ObpOptions,
        "Ocean Insight spectrometers (Ocean Binary Protocol over serial), e.g. in-line Raman",
    )
