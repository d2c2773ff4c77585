"""Registers the ``ocean_obp`` driver through the public hook, as any vendor plugin would.

The driver's modules (and pyserial with them) are imported only when a configuration builds an
``ocean_obp`` instrument, so the plugin loads without the ``[serial]`` extra."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import PluginContext, Registry, hookimpl

from .options import ObpOptions

if TYPE_CHECKING:
    from .driver import ObpSpectrometer

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"


def build_driver(options: ObpOptions, context: PluginContext) -> ObpSpectrometer:
    """The registered factory: an :class:`~.driver.ObpSpectrometer`, importing pyserial now."""
    from .driver import ObpSpectrometer

    return ObpSpectrometer(options, context)


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver(
        "ocean_obp",
        build_driver,
        ObpOptions,
        "Ocean Insight spectrometers (Ocean Binary Protocol over serial), e.g. in-line Raman",
        requires=("serial",),
        extra="serial",
    )
