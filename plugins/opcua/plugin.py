"""Registers the ``opcua`` driver through the public hook, as any vendor plugin would.

The driver's module (and asyncua with it, ~14 MB resident and ~0.1 s) is imported only when a
configuration builds an ``opcua`` instrument, not each time ``patgw`` loads its plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import PluginContext, Registry, hookimpl

from .options import OpcUaOptions

if TYPE_CHECKING:
    from .driver import OpcUaDriver

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"


def build_driver(options: OpcUaOptions, context: PluginContext) -> OpcUaDriver:
    """The registered factory: an :class:`~.driver.OpcUaDriver`, importing asyncua now."""
    from .driver import OpcUaDriver

    return OpcUaDriver(options, context)


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver(
        "opcua",
        build_driver,
        OpcUaOptions,
        "OPC UA servers (subscriptions), e.g. bioreactor controllers",
    )
