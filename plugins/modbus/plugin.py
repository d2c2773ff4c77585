"""Registers the ``modbus`` driver through the public hook, as any vendor plugin would."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .driver import ModbusDriver
from .options import ModbusOptions

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver(
        "modbus",
        ModbusDriver,
        ModbusOptions,
        "Modbus TCP/RTU devices from register maps or profiles",
    )
