"""Registers the ``bioreactor`` emulator through the public hook, like any plugin.

The emulator is the shared process the other emulators act on: it starts a
:class:`~firmware_stubs.bioreactor.model.FedBatchModel` on a
:class:`~firmware_stubs.bioreactor.clock.ProcessClock` and registers it in the
:mod:`~firmware_stubs.bioreactor.hub` under its emulator id, so list it before the emulators that
use it. With a ``port`` it also serves the run as a bioreactor controller over OPC UA
(:mod:`~firmware_stubs.bioreactor.controller`), whose faults the options can schedule::

    patgw emulate bioreactor --port 4840
    patgw emulate bioreactor --port 4840 --option update_s=0.5 \
        --option 'faults=[{fault: server_restart, after_s: 30, for_s: 10}]'

Without a port it has no network endpoint; ``patgw emulate bioreactor`` then runs the process
alone and logs a state line every ``log_every_s`` seconds, a quick look at its dynamics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from typing import Literal, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import PluginContext, PluginError, Registry, hookimpl

from ..schedule import FaultSchedule
from . import hub
from .clock import ProcessClock
from .controller import BioreactorController
from .faults import Fault
from .model import FedBatchModel, ProcessParams

__all__ = ["CONTROLLER_FAULTS", "BioreactorEmulator", "BioreactorFaultStep", "BioreactorOptions"]

log = structlog.get_logger(__name__)

_DEFAULTS = ProcessParams()


#: Faults of the OPC UA controller (they need a port); the others act on the process.
CONTROLLER_FAULTS = frozenset({"server_restart", "bad_values", "frozen"})


class BioreactorFaultStep(BaseModel):
    """Inject ``fault`` ``after_s`` wall seconds after start; clear it ``for_s`` wall seconds
    later. A gradual fault (``ph_probe_drift``) then grows with the process clock."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Literal["server_restart", "bad_values", "frozen", "ph_probe_drift", "growth_upset"] = (
        Field(
            description="What to break: server_restart = the OPC UA server is down for for_s"
            " (sessions die), then starts again on the same port; bad_values = every value Bad;"
            " frozen = values stop updating; ph_probe_drift = the pH probe (pH.PV, which the pH"
            " loop controls on) drifts from the true pH at rate_per_h per process hour;"
            " growth_upset = the specific growth rate drops to factor times its value."
        )
    )
    after_s: float = Field(ge=0, description="Wall seconds after start.")
    for_s: float = Field(
        default=0,
        ge=0,
        description="How long, wall seconds; 0 = until the emulator stops (server_restart needs"
        " a time > 0). Clearing ph_probe_drift recalibrates the probe (offset back to 0).",
    )
    rate_per_h: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="ph_probe_drift only (required, not 0): pH units per process hour, signed"
        " (> 0: the probe reads high, so the loop drives the true pH down).",
    )
    max_offset: float | None = Field(
        default=None,
        gt=0,
        le=7,
        description="ph_probe_drift only: the probe's offset stops growing at this size"
        " (default 1 pH unit).",
    )
    factor: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="growth_upset only: the growth rate is multiplied by this (default 0.5).",
    )

    @model_validator(mode="after")
    def _parameters_fit_the_fault(self) -> Self:
        if self.fault == "server_restart" and self.for_s <= 0:
            raise ValueError("server_restart needs for_s > 0: how long the server is down")
        if self.fault == "ph_probe_drift":
            if self.rate_per_h is None or self.rate_per_h == 0:
                raise ValueError("ph_probe_drift needs rate_per_h (pH per process hour, not 0)")
        elif self.rate_per_h is not None or self.max_offset is not None:
            raise ValueError("rate_per_h and max_offset apply only to fault 'ph_probe_drift'")
        if self.factor is not None and self.fault != "growth_upset":
            raise ValueError("factor applies only to fault 'growth_upset'")
        return self


class BioreactorOptions(BaseModel):
    """How fast the emulated fed-batch runs, its noise seed and a few initial conditions; and,
    with a port, the OPC UA controller serving it and its scheduled faults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(
        default=0, ge=0, description="Seed of the process noise: same seed and feeds, same batch."
    )
    time_scale: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Process seconds per wall-clock second; 60 = one process hour per minute.",
    )
    log_every_s: float = Field(
        default=10.0, ge=0, le=86_400, description="Log a state line every so many s; 0 = never."
    )
    volume_L: float = Field(
        default=_DEFAULTS.volume_L, gt=0, le=20_000, description="Initial working volume, L."
    )
    vcd_e6_per_mL: float = Field(
        default=_DEFAULTS.vcd_e6_per_mL,
        gt=0,
        le=100,
        description="Viable cell density at inoculation, 1e6 cells/mL.",
    )
    glucose_g_L: float = Field(
        default=_DEFAULTS.glucose_g_L, ge=0, le=100, description="Initial glucose, g/L."
    )
    feed_glucose_g_L: float = Field(
        default=_DEFAULTS.feed_glucose_g_L,
        ge=0,
        le=1000,
        description="Glucose in the feed medium, g/L.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Listen address of the OPC UA controller (loopback by default).",
    )
    port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="OPC UA port of the bioreactor controller; none = no controller, only the"
        " shared process; 0 = any free port.",
    )
    update_s: float = Field(
        default=0.2,
        ge=0.01,
        le=60,
        description="The controller refreshes its values from the process every so many s.",
    )
    faults: tuple[BioreactorFaultStep, ...] = Field(
        default=(),
        description="Faults scheduled on the process (ph_probe_drift, growth_upset) or on the"
        " OPC UA controller (server_restart, bad_values, frozen: these need a port).",
    )
    setpoint_limits: dict[
        Literal["Temperature", "pH", "DissolvedOxygen", "Agitation"], tuple[float, float]
    ] = Field(
        default_factory=dict,
        description="Operating limits [low, high] of a loop's SP, e.g. {pH: [6.8, 7.4]}: the"
        " controller accepts a setpoint written within its EURange but outside these limits"
        " clamped to them (it reads back the limit), as a DCU's SP limits do (needs a port).",
    )

    @model_validator(mode="after")
    def _faults_need_a_controller(self) -> Self:
        if self.port is None:
            for step in self.faults:
                if step.fault in CONTROLLER_FAULTS:
                    raise ValueError(
                        f"fault {step.fault} acts on the OPC UA controller: set a port"
                    )
        if self.setpoint_limits and self.port is None:
            raise ValueError("setpoint_limits act on the OPC UA controller: set a port")
        for loop, (low, high) in self.setpoint_limits.items():
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"setpoint_limits.{loop}: need finite low <= high")
        return self

    def params(self) -> ProcessParams:
        """The process parameters: the defaults with these initial conditions."""
        return dataclasses.replace(
            _DEFAULTS,
            volume_L=self.volume_L,
            vcd_e6_per_mL=self.vcd_e6_per_mL,
            glucose_g_L=self.glucose_g_L,
            feed_glucose_g_L=self.feed_glucose_g_L,
        )


class BioreactorEmulator:
    """One running fed-batch process, findable in the hub as ``context.id`` while entered, and
    served by an OPC UA bioreactor controller when ``options.port`` is set.

    No I/O in the constructor: the model, its clock, the hub entry and the controller are made
    in ``__aenter__``, so every start is a fresh inoculation. A port that is taken makes
    ``__aenter__`` raise :class:`OSError`, leaving nothing registered or running.
    """

    def __init__(self, options: BioreactorOptions, context: PluginContext) -> None:
        self.options = options
        self.name = context.id
        self._clock: ProcessClock | None = None
        self._task: asyncio.Task[None] | None = None
        self._controller: BioreactorController | None = None
        self._schedule: FaultSchedule[BioreactorFaultStep] | None = None

    @property
    def endpoint(self) -> str:
        """Where a driver connects (``opc.tcp://host:port``) while the controller serves;
        otherwise what this emulator is, for logs and error messages."""
        if self._controller is not None:
            return self._controller.endpoint
        return f"process bioreactor {self.name!r}"

    @property
    def port(self) -> int | None:
        """The controller's bound TCP port while it serves; otherwise the configured port."""
        if self._controller is not None:
            return self._controller.port
        return self.options.port

    @property
    def controller(self) -> BioreactorController:
        """The OPC UA controller (to inject faults); ``RuntimeError`` when there is none."""
        if self._controller is None:
            raise RuntimeError(f"{self.endpoint} serves no OPC UA controller")
        return self._controller

    @property
    def clock(self) -> ProcessClock:
        """The running process; ``RuntimeError`` before ``__aenter__`` or after ``__aexit__``."""
        if self._clock is None:
            raise RuntimeError(f"{self.endpoint} is not running")
        return self._clock

    async def __aenter__(self) -> Self:
        options = self.options
        model = FedBatchModel(options.params(), seed=options.seed)
        clock = ProcessClock(model, time_scale=options.time_scale)
        try:
            hub.register(self.name, clock)
        except ValueError as exc:
            # The runtime reports gateway errors as "emulator ... cannot start: ...".
            raise PluginError(f"{self.endpoint}: {exc}") from exc
        self._clock = clock
        try:
            if options.port is not None:
                controller = BioreactorController(
                    clock,
                    name=self.name,
                    host=options.host,
                    port=options.port,
                    update_s=options.update_s,
                    seed=options.seed,
                    setpoint_limits={str(k): v for k, v in options.setpoint_limits.items()},
                )
                await controller.start()
                self._controller = controller
            self._schedule = FaultSchedule(
                options.faults, self._inject, self._clear, f"bioreactor.{self.name}.faults"
            )
            self._schedule.start()
            if options.log_every_s > 0:
                self._task = asyncio.create_task(
                    self._log_states(), name=f"bioreactor.{self.name}.log"
                )
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _inject(self, step: BioreactorFaultStep) -> None:
        clock = self.clock
        if step.fault == "ph_probe_drift":
            assert step.rate_per_h is not None  # checked by the options
            clock.advance()  # the time up to now ran without it
            clock.model.set_ph_probe_drift(
                step.rate_per_h, 1.0 if step.max_offset is None else step.max_offset
            )
        elif step.fault == "growth_upset":
            clock.advance()
            clock.model.set_growth_factor(0.5 if step.factor is None else step.factor)
        else:
            self.controller.inject(Fault(step.fault))
            return
        log.info("bioreactor.fault_injected", process=self.name, fault=step.fault)

    def _clear(self, step: BioreactorFaultStep) -> None:
        clock = self.clock
        if step.fault == "ph_probe_drift":
            clock.advance()
            clock.model.recalibrate_ph_probe()
        elif step.fault == "growth_upset":
            clock.advance()
            clock.model.set_growth_factor(1.0)
        else:
            self.controller.clear(Fault(step.fault))
            return
        log.info("bioreactor.fault_cleared", process=self.name, fault=step.fault)

    async def __aexit__(self, *exc_info: object) -> None:
        schedule, self._schedule = self._schedule, None
        controller, self._controller = self._controller, None
        try:
            if schedule is not None:
                await schedule.stop()
            if controller is not None:
                await controller.stop()
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
        finally:
            # Only the entry this instance made: never another emulator's of the same name.
            if self._clock is not None:
                hub.unregister(self.name)
                self._clock = None

    async def _log_states(self) -> None:
        clock = self.clock
        while True:
            s = clock.snapshot()
            log.info(
                "bioreactor.state",
                process=self.name,
                time_h=round(s.time_h, 3),
                volume_L=round(s.volume_L, 4),
                vcd_e6_per_mL=round(s.vcd_e6_per_mL, 3),
                viability_pct=round(s.viability_pct, 1),
                glucose_g_L=round(s.glucose_g_L, 3),
                lactate_g_L=round(s.lactate_g_L, 3),
                glutamine_mM=round(s.glutamine_mM, 3),
                titer_g_L=round(s.titer_g_L, 3),
                temperature_C=round(s.temperature_C, 2),
                ph=round(s.ph, 3),
                ph_probe=round(s.ph_probe, 3),
                do_pct=round(s.do_pct, 1),
            )
            await asyncio.sleep(self.options.log_every_s)


@hookimpl
def pat_gateway_register_emulators(registry: Registry) -> None:
    registry.add_emulator(
        "bioreactor",
        BioreactorEmulator,
        BioreactorOptions,
        "Fed-batch CHO culture shared by the other emulators; with a port, its bioreactor"
        " controller on OPC UA (asyncua)",
    )
