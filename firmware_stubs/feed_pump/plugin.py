"""Registers the ``feed_pump`` emulator through the public hook, like any plugin.

Besides where it listens, the options can schedule faults, so a demo or a standalone emulator
(``patgw emulate feed_pump --option 'faults=[{fault: stall, after_s: 30, for_s: 10}]'``) shows
the gateway's fault handling without writing code.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import PluginContext, Registry, hookimpl

from ..bioreactor import shared_process
from ..modbus_device import ScheduledModbusDevice
from .faults import Fault
from .model import PumpModel
from .server import FeedPumpEmulator

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"

log = structlog.get_logger(__name__)


class FaultStep(BaseModel):
    """Inject ``fault`` ``after_s`` seconds after start; clear it ``for_s`` seconds later.

    ``after_s`` and ``for_s`` are wall seconds; the gradual ``tubing_wear`` grows with the
    process's hours when the pump feeds a process (``process``), with wall hours otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Literal[
        "drop_connections", "exception_responses", "stall", "pump_fault", "tubing_wear"
    ] = Field(
        description="What to break: drop_connections, exception_responses, stall, pump_fault;"
        " tubing_wear (gradual) = the pump delivers less per revolution while its speed,"
        " flow and total_volume stay perfect."
    )
    after_s: float = Field(ge=0, description="Wall seconds after start.")
    for_s: float = Field(
        default=0, ge=0, description="0 = until the emulator stops; clearing wear = new tubing."
    )
    rate_per_h: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="tubing_wear only (required): fraction of the delivery lost per process"
        " hour (per wall hour without a process).",
    )
    max_loss: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="tubing_wear only: the loss stops growing at this fraction (default 0.5).",
    )

    @model_validator(mode="after")
    def _wear_parameters(self) -> Self:
        if self.fault == "tubing_wear":
            if self.rate_per_h is None:
                raise ValueError("tubing_wear needs rate_per_h: fraction lost per hour")
            if not math.isfinite(self.rate_per_h):
                raise ValueError("rate_per_h must be finite")
        elif self.rate_per_h is not None or self.max_loss is not None:
            raise ValueError("rate_per_h and max_loss apply only to fault 'tubing_wear'")
        return self


class FeedPumpOptions(BaseModel):
    """Where the emulated pump listens, how it starts and which faults it plays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Listen address (loopback by default).")
    port: int = Field(default=15020, ge=0, le=65535, description="Modbus TCP port; 0 = any.")
    unit_id: int = Field(default=1, ge=0, le=247)
    framing: Literal["tcp", "rtu"] = Field(
        default="tcp", description="tcp = Modbus TCP; rtu = RTU frames over TCP (socket:// URLs)."
    )
    setpoint_rpm: float = Field(default=50.0, ge=0, le=400, description="Initial speed setpoint.")
    max_setpoint_rpm: float = Field(
        default=400.0,
        ge=0,
        le=400,
        description="The drive's speed limit: a setpoint written above it (up to 400) is"
        " accepted but clamped to it, and reads back as the limit, as real pumps do.",
    )
    ml_per_rev: float = Field(default=0.8, gt=0, le=100, description="Tubing calibration, mL/rev.")
    faults: tuple[FaultStep, ...] = Field(default=(), description="Scheduled fault injection.")
    watchdog_s: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Communication watchdog timeout at power-up, s (register watchdog_s);"
        " 0 = off. Without a heartbeat write within it the setpoint is limited to safe_rpm.",
    )
    safe_rpm: float = Field(
        default=0.0,
        ge=0,
        le=400,
        description="Speed the watchdog limits the setpoint to (register safe_speed); 0 = stop.",
    )
    process: str | None = Field(
        default=None,
        description="Id of a 'bioreactor' emulator (listed before this one) whose process"
        " receives the pumped feed, millilitre for millilitre; none = the pump feeds nothing.",
    )

    @model_validator(mode="after")
    def _setpoint_within_limit(self) -> Self:
        if self.setpoint_rpm > self.max_setpoint_rpm:
            raise ValueError(
                f"setpoint_rpm {self.setpoint_rpm:g} is above max_setpoint_rpm"
                f" {self.max_setpoint_rpm:g}"
            )
        return self


class ScheduledFeedPump(ScheduledModbusDevice[FeedPumpEmulator, FaultStep]):
    """The emulator, its fault schedule and its link to a shared bioreactor process."""

    def before_start(self) -> None:
        if self.process is not None:
            clock = shared_process(self.process)
            self.emulator.on_delivered = clock.feed
            self.emulator.hours = clock.hours

    def _inject(self, step: FaultStep) -> None:
        if step.fault == "tubing_wear":
            self.emulator.inject(
                Fault.TUBING_WEAR,
                rate_per_h=step.rate_per_h,
                max_loss=0.5 if step.max_loss is None else step.max_loss,
            )
        else:
            self.emulator.inject(Fault(step.fault))

    def _clear(self, step: FaultStep) -> None:
        self.emulator.clear(Fault(step.fault))


def _build(options: FeedPumpOptions, context: PluginContext) -> Any:
    model = PumpModel(
        setpoint_rpm=options.setpoint_rpm,
        actual_rpm=options.setpoint_rpm,
        ml_per_rev=options.ml_per_rev,
        max_setpoint_rpm=options.max_setpoint_rpm,
        watchdog_s=options.watchdog_s,
        safe_rpm=options.safe_rpm,
    )
    emulator = FeedPumpEmulator(
        options.host, options.port, model=model, unit_id=options.unit_id, framing=options.framing
    )
    return ScheduledFeedPump(emulator, options.faults, options.process)


@hookimpl
def pat_gateway_register_emulators(registry: Registry) -> None:
    registry.add_emulator(
        "feed_pump", _build, FeedPumpOptions, "Peristaltic feed pump on Modbus TCP (pymodbus)"
    )
