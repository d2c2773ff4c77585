"""Registers the ``capacitance_probe`` emulator through the public hook, like any plugin.

Linked to a ``bioreactor`` emulator (``process``), the probe measures that run's viable cells;
alone, a constant culture. The options can schedule faults::

    patgw emulate capacitance_probe --port 15022
    patgw emulate capacitance_probe --option 'faults=[{fault: bubbles, after_s: 20, for_s: 10}]'
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import PluginContext, Registry, hookimpl

from ..bioreactor import ProcessClock, shared_process
from ..modbus_device import ScheduledModbusDevice
from .faults import Fault
from .model import DIAMETER_RANGE_UM, Culture, ProbeModel, ProbeParams
from .server import CapacitanceProbeEmulator, constant_culture

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"

__all__ = ["ProbeFaultStep", "ProbeOptions", "ScheduledProbe"]

_DEFAULTS = ProbeParams()


class ProbeFaultStep(BaseModel):
    """Inject ``fault`` ``after_s`` wall seconds after start; clear it ``for_s`` later.

    The gradual ``fouling`` grows with the process's hours when the probe sits in a process
    (``process``), with wall hours otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    fault: Literal[
        "drop_connections", "exception_responses", "stall", "bubbles", "fouling", "probe_error"
    ] = Field(
        description="What to break: drop_connections, exception_responses, stall (the Modbus"
        " link); bubbles = spikes (conductivity dips, permittivity jumps, flagged unstable when"
        " the probe notices); fouling (gradual) = a permittivity offset growing at rate_per_h;"
        " probe_error = readings 0 with status bit 0x10."
    )
    after_s: float = Field(ge=0, description="Wall seconds after start.")
    for_s: float = Field(
        default=0, ge=0, description="0 = until the emulator stops; clearing fouling = cleaned."
    )
    probability: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="bubbles only: share of the measurements with a bubble (default 0.3).",
    )
    rate_per_h: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="fouling only (required): pF/cm added per process hour (per wall hour"
        " without a process).",
    )
    max_offset: float | None = Field(
        default=None,
        gt=0,
        le=400,
        description="fouling only: the offset stops growing at this many pF/cm (default 20).",
    )

    @model_validator(mode="after")
    def _parameters_fit_the_fault(self) -> Self:
        if self.probability is not None and self.fault != "bubbles":
            raise ValueError("probability applies only to fault 'bubbles'")
        if self.fault == "fouling":
            if self.rate_per_h is None:
                raise ValueError("fouling needs rate_per_h: pF/cm per hour")
        elif self.rate_per_h is not None or self.max_offset is not None:
            raise ValueError("rate_per_h and max_offset apply only to fault 'fouling'")
        return self


class ProbeOptions(BaseModel):
    """Where the emulated probe listens, what it measures, its calibration and its faults."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    host: str = Field(default="127.0.0.1", description="Listen address (loopback by default).")
    port: int = Field(default=15022, ge=0, le=65535, description="Modbus TCP port; 0 = any.")
    unit_id: int = Field(default=1, ge=0, le=247)
    framing: Literal["tcp", "rtu"] = Field(
        default="tcp", description="tcp = Modbus TCP; rtu = RTU frames over TCP (socket:// URLs)."
    )
    process: str | None = Field(
        default=None,
        description="Id of a 'bioreactor' emulator (listed before this one) whose viable cells"
        " the probe measures; none = a constant culture (vcd_e6_per_mL at 37 °C).",
    )
    vcd_e6_per_mL: float | None = Field(
        default=None,
        ge=0,
        le=200,
        description="Without a process only: the constant culture's viable cell density,"
        " 1e6 cells/mL (default 5).",
    )
    interval_s: float = Field(
        default=0.5, ge=0.05, le=60, description="Wall seconds between measurements."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the measurement noise.")
    cell_factor: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="1e6 cells/mL per pF/cm at power-up (register cell_factor, writable);"
        " none = the factor of a calibration at inoculation (starting cell diameter).",
    )
    frequency_khz: float = Field(
        default=_DEFAULTS.frequency_khz, gt=0, le=20000, description="Measuring frequency, kHz."
    )
    background_khz: float = Field(
        default=_DEFAULTS.background_khz,
        gt=0,
        le=50000,
        description="Background frequency, kHz (dual-frequency mode; above frequency_khz).",
    )
    diameter_um: float = Field(
        default=_DEFAULTS.diameter_um,
        ge=DIAMETER_RANGE_UM[0],
        le=DIAMETER_RANGE_UM[1],
        description="Mean viable cell diameter at inoculation, µm.",
    )
    diameter_drift_um_per_day: float = Field(
        default=_DEFAULTS.diameter_drift_um_per_d,
        ge=-1,
        le=1,
        description="Drift of the mean cell diameter, µm per process day (per wall day without"
        " a process): the bias of the probe's VCD against the true VCD grows with it.",
    )
    faults: tuple[ProbeFaultStep, ...] = Field(default=(), description="Scheduled faults.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.frequency_khz >= self.background_khz:
            raise ValueError(
                f"frequency_khz {self.frequency_khz:g} must be below background_khz"
                f" {self.background_khz:g}"
            )
        if self.process is not None and self.vcd_e6_per_mL is not None:
            raise ValueError(
                "vcd_e6_per_mL is the constant culture of a probe without a process: give"
                " process or vcd_e6_per_mL, not both"
            )
        return self

    def params(self) -> ProbeParams:
        """The probe's physics from these options."""
        return ProbeParams(
            frequency_khz=self.frequency_khz,
            background_khz=self.background_khz,
            diameter_um=self.diameter_um,
            diameter_drift_um_per_d=self.diameter_drift_um_per_day,
        )


def _culture_of(clock: ProcessClock) -> Culture:
    state = clock.snapshot()
    return Culture(
        vcd_e6_per_mL=state.vcd_e6_per_mL,
        temperature_C=state.temperature_C,
        base_mL_per_L=state.base_added_mL / state.volume_L if state.volume_L > 0 else 0.0,
    )


class ScheduledProbe(ScheduledModbusDevice[CapacitanceProbeEmulator, ProbeFaultStep]):
    """The emulator, its fault schedule and its link to a shared bioreactor process."""

    def before_start(self) -> None:
        if self.process is not None:
            clock = shared_process(self.process)
            self.emulator.culture = lambda: _culture_of(clock)
            self.emulator.hours = clock.hours
            self.emulator.reading = None  # measured afresh in the process at start

    def _inject(self, step: ProbeFaultStep) -> None:
        self.emulator.inject(
            Fault(step.fault),
            probability=step.probability,
            rate_per_h=step.rate_per_h,
            max_offset=step.max_offset,
        )

    def _clear(self, step: ProbeFaultStep) -> None:
        self.emulator.clear(Fault(step.fault))


def _build(options: ProbeOptions, context: PluginContext) -> ScheduledProbe:
    model = ProbeModel(options.params(), cell_factor=options.cell_factor, seed=options.seed)
    vcd = 5.0 if options.vcd_e6_per_mL is None else options.vcd_e6_per_mL
    emulator = CapacitanceProbeEmulator(
        options.host,
        options.port,
        model=model,
        unit_id=options.unit_id,
        interval_s=options.interval_s,
        framing=options.framing,
        culture=lambda: constant_culture(vcd),
    )
    return ScheduledProbe(emulator, options.faults, options.process)


@hookimpl
def pat_gateway_register_emulators(registry: Registry) -> None:
    registry.add_emulator(
        "capacitance_probe",
        _build,
        ProbeOptions,
        "In-line capacitance (viable biomass) probe on Modbus TCP (pymodbus)",
    )
