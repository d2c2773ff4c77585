"""Registers the ``modbus`` driver through the public hook, as any vendor plugin would."""

from __future__ import annotations

from gateway import PluginContext, Registry, hookimpl

from .driver import ModbusDriver
from .options import ModbusOptions


def _build(options: ModbusOptions, context: PluginContext) -> ModbusDriver:
    return ModbusDriver(options, context)


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver(
        "modbus", _build, ModbusOptions, "Modbus TCP/RTU devices from register maps or profiles"
    )
