"""Registers the ``opcua_server`` sink through the public hook, as any vendor plugin would.

The sink's module (and asyncua with it, ~14 MB resident and ~0.1 s) is imported only when a
configuration builds an ``opcua_server`` sink, not each time ``patgw`` loads its plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import PluginContext, Registry, hookimpl

from .options import OpcUaServerOptions

if TYPE_CHECKING:
    from .sink import OpcUaServerSink

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"


def build_sink(options: OpcUaServerOptions, context: PluginContext) -> OpcUaServerSink:
    """The registered factory: an :class:`~.sink.OpcUaServerSink`, importing asyncua now."""
    from .sink import OpcUaServerSink

    return OpcUaServerSink(options, context)


@hookimpl
def pat_gateway_register_sinks(registry: Registry) -> None:
    registry.add_sink(
        "opcua_server",
        build_sink,
        OpcUaServerOptions,
        "OPC UA server exposing every signal; encrypted, password logins, trusted clients only",
    )
