"""Registers the ``modbus`` driver through the public hook, as any vendor plugin would."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .driver import ModbusDriver
from .options import ModbusOptions


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver(
        "modbus",
        ModbusDriver,
        ModbusOptions,
        "Modbus TCP/RTU devices from register maps or profiles",
    )
