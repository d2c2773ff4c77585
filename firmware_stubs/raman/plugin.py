"""Registers the ``raman`` emulator through the public hook, like any plugin.

The options choose the transport (a pseudo-terminal with an optional stable symlink, or TCP
for ``socket://`` URLs), the detector and the calibration, and can schedule faults, so a demo
or a standalone emulator shows the gateway's fault handling without writing code::

    patgw emulate raman --option serial=true --option link=/tmp/raman0
    patgw emulate raman --port 15030 --option 'faults=[{fault: nack, after_s: 30, for_s: 10}]'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import ConfigPath, PluginContext, Registry, hookimpl

from ..bioreactor import lookup, shared_process
from ..schedule import FaultSchedule, ScheduledEmulator
from .device import DEFAULT_SERIAL_NUMBER
from .faults import Fault
from .server import RamanEmulator
from .spectrum import DEFAULT_COMPOSITION, MAX_PIXELS, MIN_PIXELS, Composition

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"

__all__ = ["RamanFaultStep", "RamanOptions", "ScheduledRaman", "composition_source", "factory"]

log = structlog.get_logger(__name__)


class RamanFaultStep(BaseModel):
    """Inject ``fault`` ``after_s`` seconds after start; clear it ``for_s`` seconds later."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Literal["nack", "bad_checksum", "truncated", "garbage", "silence", "laser_decay"] = (
        Field(
            description="What to break; see the emulator's Fault enum. laser_decay (gradual):"
            " the Raman bands weaken by rate_per_h per process hour (per wall hour without a"
            " process), background and dark unchanged."
        )
    )
    after_s: float = Field(ge=0, description="Wall seconds after start.")
    for_s: float = Field(
        default=0,
        ge=0,
        description="How long; 0 = until the emulator stops; clearing laser_decay = a new laser.",
    )
    error: int | None = Field(
        default=None,
        ge=1,
        le=255,
        description="NACK error number for fault 'nack' (default 7, device not ready).",
    )
    rate_per_h: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="laser_decay only (required): fraction of band intensity lost per hour.",
    )
    max_loss: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="laser_decay only: the loss stops growing at this fraction (default 0.9).",
    )

    @model_validator(mode="after")
    def _parameters_fit_the_fault(self) -> Self:
        if self.error is not None and self.fault != "nack":
            raise ValueError("error applies only to fault 'nack'")
        if self.fault == "laser_decay":
            if self.rate_per_h is None:
                raise ValueError("laser_decay needs rate_per_h: fraction lost per hour")
        elif self.rate_per_h is not None or self.max_loss is not None:
            raise ValueError("rate_per_h and max_loss apply only to fault 'laser_decay'")
        return self


class RamanOptions(BaseModel):
    """Transport, detector and calibration of the emulated Raman spectrometer, and its faults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    serial: bool = Field(
        default=False,
        description="true = a pseudo-terminal (serial device); false = TCP for socket:// URLs.",
    )
    link: ConfigPath | None = Field(
        default=None,
        description="Symlink to the pseudo-terminal, created at start (only with serial);"
        " a relative path is relative to the config file's folder.",
    )
    host: str = Field(default="127.0.0.1", description="TCP listen address (loopback default).")
    port: int = Field(default=15030, ge=0, le=65535, description="TCP port; 0 = any.")
    pixels: int = Field(
        default=2048, ge=MIN_PIXELS, le=MAX_PIXELS, description="Detector pixels (789-936 nm)."
    )
    laser_nm: float = Field(
        default=785.0, ge=500.0, lt=789.0, description="Excitation wavelength in nm."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the spectrum noise (reproducible).")
    checksum: bool = Field(default=True, description="Replies carry an MD5 checksum.")
    serial_number: str = Field(
        default=DEFAULT_SERIAL_NUMBER,
        min_length=1,
        max_length=32,
        pattern=r"^[\x20-\x7e]+$",
        description="Serial number the device reports (printable ASCII).",
    )
    process: str | None = Field(
        default=None,
        description="Id of a 'bioreactor' emulator (listed before this one) whose broth the"
        " spectra show; none = a constant composition.",
    )
    faults: tuple[RamanFaultStep, ...] = Field(default=(), description="Scheduled faults.")

    @model_validator(mode="after")
    def _link_needs_serial(self) -> Self:
        if self.link is not None and not self.serial:
            raise ValueError("link names a symlink to the pseudo-terminal: set serial: true")
        return self


def composition_source(process: str | None) -> Callable[[], Composition]:
    """Where the emulated spectra get the broth's composition.

    ``None`` gives a constant default composition (a standalone emulator). A name gives the
    composition of the shared bioreactor process of that id, read afresh for every spectrum;
    :class:`ScheduledRaman` checks at start that the process is running.
    """
    if process is None:
        return _constant_composition

    def from_process() -> Composition:
        state = lookup(process).snapshot()
        return Composition(
            glucose_g_L=state.glucose_g_L,
            lactate_g_L=state.lactate_g_L,
            glutamine_mM=state.glutamine_mM,
            vcd_e6_per_mL=state.vcd_e6_per_mL,
            titer_g_L=state.titer_g_L,
        )

    return from_process


def _constant_composition() -> Composition:
    return DEFAULT_COMPOSITION


class ScheduledRaman(ScheduledEmulator[RamanEmulator, RamanFaultStep]):
    """The emulator, its fault schedule and (optionally) the shared process it looks into."""

    def __init__(
        self,
        emulator: RamanEmulator,
        faults: tuple[RamanFaultStep, ...],
        process: str | None = None,
    ) -> None:
        super().__init__(emulator, FaultSchedule(faults, self._inject, self._clear, "raman.faults"))
        self.process = process

    @property
    def endpoint(self) -> str:
        """What a driver opens: a device path or ``socket://host:port``."""
        return self.emulator.endpoint

    @property
    def port(self) -> int | None:
        """The bound TCP port (``None`` on a pseudo-terminal)."""
        return self.emulator.port

    def before_start(self) -> None:
        if self.process is not None:
            # Fail now, naming the process, not per spectrum.
            self.emulator.hours = shared_process(self.process).hours

    def _inject(self, step: RamanFaultStep) -> None:
        if step.rate_per_h is not None:
            self.emulator.inject(
                Fault.LASER_DECAY,
                rate_per_h=step.rate_per_h,
                max_loss=0.9 if step.max_loss is None else step.max_loss,
            )
        elif step.error is not None:
            self.emulator.inject(Fault(step.fault), error=step.error)
        else:
            self.emulator.inject(Fault(step.fault))

    def _clear(self, step: RamanFaultStep) -> None:
        self.emulator.clear(Fault(step.fault))


def factory(options: RamanOptions, context: PluginContext) -> ScheduledRaman:
    """Build the emulator ``options`` describe (not started: enter it to start)."""
    emulator = RamanEmulator(
        transport="pty" if options.serial else "tcp",
        pixels=options.pixels,
        laser_nm=options.laser_nm,
        composition=composition_source(options.process),
        seed=options.seed,
        checksum=options.checksum,
        serial_number=options.serial_number,
        host=options.host,
        port=options.port,
        link=options.link,
    )
    return ScheduledRaman(emulator, options.faults, options.process)


@hookimpl
def pat_gateway_register_emulators(registry: Registry) -> None:
    registry.add_emulator(
        "raman",
        factory,
        RamanOptions,
        "Raman spectrometer, Ocean Binary Protocol on a pseudo-terminal or TCP",
    )
