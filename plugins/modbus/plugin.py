"""Registers the ``modbus`` driver through the public hook, as any vendor plugin would.

The driver's module (and pymodbus with it) is imported only when a configuration builds a
``modbus`` instrument, so the plugin loads without the ``[modbus]`` extra: ``patgw plugins``
lists it and ``patgw check`` names the extra a configuration using it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import MissingDependencyError, PluginContext, Registry, hookimpl

from .options import ModbusOptions

if TYPE_CHECKING:
    from .driver import ModbusDriver

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"


def build_driver(options: ModbusOptions, context: PluginContext) -> ModbusDriver:
    """The registered factory: a :class:`~.driver.ModbusDriver`, importing pymodbus now. Modbus
    RTU also needs pyserial (pymodbus' serial client imports it only when it connects)."""
    from .driver import ModbusDriver

    if options.transport == "rtu":
        try:
            import serial  # noqa: F401  (only whether it is there)
        except ImportError as exc:
            raise MissingDependencyError(("serial",), "serial") from exc
    return ModbusDriver(options, context)


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver(
        "modbus",
        build_driver,
        ModbusOptions,
        "Modbus TCP/RTU devices from register maps or profiles",
        requires=("pymodbus",),
        extra="modbus",
    )
