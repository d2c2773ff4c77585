"""Fault schedules for emulators: "break this after 30 s, for 10 s", played by one named task.

Each emulator's options list its own steps (what can break differs per instrument); any step
with ``after_s`` and ``for_s`` (0 = until the emulator stops) can be played here.

Gradual faults (tubing wear, laser decay, a drifting probe) start and stop on the same wall-clock
schedule, but their size grows with *hours* of the emulator's time base: the shared process's
clock when the emulator is linked to one (so a time-scaled demo wears its tubing in process
hours), wall hours otherwise. :class:`Ramp` is that growth; :func:`wall_hours` the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, Self, TypeVar

__all__ = ["FaultSchedule", "Ramp", "ScheduledEmulator", "ScheduledStep", "wall_hours"]


def wall_hours() -> float:
    """Monotonic wall-clock hours: the time base of an emulator linked to no process."""
    return time.monotonic() / 3600.0


@dataclass(frozen=True, slots=True)
class Ramp:
    """The size of a gradual fault: 0 at ``onset_h``, growing by ``rate_per_h`` per hour of
    its time base, capped at ``limit`` (e.g. the fraction of delivery a worn tube loses)."""

    rate_per_h: float
    limit: float
    onset_h: float

    def __post_init__(self) -> None:
        for name in ("rate_per_h", "limit", "onset_h"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, not {value!r}")
        if not (self.rate_per_h > 0.0 and self.limit > 0.0):
            raise ValueError("rate_per_h and limit must be > 0")

    def at(self, hours: float) -> float:
        """The fault's size at ``hours`` of its time base (0 before the onset)."""
        return min(self.limit, self.rate_per_h * max(0.0, hours - self.onset_h))

    def mean(self, from_h: float, to_h: float) -> float:
        """The mean size over ``from_h``..``to_h`` (exact: the ramp is piecewise linear)."""
        if to_h <= from_h:
            return self.at(to_h)
        # Integral of min(limit, rate * max(0, t - onset)) in closed form.
        return (self._integral(to_h) - self._integral(from_h)) / (to_h - from_h)

    def _integral(self, hours: float) -> float:
        t = hours - self.onset_h
        if t <= 0.0:
            return 0.0
        full = self.limit / self.rate_per_h  # hours until the cap is reached
        if t <= full:
            return 0.5 * self.rate_per_h * t * t
        return 0.5 * self.limit * full + self.limit * (t - full)


class ScheduledStep(Protocol):
    @property
    def after_s(self) -> float: ...

    @property
    def for_s(self) -> float: ...


StepT = TypeVar("StepT", bound=ScheduledStep)


class FaultSchedule(Generic[StepT]):
    """Plays ``steps`` from :meth:`start`: ``inject(step)`` at ``after_s``, ``clear(step)``
    ``for_s`` later; :meth:`stop` cancels what has not happened yet."""

    def __init__(
        self,
        steps: Sequence[StepT],
        inject: Callable[[StepT], None],
        clear: Callable[[StepT], None],
        name: str,
    ) -> None:
        self.steps = tuple(steps)
        self._inject = inject
        self._clear = clear
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.steps and self._task is None:
            self._task = asyncio.create_task(self._play(), name=self._name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        # At equal times a clear comes before an inject, so back-to-back steps chain.
        events = sorted(
            [(step.after_s, 1, i) for i, step in enumerate(self.steps)]
            + [(s.after_s + s.for_s, 0, i) for i, s in enumerate(self.steps) if s.for_s],
        )
        for at, inject, index in events:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            (self._inject if inject else self._clear)(self.steps[index])


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


EmulatorT = TypeVar("EmulatorT", bound=Startable)


class ScheduledEmulator(Generic[EmulatorT, StepT]):
    """What an emulator plugin hands the gateway: the emulator plus its fault schedule, started
    and stopped together. Subclasses link to a shared process in :meth:`before_start`."""

    def __init__(self, emulator: EmulatorT, schedule: FaultSchedule[StepT]) -> None:
        self.emulator = emulator
        self.schedule = schedule

    def before_start(self) -> None:
        """Called on entry, before the emulator starts; raise to refuse to start."""

    async def __aenter__(self) -> Self:
        self.before_start()
        await self.emulator.start()
        self.schedule.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.schedule.stop()
        finally:
            await self.emulator.stop()
