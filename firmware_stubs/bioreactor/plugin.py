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

``mode: perfusion`` makes the run a perfusion culture (decision 0024): perfusion and bleed rates
(initial values of the controller's ``Perfusion.Rate.SP`` and ``Bleed.Rate.SP``), the perfusion
medium, and the process events ``filter_fouling`` and ``media_lot_change``::

    patgw emulate bioreactor --port 4840 --option mode=perfusion \
        --option perfusion_L_per_d=2.6 --option bleed_L_per_d=0.3
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from typing import TYPE_CHECKING, Literal, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import PluginContext, PluginError, Registry, hookimpl

from ..schedule import FaultSchedule
from . import hub
from .clock import ProcessClock
from .faults import Fault
from .model import (
    FedBatchModel,
    PerfusionParams,
    ProcessParams,
    perfusion_process_params,
    steady_state_problem,
)

if TYPE_CHECKING:  # asyncua is imported only when a controller is served (start-up time)
    from .controller import BioreactorController

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"

__all__ = [
    "CONTROLLER_FAULTS",
    "PERFUSION_FAULTS",
    "BioreactorEmulator",
    "BioreactorFaultStep",
    "BioreactorOptions",
]

log = structlog.get_logger(__name__)

_DEFAULTS = ProcessParams()
_PERFUSION = PerfusionParams()


#: Faults of the OPC UA controller (they need a port); the others act on the process.
CONTROLLER_FAULTS = frozenset({"server_restart", "bad_values", "frozen"})
#: Process events of a perfusion run only (a fed-batch has no retention filter, no medium flow).
PERFUSION_FAULTS = frozenset({"filter_fouling", "media_lot_change"})
#: The options of mode perfusion only.
_PERFUSION_OPTIONS = (
    "perfusion_L_per_d",
    "bleed_L_per_d",
    "medium_glucose_g_L",
    "medium_glutamine_mM",
    "qp_decline_per_d",
)


class BioreactorFaultStep(BaseModel):
    """Inject ``fault`` ``after_s`` wall seconds after start; clear it ``for_s`` wall seconds
    later. A gradual fault (``ph_probe_drift``, ``filter_fouling``) then grows with the process
    clock."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Literal[
        "server_restart",
        "bad_values",
        "frozen",
        "ph_probe_drift",
        "growth_upset",
        "filter_fouling",
        "temperature_excursion",
        "media_lot_change",
    ] = Field(
        description="What to break: server_restart = the OPC UA server is down for for_s"
        " (sessions die), then starts again on the same port; bad_values = every value Bad;"
        " frozen = values stop updating; ph_probe_drift = the pH probe (pH.PV, which the pH"
        " loop controls on) drifts from the true pH at rate_per_h per process hour;"
        " growth_upset = the specific growth rate drops to factor times its value;"
        " filter_fouling (perfusion) = the retention filter loses rate_per_h of its"
        " permeability per process hour up to max_loss (TMP rises, product sieving falls;"
        " clearing it = a new filter); temperature_excursion = a process deviation: the"
        " culture temperature (Temperature.PV) is delta_C off for for_s; media_lot_change"
        " (perfusion) = the medium flowing in is from the next lot from after_s on (an event:"
        " no for_s)."
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
        description="ph_probe_drift (required, not 0): pH units per process hour, signed"
        " (> 0: the probe reads high, so the loop drives the true pH down); filter_fouling"
        " (required, > 0): fraction of the filter's permeability lost per process hour.",
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
    max_loss: float | None = Field(
        default=None,
        gt=0,
        le=0.95,
        description="filter_fouling only: the fouling stops growing at this fraction of the"
        " permeability lost (default 0.8: TMP five times the clean filter's, sieving a fifth).",
    )
    delta_C: float | None = Field(
        default=None,
        ge=-20,
        le=20,
        description="temperature_excursion only: how far the culture temperature moves, °C,"
        " signed, not 0 (default +2).",
    )

    @model_validator(mode="after")
    def _parameters_fit_the_fault(self) -> Self:
        if self.fault == "server_restart" and self.for_s <= 0:
            raise ValueError("server_restart needs for_s > 0: how long the server is down")
        if self.fault == "temperature_excursion" and self.for_s <= 0:
            raise ValueError("temperature_excursion needs for_s > 0: how long it lasts")
        if self.fault == "media_lot_change" and self.for_s != 0:
            raise ValueError("media_lot_change is an event: no for_s (the new lot stays)")
        if self.fault == "ph_probe_drift":
            if self.rate_per_h is None or self.rate_per_h == 0:
                raise ValueError("ph_probe_drift needs rate_per_h (pH per process hour, not 0)")
        elif self.fault == "filter_fouling":
            if self.rate_per_h is None or self.rate_per_h <= 0:
                raise ValueError("filter_fouling needs rate_per_h (> 0, per process hour)")
        elif self.rate_per_h is not None:
            raise ValueError(
                "rate_per_h applies only to fault 'ph_probe_drift' and 'filter_fouling'"
            )
        if self.max_offset is not None and self.fault != "ph_probe_drift":
            raise ValueError("max_offset applies only to fault 'ph_probe_drift'")
        if self.factor is not None and self.fault != "growth_upset":
            raise ValueError("factor applies only to fault 'growth_upset'")
        if self.max_loss is not None and self.fault != "filter_fouling":
            raise ValueError("max_loss applies only to fault 'filter_fouling'")
        if self.delta_C is not None:
            if self.fault != "temperature_excursion":
                raise ValueError("delta_C applies only to fault 'temperature_excursion'")
            if self.delta_C == 0:
                raise ValueError("temperature_excursion needs delta_C not 0")
        return self


class BioreactorOptions(BaseModel):
    """How fast the emulated culture runs, its noise seed, its mode (fed-batch or perfusion)
    and a few initial conditions; and, with a port, the OPC UA controller serving it and its
    scheduled faults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["fed_batch", "perfusion"] = Field(
        default="fed_batch",
        description="fed_batch (the default: fed by the feed pump, volume grows) or perfusion"
        " (medium in, bleed and cell-free harvest out at constant volume; decision 0024).",
    )
    perfusion_L_per_d: float | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="perfusion only: fresh medium in at start, L per process day (the initial"
        " Perfusion.Rate.SP); default 1.3 vessel volumes a day.",
    )
    bleed_L_per_d: float | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="perfusion only: culture bled at start, L per process day (the initial"
        " Bleed.Rate.SP); default 0.15 vessel volumes a day. Must be below perfusion_L_per_d"
        " and below what the cells can grow back (or both 0: a batch start).",
    )
    medium_glucose_g_L: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description=f"perfusion only: glucose in the perfusion medium, g/L (default"
        f" {_PERFUSION.medium_glucose_g_L:g}).",
    )
    medium_glutamine_mM: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description=f"perfusion only: glutamine in the perfusion medium, mM (default"
        f" {_PERFUSION.medium_glutamine_mM:g}).",
    )
    qp_decline_per_d: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=f"perfusion only: specific productivity lost per process day, as"
        f" exp(-rate * days) (default {_PERFUSION.qp_decline_per_d:g}).",
    )

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
        description="Faults scheduled on the process (ph_probe_drift, growth_upset,"
        " temperature_excursion; in perfusion also filter_fouling, media_lot_change) or on the"
        " OPC UA controller (server_restart, bad_values, frozen: these need a port).",
    )
    setpoint_limits: dict[
        Literal["Temperature", "pH", "DissolvedOxygen", "Agitation", "Perfusion", "Bleed"],
        tuple[float, float],
    ] = Field(
        default_factory=dict,
        description="Operating limits [low, high] of a loop's SP, e.g. {pH: [6.8, 7.4]}: the"
        " controller accepts a setpoint written within its EURange but outside these limits"
        " clamped to them (it reads back the limit), as a DCU's SP limits do (needs a port)."
        " Perfusion and Bleed (L/d: Perfusion.Rate.SP, Bleed.Rate.SP) in mode perfusion only.",
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

    @model_validator(mode="after")
    def _perfusion_can_settle(self) -> Self:
        perfusion = self.perfusion()
        if perfusion is None:
            given = [name for name in _PERFUSION_OPTIONS if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: options of mode perfusion only")
            for step in self.faults:
                if step.fault in PERFUSION_FAULTS:
                    raise ValueError(f"fault {step.fault} needs mode perfusion")
            for loop in ("Perfusion", "Bleed"):
                if loop in self.setpoint_limits:
                    raise ValueError(f"setpoint_limits.{loop}: needs mode perfusion")
            return self
        problem = steady_state_problem(self.params(), perfusion)
        if problem is not None:
            raise ValueError(f"no steady state: {problem}")
        return self

    def params(self) -> ProcessParams:
        """The process parameters: the defaults (for perfusion: with the gassing sized for
        perfusion densities) with these initial conditions."""
        base = perfusion_process_params() if self.mode == "perfusion" else _DEFAULTS
        return dataclasses.replace(
            base,
            volume_L=self.volume_L,
            vcd_e6_per_mL=self.vcd_e6_per_mL,
            glucose_g_L=self.glucose_g_L,
            feed_glucose_g_L=self.feed_glucose_g_L,
        )

    def perfusion(self) -> PerfusionParams | None:
        """The perfusion parameters in mode perfusion (defaults for what is not set; the rates
        scaled to the volume), ``None`` for a fed-batch."""
        if self.mode != "perfusion":
            return None
        d = _PERFUSION
        # The defaults' rates are for their 2 L vessel: the same vessel volumes a day here.
        per_litre = self.volume_L / _DEFAULTS.volume_L
        return dataclasses.replace(
            d,
            perfusion_L_per_d=_given(self.perfusion_L_per_d, d.perfusion_L_per_d * per_litre),
            bleed_L_per_d=_given(self.bleed_L_per_d, d.bleed_L_per_d * per_litre),
            medium_glucose_g_L=_given(self.medium_glucose_g_L, d.medium_glucose_g_L),
            medium_glutamine_mM=_given(self.medium_glutamine_mM, d.medium_glutamine_mM),
            qp_decline_per_d=_given(self.qp_decline_per_d, d.qp_decline_per_d),
        )


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


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

    def process_time_h(self) -> float:
        """Process hours since inoculation now (the batch age), for the gateway's live view;
        ``RuntimeError`` when not running."""
        return self.clock.hours()

    async def __aenter__(self) -> Self:
        options = self.options
        model = FedBatchModel(options.params(), seed=options.seed, perfusion=options.perfusion())
        clock = ProcessClock(model, time_scale=options.time_scale)
        try:
            hub.register(self.name, clock)
        except ValueError as exc:
            # The runtime reports gateway errors as "emulator ... cannot start: ...".
            raise PluginError(f"{self.endpoint}: {exc}") from exc
        self._clock = clock
        try:
            if options.port is not None:
                from .controller import BioreactorController

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
        elif step.fault == "filter_fouling":
            assert step.rate_per_h is not None  # checked by the options
            clock.advance()
            clock.model.set_filter_fouling(
                step.rate_per_h, 0.8 if step.max_loss is None else step.max_loss
            )
        elif step.fault == "temperature_excursion":
            clock.advance()
            clock.model.start_temperature_excursion(2.0 if step.delta_C is None else step.delta_C)
        elif step.fault == "media_lot_change":
            clock.advance()
            lot = clock.model.change_media_lot()
            log.info("bioreactor.media_lot_changed", process=self.name, media_lot=lot)
            return
        else:
            self.controller.inject(Fault(step.fault))
            return
        log.info(
            "bioreactor.fault_injected",
            process=self.name,
            fault=step.fault,
            process_h=round(clock.model.state.time_h, 4),
        )

    def _clear(self, step: BioreactorFaultStep) -> None:
        clock = self.clock
        if step.fault == "ph_probe_drift":
            clock.advance()
            clock.model.recalibrate_ph_probe()
        elif step.fault == "growth_upset":
            clock.advance()
            clock.model.set_growth_factor(1.0)
        elif step.fault == "filter_fouling":
            clock.advance()
            clock.model.replace_filter()
        elif step.fault == "temperature_excursion":
            clock.advance()
            clock.model.end_temperature_excursion()
        elif step.fault == "media_lot_change":
            return  # an event: never cleared (for_s is 0)
        else:
            self.controller.clear(Fault(step.fault))
            return
        log.info(
            "bioreactor.fault_cleared",
            process=self.name,
            fault=step.fault,
            process_h=round(clock.model.state.time_h, 4),
        )

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
        perfusing = clock.model.perfusion is not None
        while True:
            s = clock.snapshot()
            extra = (
                {
                    "perfusion_L_per_d": round(s.perfusion_L_per_d, 4),
                    "bleed_L_per_d": round(s.bleed_L_per_d, 4),
                    "harvest_L_per_d": round(s.harvest_L_per_d, 4),
                    "harvest_titer_g_L": round(s.harvest_titer_g_L, 4),
                    "hcp_g_L": round(s.hcp_g_L, 4),
                    "tmp_mbar": round(s.tmp_mbar, 1),
                    "media_lot": s.media_lot,
                }
                if perfusing
                else {}
            )
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
                **extra,
            )
            await asyncio.sleep(self.options.log_every_s)


@hookimpl
def pat_gateway_register_emulators(registry: Registry) -> None:
    registry.add_emulator(
        "bioreactor",
        BioreactorEmulator,
        BioreactorOptions,
        "Fed-batch or perfusion CHO culture shared by the other emulators; with a port, its"
        " bioreactor controller on OPC UA (asyncua)",
    )
