"""Registers the ``feed_pump`` emulator through the public hook, like any plugin."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway import PluginContext, Registry, hookimpl

from .model import PumpModel
from .server import FeedPumpEmulator


class FeedPumpOptions(BaseModel):
    """Where the emulated pump listens and how it starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Listen address (loopback by default).")
    port: int = Field(default=15020, ge=0, le=65535, description="Modbus TCP port; 0 = any.")
    unit_id: int = Field(default=1, ge=0, le=247)
    framing: Literal["tcp", "rtu"] = Field(
        default="tcp", description="tcp = Modbus TCP; rtu = RTU frames over TCP (socket:// URLs)."
    )
    setpoint_rpm: float = Field(default=50.0, ge=0, le=400, description="Initial speed setpoint.")
    ml_per_rev: float = Field(default=0.8, gt=0, description="Tubing calibration, mL/rev.")


def _build(options: FeedPumpOptions, context: PluginContext) -> Any:
    model = PumpModel(
        setpoint_rpm=options.setpoint_rpm,
        actual_rpm=options.setpoint_rpm,
        ml_per_rev=options.ml_per_rev,
    )
    return FeedPumpEmulator(
        options.host, options.port, model=model, unit_id=options.unit_id, framing=options.framing
    )


@hookimpl
def pat_gateway_register_emulators(registry: Registry) -> None:
    registry.add_emulator(
        "feed_pump", _build, FeedPumpOptions, "Peristaltic feed pump on Modbus TCP (pymodbus)"
    )
