"""Wall time to process time: lets emulators running in real time share one fed-batch run.

A :class:`ProcessClock` owns no task and no timer: whoever touches the process (the feed pump
delivering feed, the spectrometer taking a spectrum, a periodic logger) first brings the model
up to "now". A run of 14 process days thus fits in a 14-minute demo at ``time_scale=1440``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .model import FedBatchModel, ProcessState

__all__ = ["ProcessClock"]


class ProcessClock:
    """Advances a :class:`FedBatchModel` by ``time_scale`` process seconds per wall second.

    ``time_scale=60`` (the default) makes one real minute one process hour. ``clock`` is the
    wall clock in seconds (``time.monotonic`` by default; tests pass a fake one). The process
    starts at the clock's reading when the ``ProcessClock`` is made.

    Thread-unsafe by design: every emulator runs on the gateway's one event loop and calls in
    from there, so there is nothing to lock; do not share one across threads.
    """

    def __init__(
        self,
        model: FedBatchModel,
        time_scale: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(time_scale) and time_scale > 0.0):
            raise ValueError(f"time_scale must be a finite number > 0, not {time_scale!r}")
        self.model = model
        self.time_scale = time_scale
        self._clock = clock
        self._last = clock()
        self._h_per_wall_s = time_scale / 3600.0

    def advance(self) -> None:
        """Bring the model up to the process time that corresponds to now."""
        now = self._clock()
        # A clock that stands still (or a fake one stepped backwards) adds no time.
        if now > self._last:
            self.model.advance((now - self._last) * self._h_per_wall_s)
            self._last = now

    def hours(self) -> float:
        """Process hours since inoculation now (the batch age): the time base of gradual
        faults in the emulators linked to this run."""
        self.advance()
        return self.model.elapsed_h

    def feed(self, volume_mL: float) -> None:
        """Add ``volume_mL`` millilitres of feed medium (what the pump delivered), now.

        Raises ``ValueError`` for a negative, NaN or infinite volume (before any time passes).
        """
        if not (volume_mL >= 0.0 and math.isfinite(volume_mL)):
            raise ValueError(f"feed volume must be a finite number ≥ 0 mL, not {volume_mL!r}")
        self.advance()
        self.model.add_feed(volume_mL / 1000.0)

    def snapshot(self) -> ProcessState:
        """The process state now."""
        self.advance()
        return self.model.state
