"""The control law of the ``pi_control`` processor, pure: no I/O, no clock, no runtime.

A :class:`PiLoop` is told what happens — a measurement (:meth:`PiLoop.measure`), the passing of
time (:meth:`PiLoop.tick`), a mode change (:meth:`PiLoop.manual`, :meth:`PiLoop.auto`), the fate
of a write (:meth:`PiLoop.written`, :meth:`PiLoop.refused`) — and answers with a :class:`Move`:
the output to write now, if any, and the events to record. Times come in two bases: process
hours (the integral time is in process hours, the fallback profile is a function of process
time) and wall seconds (rate limits, staleness and the fallback delay are about the equipment
and the people watching it, which live on wall time).

The law: positional PI plus an optional feed-forward term, ``u = ff + kp * e + I`` with
``e = setpoint - measurement`` (a positive ``kp`` raises the output when the measurement is
low: a feed pump for a consumed nutrient), the measurement optionally through a first-order
filter (``filter_h``), and ``I`` integrated as ``kp / ti * e`` per process hour. The output is
clamped to ``[out_min, out_max]`` and moved at most ``max_step`` per write and
``max_rate_per_s`` per wall second. Anti-windup by conditional integration: while a limit holds
the output, ``I`` only moves back from that limit, and it never leaves the output range — so the
output leaves a limit as soon as the error turns. (Full back-calculation tracking was tried
first: at a limit of 0 it turned the analyser's noise into a net feed.) Transfers are bumpless:
manual → auto, hold or fallback → auto and a refused write set ``I`` so that the law starts
from the output the equipment really has.

Safety: a measurement that is not good never drives the output. In auto, a not-good (or no)
measurement for ``stale_after_s`` puts the loop in ``hold`` (the last output stays); after
``fallback_after_s`` in hold it goes to ``fallback``, following a feed profile in process hours;
the first good measurement after that returns it to normal control, bumplessly.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "FeedProfile",
    "LoopEvent",
    "Mode",
    "Move",
    "PiLoop",
    "PiTuning",
    "State",
]


class Mode(Enum):
    """Who sets the output: the loop (auto) or a person (manual)."""

    MANUAL = 0
    AUTO = 1


class State(Enum):
    """What the loop does in auto (in manual it is always ``manual``)."""

    NORMAL = 0
    """Controlling from good measurements."""
    HOLD = 1
    """No good measurement lately (or a write was refused): the last output stays."""
    FALLBACK = 2
    """No good measurement for too long: following the fallback feed profile."""
    MANUAL = 3
    """Manual mode: the output is what a person set."""


@dataclass(frozen=True, slots=True)
class FeedProfile:
    """A piecewise-constant output over process time: ``points[i] = (from_h, output)``, sorted by
    time; before the first point the first output applies."""

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a feed profile needs at least one point")
        times = [t for t, _ in self.points]
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError(f"feed profile times must increase strictly: {times}")
        for t, value in self.points:
            if not (math.isfinite(t) and math.isfinite(value)):
                raise ValueError(f"feed profile point ({t}, {value}) is not finite")

    def at(self, t_h: float) -> float:
        """The profile's output at process hour ``t_h``."""
        i = bisect_right([t for t, _ in self.points], t_h) - 1
        return self.points[max(i, 0)][1]


@dataclass(frozen=True, slots=True)
class PiTuning:
    """Everything the law needs; checked on construction."""

    setpoint: float
    kp: float
    """Proportional gain, output units per measurement unit (sign: the direction of action)."""
    ti_h: float
    """Integral time, process hours (> 0)."""
    out_min: float
    out_max: float
    fallback: FeedProfile
    max_step: float | None = None
    """Largest change of one write, output units; None: none."""
    max_rate_per_s: float | None = None
    """Largest change per wall second, output units; None: none."""
    deadband: float = 0.0
    """A change smaller than this is not written (the audit trail records every write)."""
    filter_h: float = 0.0
    """Time constant of a first-order filter on the measurement, process hours (0: none): an
    analyser's noise times kp would otherwise move the output at every sample."""
    stale_after_s: float = 30.0
    """Wall seconds without a good measurement before the loop holds."""
    fallback_after_s: float = 120.0
    """Wall seconds in hold before the loop follows the fallback profile."""

    def __post_init__(self) -> None:
        numbers = {
            "setpoint": self.setpoint,
            "kp": self.kp,
            "ti_h": self.ti_h,
            "out_min": self.out_min,
            "out_max": self.out_max,
        }
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, not {value!r}")
        if self.kp == 0:
            raise ValueError("kp must not be 0")
        if self.ti_h <= 0:
            raise ValueError(f"ti_h must be > 0 process hours, not {self.ti_h}")
        if self.out_min > self.out_max:
            raise ValueError(f"out_min {self.out_min:g} is above out_max {self.out_max:g}")
        for name, limit in (("max_step", self.max_step), ("max_rate_per_s", self.max_rate_per_s)):
            if limit is not None and not (math.isfinite(limit) and limit > 0):
                raise ValueError(f"{name} must be a finite number > 0, not {limit!r}")
        if not (math.isfinite(self.filter_h) and self.filter_h >= 0):
            raise ValueError(f"filter_h must be ≥ 0, not {self.filter_h!r}")
        if not (math.isfinite(self.deadband) and self.deadband >= 0):
            raise ValueError(f"deadband must be ≥ 0, not {self.deadband!r}")
        if not 0 < self.stale_after_s < math.inf:
            raise ValueError(f"stale_after_s must be > 0, not {self.stale_after_s!r}")
        if not 0 <= self.fallback_after_s < math.inf:
            raise ValueError(f"fallback_after_s must be ≥ 0, not {self.fallback_after_s!r}")
        for t, value in self.fallback.points:
            if not self.out_min <= value <= self.out_max:
                raise ValueError(
                    f"fallback output {value:g} at {t:g} h is outside the output limits"
                    f" {self.out_min:g}..{self.out_max:g}"
                )


@dataclass(frozen=True, slots=True)
class LoopEvent:
    """Something worth an audit record and a log line: ``action`` e.g. ``fallback.enter``."""

    action: str
    why: str
    old: str
    new: str


@dataclass(slots=True)
class Move:
    """The loop's answer: write ``output`` now (None: write nothing), and record ``events``."""

    output: float | None = None
    events: list[LoopEvent] = field(default_factory=list)


class PiLoop:
    """One PI loop's state (see the module's docstring). Starts in manual with ``output``: the
    equipment's value when the loop takes over is not known before it is read."""

    def __init__(self, tuning: PiTuning, output: float, wall_s: float) -> None:
        self.tuning = tuning
        self.mode = Mode.MANUAL
        self.state = State.MANUAL
        self.output = _clamp(output, tuning.out_min, tuning.out_max)
        """The output the equipment is believed to have (the last written or adopted)."""
        self.integral = 0.0
        self.error: float | None = None
        self.reason = "starting in manual"
        self._last_good_wall: float | None = None
        self._hold_since: float = wall_s
        self._last_write_wall: float = wall_s
        self._last_t_h: float | None = None
        self._pending: float | None = None
        self._filtered: float | None = None

    # -- inputs ---------------------------------------------------------------------------------
    def measure(
        self, value: float | None, good: bool, t_h: float, wall_s: float, ff: float = 0.0
    ) -> Move:
        """A measurement at process hour ``t_h`` (``good``: quality good and a finite value)."""
        move = Move()
        if not good or value is None or not math.isfinite(value):
            self._last_t_h = None
            return move
        tuning = self.tuning
        last_t_h, self._last_t_h = self._last_t_h, t_h
        filtered = self._filtered
        if filtered is None or last_t_h is None or tuning.filter_h == 0:
            filtered = value  # the first after a gap starts the filter afresh
        else:
            dt_h = max(t_h - last_t_h, 0.0)
            filtered += (1.0 - math.exp(-dt_h / tuning.filter_h)) * (value - filtered)
        self._filtered = filtered
        e = tuning.setpoint - filtered
        self.error = e
        self._last_good_wall = wall_s
        if self.mode is Mode.MANUAL or self._pending is not None:
            return move
        if self.state is not State.NORMAL:
            move.events.append(
                LoopEvent(
                    f"{self.state.name.lower()}.exit",
                    "good measurement again",
                    self.state.name.lower(),
                    "normal",
                )
            )
            self.state = State.NORMAL
            self.reason = "controlling"
            self._track(self.output, e, ff)
            return move
        dt_h = 0.0 if last_t_h is None else max(t_h - last_t_h, 0.0)
        integral = self.integral + tuning.kp / tuning.ti_h * e * dt_h
        law = ff + tuning.kp * e + integral
        limited = self._limit(law, wall_s)
        # Conditional integration: while a limit (range, step or rate) holds the output, the
        # integral moves only back from it; and it never leaves the output range.
        if limited == law or (law > limited) == (e < 0):
            self.integral = _clamp(integral, tuning.out_min - ff, tuning.out_max - ff)
        if abs(limited - self.output) >= max(tuning.deadband, 1e-12):
            move.output = limited
            self._pending = limited
        return move

    def tick(self, t_h: float, wall_s: float) -> Move:
        """Time passes: hold on stale measurements, go to and follow the fallback profile."""
        move = Move()
        if self.mode is Mode.MANUAL or self._pending is not None:
            return move
        tuning = self.tuning
        last = self._last_good_wall
        if self.state is State.NORMAL and (last is None or wall_s - last >= tuning.stale_after_s):
            self.state = State.HOLD
            self._hold_since = wall_s
            self.reason = f"no good measurement for {tuning.stale_after_s:g} s: holding"
            move.events.append(
                LoopEvent("hold.enter", self.reason, "normal", f"hold at {self.output:g}")
            )
        if self.state is State.HOLD and wall_s - self._hold_since >= tuning.fallback_after_s:
            self.state = State.FALLBACK
            self.reason = f"held for {tuning.fallback_after_s:g} s: following the fallback profile"
            move.events.append(
                LoopEvent("fallback.enter", self.reason, f"hold at {self.output:g}", "fallback")
            )
        if self.state is State.FALLBACK:
            target = tuning.fallback.at(t_h)
            limited = self._limit(target, wall_s)
            if abs(limited - self.output) > 1e-12:
                move.output = limited
                self._pending = limited
        return move

    def unmeasured(self, reason: str) -> None:
        """Say why the last measurement was not used (shown until a good one comes)."""
        if self.mode is Mode.AUTO and self.state is State.NORMAL:
            self.reason = f"measurement not used: {reason}"

    def manual(self, output: float | None = None) -> float:
        """Switch to manual; the output stays (or becomes ``output``, clamped). Returns it."""
        self.mode = Mode.MANUAL
        self.state = State.MANUAL
        self.reason = "manual"
        self._pending = None
        if output is not None:
            if not math.isfinite(output):
                raise ValueError(f"output must be finite, not {output!r}")
            if not self.tuning.out_min <= output <= self.tuning.out_max:
                raise ValueError(
                    f"output {output:g} is outside the loop's limits"
                    f" {self.tuning.out_min:g}..{self.tuning.out_max:g}"
                )
            return output
        return self.output

    def auto(self, wall_s: float, ff: float = 0.0) -> None:
        """Switch to auto, bumplessly: the law starts from the present output."""
        self.mode = Mode.AUTO
        self.state = State.NORMAL
        self.reason = "controlling"
        self._last_t_h = None
        self._pending = None
        if (
            self._last_good_wall is None
            or wall_s - self._last_good_wall >= self.tuning.stale_after_s
        ):
            # Measurements stale already: hold now rather than after another stale_after_s.
            self._last_good_wall = None
        self._track(self.output, self.error or 0.0, ff)

    def adopt(self, output: float) -> None:
        """The equipment's present output (read back, or written by a person in manual)."""
        self.output = output
        if self.mode is Mode.AUTO:
            self._track(output, self.error or 0.0, 0.0)

    def written(self, value: float, wall_s: float) -> None:
        """The write the last :class:`Move` asked for was done."""
        self._pending = None
        self.output = value
        self._last_write_wall = wall_s

    def abandon(self) -> None:
        """The write the last :class:`Move` asked for will not be made (the task stopped)."""
        self._pending = None

    def refused(self, why: str, wall_s: float) -> LoopEvent:
        """The write the last :class:`Move` asked for was refused or failed: the equipment keeps
        its output; the loop holds there (retrying from the next good measurement)."""
        asked, self._pending = self._pending, None
        self.reason = f"write refused: {why}"
        self._track(self.output, self.error or 0.0, 0.0)
        if self.mode is Mode.AUTO and self.state is State.NORMAL:
            self.state = State.HOLD
            self._hold_since = wall_s
            # The next good measurement returns it to normal (bumplessly, from the real output).
            self._last_good_wall = wall_s
        return LoopEvent("write.refused", self.reason, f"{self.output:g}", f"{asked}")

    # -- helpers --------------------------------------------------------------------------------
    def _limit(self, value: float, wall_s: float) -> float:
        tuning = self.tuning
        value = _clamp(value, tuning.out_min, tuning.out_max)
        step = math.inf if tuning.max_step is None else tuning.max_step
        if tuning.max_rate_per_s is not None:
            # 0.9: the write path measures the rate from its own clock, a little later than ours.
            step = min(step, 0.9 * tuning.max_rate_per_s * max(wall_s - self._last_write_wall, 0))
        return _clamp(value, self.output - step, self.output + step)

    def _track(self, output: float, e: float, ff: float) -> None:
        self.integral = output - ff - self.tuning.kp * e


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def profile_from(points: Sequence[Sequence[float]]) -> FeedProfile:
    """A :class:`FeedProfile` from ``[[from_h, output], ...]`` (config form)."""
    return FeedProfile(tuple((float(p[0]), float(p[1])) for p in points))
