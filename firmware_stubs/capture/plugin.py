"""Registers the ``capture_skid`` emulator: a 3C-PCC Protein A capture skid on OPC UA.

It takes the harvest (cell-free permeate) of the ``bioreactor`` emulator named by ``process``
(list that one first), runs it through its surge tank and columns on the process's clock, serves
what a skid's controller shows over OPC UA (:mod:`~firmware_stubs.capture.server`) and, with a
``truth_file``, writes one JSON line per finished eluate fraction saying where its product came
from (harvest-time bins, media lots, deviation mass): the ground truth a genealogy is checked
against, never an input to one::

    emulators:
      - {id: reactor, type: bioreactor, options: {time_scale: 3600, port: 14840}}
      - id: capture
        type: capture_skid
        options:
          process: reactor
          port: 14850
          truth_file: ../data/capture-truth.jsonl
          faults: [{fault: tracer_step, after_s: 30, for_s: 20, delta_mS_cm: 5}]

Scheduled events run on wall seconds like every emulator's faults: ``tracer_step`` adds salt at
the tank inlet (``Harvest.Conductivity`` steps up by ``delta_mS_cm``; ``Feed.Conductivity`` shows
the tank's response), ``server_restart``, ``bad_values`` and ``frozen`` break the OPC UA server
as they do the bioreactor controller's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, Protocol, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import ConfigPath, PluginContext, Registry, hookimpl

from ..bioreactor import shared_process
from ..bioreactor.faults import Fault
from ..schedule import FaultSchedule
from .model import CaptureSkid, Fraction, Harvest, SkidParams, load_step_h

if TYPE_CHECKING:  # asyncua is imported only when the skid is served (start-up time)
    from .server import CaptureSkidServer

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"

__all__ = ["CaptureFaultStep", "CaptureSkidEmulator", "CaptureSkidOptions", "ProcessSource"]

log = structlog.get_logger(__name__)

_D = SkidParams()


class ProcessSource(Protocol):
    """What the skid needs of a process run (a :class:`ProcessClock` is one): its process hours
    now and its state now (read for the harvest fields, see :meth:`Harvest.of`)."""

    def hours(self) -> float: ...

    def snapshot(self) -> object: ...


class CaptureFaultStep(BaseModel):
    """Play ``fault`` ``after_s`` wall seconds after start, for ``for_s`` wall seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Literal["tracer_step", "server_restart", "bad_values", "frozen"] = Field(
        description="tracer_step = salt added at the surge-tank inlet (a step test of the tank's"
        " residence-time distribution); server_restart = the OPC UA server is down for for_s;"
        " bad_values = every value Bad; frozen = values stop updating."
    )
    after_s: float = Field(ge=0, description="Wall seconds after start.")
    for_s: float = Field(
        default=0, ge=0, description="How long, wall seconds; 0 = until the emulator stops."
    )
    delta_mS_cm: float | None = Field(
        default=None,
        gt=-100,
        lt=100,
        description="tracer_step only (required, not 0): the inlet conductivity's step, mS/cm.",
    )

    @model_validator(mode="after")
    def _parameters_fit_the_fault(self) -> Self:
        if self.fault == "tracer_step":
            if not self.delta_mS_cm:
                raise ValueError("tracer_step needs delta_mS_cm (mS/cm, not 0)")
        elif self.delta_mS_cm is not None:
            raise ValueError("delta_mS_cm applies only to tracer_step")
        if self.fault == "server_restart" and self.for_s <= 0:
            raise ValueError("server_restart needs for_s > 0: how long the server is down")
        return self


class CaptureSkidOptions(BaseModel):
    """The process it captures from, where it serves, its sizes and schedule, its truth file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    process: str = Field(
        min_length=1,
        description="Id of the 'bioreactor' emulator (listed before this one) whose harvest the"
        " skid takes; a fed-batch run has none (flow 0), so nothing moves.",
    )
    host: str = Field(default="127.0.0.1", description="OPC UA listen address (loopback).")
    port: int = Field(default=14850, ge=0, le=65535, description="OPC UA port; 0 = any free.")
    update_s: float = Field(
        default=0.2, ge=0.01, le=60, description="The server refreshes its values every so many s."
    )
    truth_file: ConfigPath | None = Field(
        default=None,
        description="JSON lines, one per finished eluate fraction, with where its product came"
        " from (validation only); emptied at start; relative to the config file's folder.",
    )
    tank_mL: float = Field(
        default=_D.tank_mL,
        gt=0,
        le=100_000,
        description="Mixed volume of the surge tank, mL (held by its level control).",
    )
    tanks: int = Field(
        default=_D.tanks,
        ge=1,
        le=50,
        description="Well-mixed compartments in series that model the tank's mixing.",
    )
    dead_volume_mL: float = Field(
        default=_D.dead_volume_mL,
        ge=0,
        le=100_000,
        description="Plug-flow volume before the tank (inlet line), mL.",
    )
    column_mL: float = Field(
        default=_D.column_mL,
        gt=0,
        le=100_000,
        description="Resin volume of each column, mL.",
    )
    dbc_g_L: float = Field(
        default=_D.dbc_g_L,
        gt=0,
        le=200,
        description="Dynamic binding capacity of fresh resin (the loaded mass at 50 %"
        " breakthrough), g/L.",
    )
    breakthrough_width: float = Field(
        default=_D.breakthrough_width,
        gt=0,
        le=1,
        description="Width of the logistic breakthrough curve, share of the capacity.",
    )
    switch_breakthrough: float = Field(
        default=_D.switch_breakthrough,
        gt=0,
        lt=1,
        description="The primary switches out when its ΔUV breakthrough reaches this share"
        " (0-1) of the feed's product UV.",
    )
    capacity_fade: float = Field(
        default=_D.capacity_fade,
        ge=0,
        le=0.1,
        description="Capacity lost per completed cycle, share (0.001 = 0.1 %/cycle).",
    )
    wash_h: float = Field(
        default=_D.wash_h,
        gt=0,
        le=24,
        description="Wash after loading, process hours.",
    )
    elute_h: float = Field(
        default=_D.elute_h,
        gt=0,
        le=24,
        description="Elution (one eluate fraction), process hours.",
    )
    regenerate_h: float = Field(
        default=_D.regenerate_h,
        gt=0,
        le=24,
        description="Regeneration, process hours.",
    )
    equilibrate_h: float = Field(
        default=_D.equilibrate_h,
        gt=0,
        le=24,
        description="Equilibration, process hours.",
    )
    buffer_flow_mL_min: float = Field(
        default=_D.buffer_flow_mL_min,
        gt=0,
        le=1000,
        description="Column flow in wash, elution, regeneration, equilibration, mL/min.",
    )
    resistance_bar_per_mL_min: float = Field(
        default=_D.resistance_bar_per_mL_min,
        gt=0,
        le=100,
        description="Pressure drop of a fresh column per mL/min, bar.",
    )
    fouling: float = Field(
        default=_D.fouling,
        ge=0,
        le=1,
        description="Column resistance growth per completed cycle, share.",
    )
    harvest_conductivity_mS_cm: float = Field(
        default=_D.harvest_conductivity_mS_cm,
        gt=0,
        le=200,
        description="Conductivity of the harvest, mS/cm.",
    )
    step_h: float = Field(
        default=_D.step_h,
        ge=0.001,
        le=0.1,
        description="Fixed step of the skid model, process hours.",
    )
    design_harvest_L_per_d: float = Field(
        default=2.5,
        gt=0,
        le=100_000,
        description="Harvest flow the skid is sized for, L/d (process time): with"
        " design_titer_g_L, the load step the schedule must fit in.",
    )
    design_titer_g_L: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="Highest harvest titer the skid is sized for, g/L (the shortest load step):"
        " wash + elute + regenerate + equilibrate must fit in it, or the skid would wait.",
    )
    faults: tuple[CaptureFaultStep, ...] = Field(
        default=(), description="Scheduled tracer steps and OPC UA faults."
    )

    @model_validator(mode="after")
    def _schedule_fits(self) -> Self:
        params = self.params()
        step = load_step_h(params, self.design_harvest_L_per_d, self.design_titer_g_L)
        if params.recovery_h > step:
            raise ValueError(
                f"the schedule cannot be met: wash + elute + regenerate + equilibrate ="
                f" {params.recovery_h:g} process h, longer than the {step:.2f} h a column is"
                f" primary at the design harvest ({self.design_harvest_L_per_d:g} L/d at"
                f" {self.design_titer_g_L:g} g/L); shorten the phases or use larger columns"
            )
        return self

    def params(self) -> SkidParams:
        """The model parameters: its defaults with these options."""
        names = {f.name for f in dataclasses.fields(SkidParams)} & set(type(self).model_fields)
        return dataclasses.replace(_D, **{n: getattr(self, n) for n in names})


class CaptureSkidEmulator:
    """The skid, its OPC UA server, its truth file and its scheduled events, started and
    stopped together. No I/O in the constructor; ``source`` (tests) replaces the shared process
    ``options.process`` names."""

    def __init__(
        self,
        options: CaptureSkidOptions,
        context: PluginContext,
        *,
        source: ProcessSource | None = None,
    ) -> None:
        self.options = options
        self.name = context.id
        self._given_source = source
        self._source: ProcessSource | None = None
        self._skid: CaptureSkid | None = None
        self._truth: IO[str] | None = None
        self._server: CaptureSkidServer | None = None
        self._schedule: FaultSchedule[CaptureFaultStep] | None = None
        self.truth_lost = 0
        """Fractions whose truth line could not be written (each logged as an error)."""

    @property
    def endpoint(self) -> str:
        if self._server is not None:
            return self._server.endpoint
        return f"capture skid {self.name!r}"

    @property
    def port(self) -> int:
        return self._server.port if self._server is not None else self.options.port

    @property
    def is_running(self) -> bool:
        """True between start and stop."""
        return self._server is not None

    @property
    def server(self) -> CaptureSkidServer:
        if self._server is None:
            raise RuntimeError(f"{self.endpoint} is not running")
        return self._server

    @property
    def skid(self) -> CaptureSkid:
        """The model, brought up to the process's time now."""
        if self._skid is None:
            raise RuntimeError(f"{self.endpoint} is not running")
        self._catch_up()
        return self._skid

    async def __aenter__(self) -> Self:
        options = self.options
        source: ProcessSource = (
            self._given_source
            if self._given_source is not None
            else shared_process(options.process)  # looked up afresh: a start is a new run
        )
        self._source = source
        try:
            if options.truth_file is not None:
                self._truth = _open_truth(Path(options.truth_file))
            self._skid = CaptureSkid(options.params(), source.hours(), self._record)
            from .server import CaptureSkidServer

            self._server = CaptureSkidServer(
                self._read,
                name=self.name,
                host=options.host,
                port=options.port,
                update_s=options.update_s,
            )
            await self._server.start()
            self._schedule = FaultSchedule(
                options.faults, self._inject, self._clear, f"capture.{self.name}.faults"
            )
            self._schedule.start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        schedule, self._schedule = self._schedule, None
        server, self._server = self._server, None
        truth, self._truth = self._truth, None
        try:
            if schedule is not None:
                await schedule.stop()
            if server is not None:
                await server.stop()
        finally:
            self._skid = self._source = None
            if truth is not None:
                try:
                    truth.close()
                except OSError as exc:  # what a failed write left in the buffer: counted there
                    log.error("capture.truth_close_failed", skid=self.name, error=str(exc))

    def _catch_up(self) -> None:
        if self._skid is None or self._source is None:
            return
        hours = self._source.hours()
        self._skid.advance_to(hours, Harvest.of(self._source.snapshot()))

    def _read(self) -> dict[str, float]:
        self._catch_up()
        assert self._skid is not None  # the server runs only while the skid exists
        return self._skid.signals()

    def _record(self, fraction: Fraction) -> None:
        record = fraction.truth()
        if self._truth is not None:
            try:
                self._truth.write(json.dumps(record, separators=(",", ":")) + "\n")
                self._truth.flush()
            except OSError as exc:
                # The truth is for validation: a full disk must not stop the skid mid-step.
                self.truth_lost += 1
                log.error(
                    "capture.truth_write_failed",
                    skid=self.name,
                    fraction=fraction.number,
                    lost=self.truth_lost,
                    error=str(exc),
                )
        log.info(
            "capture.fraction",
            skid=self.name,
            fraction=fraction.number,
            column=fraction.column,
            end_h=round(fraction.end_h, 3),
        )

    def _inject(self, step: CaptureFaultStep) -> None:
        if step.fault == "tracer_step":
            assert step.delta_mS_cm is not None  # checked by the options
            self._catch_up()  # the time up to now ran without it
            if self._skid is not None:
                self._skid.tracer_mS_cm = step.delta_mS_cm
            log.info("capture.tracer_step", skid=self.name, delta_mS_cm=step.delta_mS_cm)
        else:
            self.server.inject(Fault(step.fault))

    def _clear(self, step: CaptureFaultStep) -> None:
        if step.fault == "tracer_step":
            self._catch_up()
            if self._skid is not None:
                self._skid.tracer_mS_cm = 0.0
            log.info("capture.tracer_end", skid=self.name)
        else:
            self.server.clear(Fault(step.fault))


def _open_truth(path: Path) -> IO[str]:
    """A fresh truth file (a start is a new run): a few bytes, once, at start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8")


@hookimpl
def pat_gateway_register_emulators(registry: Registry) -> None:
    registry.add_emulator(
        "capture_skid",
        CaptureSkidEmulator,
        CaptureSkidOptions,
        "3-column PCC Protein A capture skid with a surge tank, taking a bioreactor's harvest;"
        " OPC UA (asyncua)",
    )
