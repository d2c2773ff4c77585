"""Registers the ``feed_pump`` emulator through the public hook, like any plugin.

Besides where it listens, the options can schedule faults, so a demo or a standalone emulator
(``patgw emulate feed_pump --option 'faults=[{fault: stall, after_s: 30, for_s: 10}]'``) shows
the gateway's fault handling without writing code.
"""

from __future__ import annotations

from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from gateway import PluginContext, Registry, hookimpl

from ..bioreactor import shared_process
from ..schedule import FaultSchedule, ScheduledEmulator
from .faults import Fault
from .model import PumpModel
from .server import FeedPumpEmulator

log = structlog.get_logger(__name__)


class FaultStep(BaseModel):
    """Inject ``fault`` ``after_s`` seconds after start; clear it ``for_s`` seconds later."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Literal["drop_connections", "exception_responses", "stall", "pump_fault"]
    after_s: float = Field(ge=0)
    for_s: float = Field(default=0, ge=0, description="0 = until the emulator stops.")


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
    ml_per_rev: float = Field(default=0.8, gt=0, le=100, description="Tubing calibration, mL/rev.")
    faults: tuple[FaultStep, ...] = Field(default=(), description="Scheduled fault injection.")
    process: str | None = Field(
        default=None,
        description="Id of a 'bioreactor' emulator (listed before this one) whose process"
        " receives the pumped feed, millilitre for millilitre; none = the pump feeds nothing.",
    )


class ScheduledFeedPump(ScheduledEmulator[FeedPumpEmulator, FaultStep]):
    """The emulator, its fault schedule and its link to a shared bioreactor process."""

    def __init__(
        self,
        emulator: FeedPumpEmulator,
        faults: tuple[FaultStep, ...],
        process: str | None = None,
    ) -> None:
        schedule = FaultSchedule(
            faults,
            lambda step: emulator.inject(Fault(step.fault)),
            lambda step: emulator.clear(Fault(step.fault)),
            "feed_pump.faults",
        )
        super().__init__(emulator, schedule)
        self.process = process

    @property
    def port(self) -> int:
        return self.emulator.port

    @property
    def endpoint(self) -> str:
        """Where a driver connects: ``host:port``."""
        return f"{self.emulator.host}:{self.emulator.port}"

    def before_start(self) -> None:
        if self.process is not None:
            self.emulator.on_delivered = shared_process(self.process).feed


def _build(options: FeedPumpOptions, context: PluginContext) -> Any:
    model = PumpModel(
        setpoint_rpm=options.setpoint_rpm,
        actual_rpm=options.setpoint_rpm,
        ml_per_rev=options.ml_per_rev,
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
