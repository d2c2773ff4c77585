"""Registers the ``opcua_server`` sink through the public hook, as any vendor plugin would."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .options import OpcUaServerOptions
from .sink import OpcUaServerSink


@hookimpl
def pat_gateway_register_sinks(registry: Registry) -> None:
    registry.add_sink(
        "opcua_server",
        OpcUaServerSink,
        OpcUaServerOptions,
        "OPC UA server exposing every signal; encrypted, password logins, trusted clients only",
    )
