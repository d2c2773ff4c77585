"""Registers the ``bioreactor`` emulator through the public hook, like any plugin.

The emulator is the shared process the other emulators act on: it starts a
:class:`~firmware_stubs.bioreactor.model.FedBatchModel` on a
:class:`~firmware_stubs.bioreactor.clock.ProcessClock` and registers it in the
:mod:`~firmware_stubs.bioreactor.hub` under its emulator id, so list it before the emulators that
use it. It has no network endpoint; ``patgw emulate bioreactor`` runs it alone and logs a state
line every ``log_every_s`` seconds, which makes a quick look at the process dynamics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Self

import structlog
from pydantic import BaseModel, ConfigDict, Field

from gateway import PluginContext, PluginError, Registry, hookimpl

from . import hub
from .clock import ProcessClock
from .model import FedBatchModel, ProcessParams

__all__ = ["BioreactorEmulator", "BioreactorOptions"]

log = structlog.get_logger(__name__)

_DEFAULTS = ProcessParams()


class BioreactorOptions(BaseModel):
    """How fast the emulated fed-batch runs, its noise seed and a few initial conditions."""

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
        description="Unused: the process model has no network endpoint (accepted because"
        " 'patgw emulate' passes it).",
    )
    port: int | None = Field(
        default=None,
        description="Unused: the process model has no network endpoint (accepted because"
        " 'patgw emulate --port' passes it).",
    )

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
    """One running fed-batch process, findable in the hub as ``context.id`` while entered.

    No I/O in the constructor: the model, its clock and the hub entry are made in
    ``__aenter__``, so every start is a fresh inoculation.
    """

    def __init__(self, options: BioreactorOptions, context: PluginContext) -> None:
        self.options = options
        self.name = context.id
        self._clock: ProcessClock | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        """What this emulator is, for logs and error messages."""
        return f"process bioreactor {self.name!r}"

    @property
    def clock(self) -> ProcessClock:
        """The running process; ``RuntimeError`` before ``__aenter__`` or after ``__aexit__``."""
        if self._clock is None:
            raise RuntimeError(f"{self.endpoint} is not running")
        return self._clock

    async def __aenter__(self) -> Self:
        model = FedBatchModel(self.options.params(), seed=self.options.seed)
        clock = ProcessClock(model, time_scale=self.options.time_scale)
        try:
            hub.register(self.name, clock)
        except ValueError as exc:
            # The runtime reports gateway errors as "emulator ... cannot start: ...".
            raise PluginError(f"{self.endpoint}: {exc}") from exc
        self._clock = clock
        if self.options.log_every_s > 0:
            self._task = asyncio.create_task(self._log_states(), name=f"bioreactor.{self.name}.log")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
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
                do_pct=round(s.do_pct, 1),
            )
            await asyncio.sleep(self.options.log_every_s)


@hookimpl
def pat_gateway_register_emulators(registry: Registry) -> None:
    registry.add_emulator(
        "bioreactor",
        BioreactorEmulator,
        BioreactorOptions,
        "Fed-batch CHO culture shared by the other emulators (no network endpoint)",
    )
