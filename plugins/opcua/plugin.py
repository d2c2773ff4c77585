"""Registers the ``opcua`` driver through the public hook, as any vendor plugin would."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .driver import OpcUaDriver
from .options import OpcUaOptions


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver(
        "opcua",
        OpcUaDriver,
        OpcUaOptions,
        "OPC UA servers (subscriptions), e.g. bioreactor controllers",
    )
