"""Fault schedules for emulators: "break this after 30 s, for 10 s", played by one named task.

Each emulator's options list its own steps (what can break differs per instrument); any step
with ``after_s`` and ``for_s`` (0 = until the emulator stops) can be played here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, Self, TypeVar

__all__ = ["FaultSchedule", "ScheduledEmulator", "ScheduledStep"]


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
