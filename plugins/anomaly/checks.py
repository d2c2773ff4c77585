"""Per-signal checks and the alarm state machine: pure, no I/O, no clock.

A *check* turns each value of one signal into a ratio ``r`` of its statistic to its limit
(``r > 1``: over the limit):

* :class:`Frozen` — a stuck value: ``r`` = points in a row within ``tolerance`` of each other /
  ``points`` (a live probe always wobbles a little; one that stops moving has failed or lost
  its link while the last value is repeated);
* :class:`Spike` — a Hampel filter: ``r`` = ``|x - median| / (n_sigmas · 1.4826 · MAD)`` over the
  previous ``window`` points (robust: the spike itself does not widen the band);
* :class:`Drift` — a one- or two-sided tabular CUSUM on ``(x - target) / sd`` with slack ``k``
  and decision interval ``h``: ``r`` = CUSUM / ``h``. It accumulates small persistent deviations
  (a residual creeping away) long before any single point is unusual;
* :class:`Level` — ``r`` = the value over an upper limit, or under a lower one (as fractions);
* :class:`Relative` — the value against the run's own start: the mean of its first
  ``baseline_h`` process hours is the reference, an exponential average over ``smoothing_h``
  the current level, and ``r`` = its fall below the reference / ``max_drop``. For what should
  stay constant through a run but has no fixed value across runs or instruments (a Raman
  reference band's intensity: it falls with the laser's power).

An :class:`Alarm` is raised after ``k`` of the last ``n`` points were over the limit (one noisy
point raises nothing), cleared only after ``clear_points`` points in a row were below
``clear_ratio`` of it (hysteresis: a value hovering at the limit does not chatter), and
acknowledged by a user. Each transition is returned to the caller to audit and publish.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

__all__ = ["Alarm", "AlarmState", "Drift", "Frozen", "Level", "Relative", "Spike", "Transition"]

#: MAD → standard deviation for normal data.
_MAD_TO_SD = 1.4826


class Frozen:
    """Stuck value: ``points`` values in a row within ``tolerance`` (absolute) of the first."""

    def __init__(self, points: int, tolerance: float = 0.0) -> None:
        if points < 2:
            raise ValueError(f"points must be ≥ 2, not {points}")
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be ≥ 0, not {tolerance}")
        self.points = points
        self.tolerance = tolerance
        self._anchor: float | None = None
        self._run = 0

    def update(self, value: float) -> float:
        anchor = self._anchor
        if anchor is not None and abs(value - anchor) <= self.tolerance:
            self._run += 1
        else:
            self._anchor = value
            self._run = 1
        # The (points)-th identical value is the first over the limit.
        return self._run / (self.points - 0.5)

    def describe(self, value: float) -> str:
        return f"value stuck at {value:.6g} for {self._run} points"


class Spike:
    """Hampel filter over the previous ``window`` values (module docstring)."""

    def __init__(self, window: int = 15, n_sigmas: float = 4.0, min_sd: float = 0.0) -> None:
        if window < 5:
            raise ValueError(f"window must be ≥ 5, not {window}")
        if not n_sigmas > 0:
            raise ValueError(f"n_sigmas must be > 0, not {n_sigmas}")
        self.n_sigmas = n_sigmas
        self.min_sd = min_sd
        self._values: deque[float] = deque(maxlen=window)
        self._last = (0.0, 0.0)

    def update(self, value: float) -> float:
        values = self._values
        ratio = 0.0
        if len(values) == values.maxlen:
            ordered = sorted(values)
            median = _median(ordered)
            mad = _median(sorted(abs(v - median) for v in ordered))
            sd = max(_MAD_TO_SD * mad, self.min_sd)
            self._last = (median, sd)
            if sd > 0:
                ratio = abs(value - median) / (self.n_sigmas * sd)
            elif value != median:
                ratio = math.inf
        # A spike does not enter the window (it would widen the band for the next one).
        if ratio <= 1.0:
            values.append(value)
        return ratio

    def describe(self, value: float) -> str:
        median, sd = self._last
        sigmas = abs(value - median) / sd if sd > 0 else math.inf
        return f"spike {value:.6g} ({sigmas:.1f} sd from the median {median:.6g})"


class Drift:
    """Tabular CUSUM of ``(x - target) / sd`` (module docstring). ``direction``: "low",
    "high" or "both"."""

    def __init__(
        self, target: float, sd: float, *, k: float = 0.5, h: float = 5.0, direction: str = "both"
    ) -> None:
        if not sd > 0:
            raise ValueError(f"sd must be > 0, not {sd}")
        if not (k >= 0 and h > 0):
            raise ValueError(f"k must be ≥ 0 and h > 0, not k={k}, h={h}")
        if direction not in ("low", "high", "both"):
            raise ValueError(f"direction must be low, high or both, not {direction!r}")
        self.target = target
        self.sd = sd
        self.k = k
        self.h = h
        self._high = direction in ("high", "both")
        self._low = direction in ("low", "both")
        self.upper = 0.0
        self.lower = 0.0

    def update(self, value: float) -> float:
        z = (value - self.target) / self.sd
        if self._high:
            self.upper = max(0.0, self.upper + z - self.k)
        if self._low:
            self.lower = max(0.0, self.lower - z - self.k)
        return max(self.upper, self.lower) / self.h

    def describe(self, value: float) -> str:
        side = "high" if self.upper >= self.lower else "low"
        deviation = value - self.target
        return (
            f"{value:.6g} drifting {side} of {self.target:.6g} ({deviation:+.3g}; CUSUM"
            f" {max(self.upper, self.lower):.3g} over {self.h:g})"
        )


class Level:
    """Over ``high`` or under ``low`` (either may be None)."""

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        if low is None and high is None:
            raise ValueError("a level check needs low, high or both")
        if low is not None and high is not None and not low < high:
            raise ValueError(f"low {low} must be below high {high}")
        self.low = low
        self.high = high

    def update(self, value: float) -> float:
        ratio = 0.0
        # Ratios around 1 at the limit: a point 1 % past it is 1.01.
        if self.high is not None:
            ratio = max(ratio, 1.0 + (value - self.high) / max(abs(self.high), 1e-12))
        if self.low is not None:
            ratio = max(ratio, 1.0 + (self.low - value) / max(abs(self.low), 1e-12))
        return ratio

    def describe(self, value: float) -> str:
        if self.high is not None and value > self.high:
            return f"{value:.6g} above {self.high:.6g}"
        if self.low is not None and value < self.low:
            return f"{value:.6g} below {self.low:.6g}"
        return f"{value:.6g} within limits"


class Relative:
    """The smoothed value's fall below the mean of the run's first hours (module docstring).

    Timed in process hours (:meth:`update_at`), so it means the same at any scan rate or time
    scale. Process time going back (a new batch) starts a new reference.
    """

    def __init__(
        self,
        max_drop: float,
        *,
        baseline_h: float = 2.0,
        baseline_points: int = 5,
        smoothing_h: float = 1.0,
    ) -> None:
        if not 0 < max_drop < 1:
            raise ValueError(f"max_drop must be in (0, 1), not {max_drop}")
        if not (baseline_h > 0 and smoothing_h > 0):
            raise ValueError(
                f"baseline_h and smoothing_h must be > 0, not {baseline_h}, {smoothing_h}"
            )
        if baseline_points < 1:
            raise ValueError(f"baseline_points must be ≥ 1, not {baseline_points}")
        self.max_drop = max_drop
        self.baseline_h = baseline_h
        self.baseline_points = baseline_points
        self.smoothing_h = smoothing_h
        self._restart()

    def _restart(self) -> None:
        self._start_h = math.nan
        self._last_h = -math.inf
        self._sum = 0.0
        self._count = 0
        #: The mean of the first hours; None while it is being learnt.
        self.reference: float | None = None
        self.level = math.nan

    def update(self, value: float) -> float:
        raise TypeError("a relative check is timed: call update_at(value, hours)")

    def update_at(self, value: float, hours: float) -> float:
        if hours < self._last_h:
            self._restart()
        if math.isnan(self._start_h):
            self._start_h = hours
        dt = hours - self._last_h
        self._last_h = hours
        if self.reference is None:
            self._sum += value
            self._count += 1
            if hours - self._start_h < self.baseline_h or self._count < self.baseline_points:
                return 0.0
            self.reference = self._sum / self._count
            self.level = self.reference
            return 0.0
        # An exponential average with a time constant in process hours: irregular scans weigh
        # by the time they cover.
        self.level += (value - self.level) * -math.expm1(-dt / self.smoothing_h)
        if not self.reference > 0:
            return 0.0
        drop = 1.0 - self.level / self.reference
        return drop / self.max_drop

    @property
    def drop(self) -> float:
        """The fraction the smoothed value lies below the reference (0 while learning)."""
        if self.reference is None or not self.reference > 0:
            return 0.0
        return 1.0 - self.level / self.reference

    def describe(self, value: float) -> str:
        return (
            f"{100 * self.drop:.0f} % below its start ({self.level:.4g}, smoothed over"
            f" {self.smoothing_h:g} h, against {self.reference or math.nan:.4g}, the mean of its"
            f" first {self.baseline_h:g} h)"
        )


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


class AlarmState(enum.Enum):
    NORMAL = "normal"
    ACTIVE = "active"
    #: Cleared before anyone acknowledged it: it stays to be acknowledged (ISA-18.2 "RTN unack").
    CLEARED_UNACKED = "cleared_unacknowledged"


@dataclass(frozen=True, slots=True)
class Transition:
    """What happened to an alarm: ``raised``, ``cleared`` or ``acknowledged``."""

    action: str
    alarm: str
    reason: str


class Alarm:
    """Persistence (k of n), hysteresis and acknowledgement of one alarm (module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        severity: int,
        k: int = 3,
        n: int = 5,
        clear_ratio: float = 0.8,
        clear_points: int = 5,
    ) -> None:
        if not 1 <= k <= n:
            raise ValueError(f"persistence needs 1 ≤ k ≤ n, not k={k}, n={n}")
        if not 0 < clear_ratio <= 1:
            raise ValueError(f"clear_ratio must be in (0, 1], not {clear_ratio}")
        if clear_points < 1:
            raise ValueError(f"clear_points must be ≥ 1, not {clear_points}")
        if severity < 1:
            raise ValueError(f"severity must be ≥ 1, not {severity}")
        self.name = name
        self.severity = severity
        self.k = k
        self.clear_ratio = clear_ratio
        self.clear_points = clear_points
        self._window: deque[bool] = deque(maxlen=n)
        self._over = 0
        self._below = 0
        self.state = AlarmState.NORMAL
        self.acknowledged = False
        self.reason = ""
        self.raised_at: int | None = None
        self.count = 0

    @property
    def active(self) -> bool:
        return self.state is AlarmState.ACTIVE

    @property
    def value(self) -> int:
        """The severity while active, 0 otherwise (what the alarm's signal carries)."""
        return self.severity if self.state is AlarmState.ACTIVE else 0

    def update(self, ratio: float, ts: int, describe: str | None = None) -> Transition | None:
        """Take one point's ratio to the limit; return the transition it causes, if any.
        ``describe`` (the cause, in words) is kept as the alarm's reason while it is active."""
        over = ratio > 1.0
        window = self._window
        if len(window) == window.maxlen and window[0]:
            self._over -= 1
        window.append(over)
        self._over += over
        if self.state is AlarmState.ACTIVE:
            if describe is not None and over:
                self.reason = describe
            self._below = self._below + 1 if ratio < self.clear_ratio else 0
            if self._below >= self.clear_points:
                self.state = AlarmState.NORMAL if self.acknowledged else AlarmState.CLEARED_UNACKED
                self._below = 0
                self._reset_window()
                return Transition(
                    "cleared", self.name, f"back under the limit (was: {self.reason})"
                )
            return None
        if self._over >= self.k:
            self.state = AlarmState.ACTIVE
            self.acknowledged = False
            self.reason = describe or f"{self.name} over its limit"
            self.raised_at = ts
            self.count += 1
            self._below = 0
            return Transition("raised", self.name, self.reason)
        return None

    def acknowledge(self, user: str) -> Transition:
        """Acknowledge it; ``ValueError`` if there is nothing to acknowledge."""
        if self.state is AlarmState.NORMAL or self.acknowledged:
            raise ValueError(f"alarm {self.name} has nothing to acknowledge ({self.status()})")
        self.acknowledged = True
        if self.state is AlarmState.CLEARED_UNACKED:
            self.state = AlarmState.NORMAL
        return Transition("acknowledged", self.name, f"acknowledged by {user}: {self.reason}")

    def status(self) -> str:
        if self.state is AlarmState.NORMAL:
            return "normal"
        return f"{self.state.value}, {'acknowledged' if self.acknowledged else 'unacknowledged'}"

    def _reset_window(self) -> None:
        self._window.clear()
        self._over = 0
