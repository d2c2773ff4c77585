"""Watch the wall clock: steps (wall time moving differently from monotonic time) and the
system's time-sync status, for ``/health`` and the audit trail.

A record's UTC time comes from the wall clock; if someone (or a bad NTP server) sets it, the
records around the step are not comparable. Every ``interval_s`` the watch compares how far
wall time and monotonic time moved: more than ``threshold_s`` apart is a step, reported with its
size. The sync status is the kernel's (``adjtimex``: whether the clock is disciplined, e.g. by
chrony or systemd-timesyncd), where the system reports it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

__all__ = ["ClockStep", "ClockWatch", "time_sync_status"]

log = structlog.get_logger("gateway.clock")

_TIME_ERROR = 5  # adjtimex's return value when the clock is not synchronised


def time_sync_status() -> str:
    """``synchronized``, ``unsynchronized``, or ``unknown`` (not Linux, or not allowed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        # struct timex is 208 bytes on 64-bit Linux; modes = 0 only reads.
        buffer = ctypes.create_string_buffer(512)
        state = int(libc.adjtimex(buffer))
    except (OSError, AttributeError):
        return "unknown"
    if state < 0:
        return "unknown"
    return "unsynchronized" if state == _TIME_ERROR else "synchronized"


@dataclass(frozen=True, slots=True)
class ClockStep:
    step_s: float  # wall-clock change minus monotonic change: + forward, - backward
    wall_ns: int  # the wall clock after the step


@dataclass(slots=True)
class ClockWatch:
    """Detects wall-clock steps; ``on_step`` is told of each one."""

    on_step: Callable[[ClockStep], None]
    threshold_s: float = 1.0
    interval_s: float = 1.0
    steps: int = 0
    last_step: ClockStep | None = None
    sync: str = field(default_factory=time_sync_status)
    _wall: Callable[[], int] = time.time_ns
    _mono: Callable[[], int] = time.monotonic_ns

    def check(self, wall_before: int, mono_before: int) -> tuple[int, int]:
        """Compare the clocks since ``(wall_before, mono_before)``; return the new pair."""
        wall, mono = self._wall(), self._mono()
        step_s = ((wall - wall_before) - (mono - mono_before)) / 1e9
        if abs(step_s) > self.threshold_s:
            step = ClockStep(step_s, wall)
            self.steps += 1
            self.last_step = step
            log.warning("clock.step", step_s=round(step_s, 3))
            self.on_step(step)
        return wall, mono

    async def run(self) -> None:
        """Check every ``interval_s`` until cancelled; refresh the sync status every minute."""
        wall, mono = self._wall(), self._mono()
        ticks = 0
        while True:
            await asyncio.sleep(self.interval_s)
            wall, mono = self.check(wall, mono)
            ticks += 1
            if ticks % 60 == 0:
                status = time_sync_status()
                if status != self.sync:
                    log.info("clock.sync_changed", sync=status, was=self.sync)
                    self.sync = status

    def health(self) -> dict[str, object]:
        last = self.last_step
        return {
            "sync": self.sync,
            "steps": self.steps,
            "last_step_s": round(last.step_s, 3) if last else None,
            "last_step_at_ns": last.wall_ns if last else None,
        }
