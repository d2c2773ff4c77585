"""The hooks: what the gateway finds through the ``pat_gateway`` entry point."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .driver import BalanceOptions, MtSicsBalance
from .emulator import BalanceEmulator, EmulatorOptions

PAT_GATEWAY_API = "1.1"  # the plugin API this plugin was written for (gateway.PLUGIN_API_VERSION)


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver(
        "mtsics_balance", MtSicsBalance, BalanceOptions, "Mettler-Toledo balance, MT-SICS on TCP"
    )


@hookimpl
def pat_gateway_register_emulators(registry: Registry) -> None:
    registry.add_emulator(
        "mtsics_balance", BalanceEmulator, EmulatorOptions, "MT-SICS balance (emulated)"
    )
