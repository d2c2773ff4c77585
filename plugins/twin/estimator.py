"""The twin's culture model and its extended Kalman filter: numpy only, no I/O, no clock.

**Model** (deliberately simpler than the emulator's, and of another structure): logistic growth
on glucose (no glutamine, no pH/DO loops), constant death plus death under starvation, Monod
glucose uptake, lactate made with growth and taken up once growth stops, constant specific
productivity, dilution by the feed. State ``[X, G, L, P, eta]``: viable cell density
(1e6 cells/mL), glucose, lactate and titer (g/L), and ``eta``, the feed's delivery efficiency
(1 = the pump delivers what it reports; a worn tubing delivers less), a random walk.
Temperature, pH and dissolved oxygen scale growth (factors 1 at the fitted conditions).
The base the pH loop should have used follows from the net lactate made and the cells'
respiration: :attr:`TwinEstimator.expected_base_mL`.

**Filter.** Euler steps of at most ``max_step_h`` with the Jacobian by finite differences;
scalar measurement updates of glucose and lactate; an innovation beyond ``gate`` standard
deviations is rejected (counted), as a soft-sensor outlier must not drag the twin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Forecast", "Inputs", "TwinEstimator", "derivatives", "simulate"]

Array = NDArray[np.float64]

X, G, L, P, ETA = range(5)
N = 5
_EPS = (1e-4, 1e-5, 1e-5, 1e-5, 1e-5)


@dataclass(slots=True)
class Inputs:
    """What drives the model between measurements (the latest of each)."""

    feed_mL_per_h: float = 0.0
    """Feed as the pump reports it, mL/h."""
    volume_L: float = 2.0
    """Working volume now, L."""
    temperature_C: float | None = None
    ph: float | None = None
    do_pct: float | None = None


def _growth_factor(p: Mapping[str, float], u: Inputs) -> float:
    f = 1.0
    if u.temperature_C is not None:
        f *= math.exp(-p["temperature_coeff"] * abs(u.temperature_C - p["temperature_ref"]))
    if u.ph is not None:
        z = (u.ph - p["ph_opt"]) / p["ph_width"]
        f *= math.exp(-z * z)
    if u.do_pct is not None and p["do_crit"] > 0 and u.do_pct < p["do_crit"]:
        f *= max(0.0, u.do_pct) / p["do_crit"]
    return f


def derivatives(
    s: tuple[float, ...] | list[float], p: Mapping[str, float], u: Inputs, factor: float
) -> tuple[float, float, float, float, float, float]:
    """d/dt of ``[X, G, L, P, eta]`` and the net lactate made (g/L/h), for the state ``s``."""
    x, g, lac, prod, eta = (max(0.0, s[0]), max(0.0, s[1]), max(0.0, s[2]), s[3], s[4])
    kg = g / (p["k_g"] + g)
    room = max(0.0, 1.0 - x / p["x_max"])
    phi = kg * room * factor  # growth as a fraction of mu_max
    mu = p["mu_max"] * phi
    starve = 1.0 - kg
    death = p["kd"] + p["kd_starved"] * starve * starve
    dilution = eta * u.feed_mL_per_h * 1e-3 / u.volume_L
    uptake = p["q_g"] * g / (p["k_gu"] + g) * x
    made = p["y_l"] * mu * x
    taken = p["q_l"] * x * lac / (p["k_l"] + lac) * (1.0 - phi)
    return (
        (mu - death) * x - dilution * x,
        -uptake + dilution * (p["feed_glucose"] - g),
        made - taken - dilution * lac,
        p["q_p"] * x - dilution * prod,
        0.0,
        made - taken,
    )


def simulate(
    p: Mapping[str, float],
    times_h: Array,
    feed_mL: Array,
    base_mL: Array | None,
    step_h: float = 0.1,
) -> tuple[Array, Array]:
    """The model open loop from inoculation, fed by the cumulative ``feed_mL`` (and base for
    the volume) at ``times_h`` (sorted); returns the states ``[X, G, L, P]`` at ``times_h``
    and the expected base total (mL) there. Used to fit and to check a model."""
    s = [p["x0"], p["g0"], p["l0"], p["p0"], 1.0]
    u = Inputs(volume_L=p["volume0"])
    out = np.zeros((len(times_h), 4))
    base_out = np.zeros(len(times_h))
    t = 0.0
    expected_base = 0.0
    fed0 = float(feed_mL[0]) if len(feed_mL) else 0.0
    base0 = float(base_mL[0]) if base_mL is not None and len(base_mL) else 0.0
    for k, t_next in enumerate(times_h):
        span = float(t_next) - t
        if span > 0 and k > 0:
            u.feed_mL_per_h = max(0.0, float(feed_mL[k] - feed_mL[k - 1])) / span
        steps = max(1, math.ceil(span / step_h)) if span > 0 else 0
        for _ in range(steps):
            dt = span / steps
            d = derivatives(s, p, u, 1.0)
            for i in range(4):
                s[i] = max(0.0, s[i] + d[i] * dt)
            expected_base += _base_rate(p, s[X], d[5], u.volume_L) * dt
        t = max(t, float(t_next))
        added = float(base_mL[k]) - base0 if base_mL is not None else expected_base
        u.volume_L = p["volume0"] + (float(feed_mL[k]) - fed0) * 1e-3 + max(0.0, added) * 1e-3
        out[k] = s[:4]
        base_out[k] = expected_base
    return out, base_out


def _base_rate(p: Mapping[str, float], x: float, net_lactate: float, volume_L: float) -> float:
    """Base the pH loop should dose, mL/h: acid from net lactate and respiration, never < 0."""
    return max(0.0, (p["base_per_lactate"] * net_lactate + p["base_per_cell"] * x) * volume_L)


def _transition(
    s: list[float],
    d: Sequence[float],
    p: Mapping[str, float],
    u: Inputs,
    factor: float,
    dt: float,
) -> Array:
    """The Euler step's state-transition matrix ``I + J dt`` at ``s`` (``d``: the derivatives
    there), with the Jacobian ``J`` by forward differences."""
    jac = np.empty((N, N))
    for j in range(N):
        shifted = list(s)
        eps = _EPS[j] * max(1.0, abs(s[j]))
        shifted[j] += eps
        dj = derivatives(shifted, p, u, factor)
        for i in range(N):
            jac[i, j] = (dj[i] - d[i]) / eps
    return np.eye(N) + jac * dt


@dataclass(frozen=True, slots=True)
class Forecast:
    """Where glucose goes at the current feed: at +horizon, and when it runs out."""

    glucose: float
    glucose_sd: float
    depletion_h: float | None
    """Process hours from now until glucose falls below the threshold; None: not within
    the search horizon."""
    depletion_sd: float


class TwinEstimator:
    """The EKF over ``[X, G, L, P, eta]``. Not thread-safe; plain floats on the hot path."""

    def __init__(
        self,
        parameters: Mapping[str, float],
        noise: Mapping[str, float],
        *,
        max_step_h: float = 0.1,
        gate: float = 6.0,
    ) -> None:
        self.p = dict(parameters)
        self.noise = dict(noise)
        self.max_step_h = max_step_h
        self.gate = gate
        p, n = self.p, self.noise
        self.x: list[float] = [p["x0"], p["g0"], p["l0"], p["p0"], 1.0]
        self.cov: Array = np.diag(
            [n["x0"] ** 2, n["g0"] ** 2, n["l0"] ** 2, n["p0"] ** 2, n["eta0"] ** 2]
        )
        self._q = np.diag([n["x"] ** 2, n["g"] ** 2, n["l"] ** 2, n["p"] ** 2, n["eta"] ** 2])
        self.u = Inputs(volume_L=p["volume0"])
        self.time_h = 0.0
        self.expected_base_mL = 0.0
        self.rejected = 0

    # -- time ------------------------------------------------------------------------------------
    def advance_to(self, time_h: float) -> None:
        """Integrate (mean and covariance) up to process time ``time_h`` (no-op if earlier)."""
        span = time_h - self.time_h
        if not span > 0:
            return
        steps = max(1, math.ceil(span / self.max_step_h))
        dt = span / steps
        factor = _growth_factor(self.p, self.u)
        for _ in range(steps):
            self._step(dt, factor)
        self.time_h = time_h

    def _step(self, dt: float, factor: float) -> None:
        p, u, s = self.p, self.u, self.x
        d = derivatives(s, p, u, factor)
        f = _transition(s, d, p, u, factor, dt)
        self.cov = f @ self.cov @ f.T + self._q * dt
        for i in range(4):
            s[i] = max(0.0, s[i] + d[i] * dt)
        s[ETA] = min(2.0, max(0.05, s[ETA]))
        self.expected_base_mL += _base_rate(p, s[X], d[5], u.volume_L) * dt

    # -- measurements ----------------------------------------------------------------------------
    def update(self, index: int, value: float, sd: float) -> tuple[float, float, bool]:
        """A measurement of state ``index`` (G or L): returns the innovation (measured - prior),
        its standard deviation, and whether it was used (False: beyond the gate)."""
        prior = self.x[index]
        innovation = value - prior
        s_var = float(self.cov[index, index]) + sd * sd
        s_sd = math.sqrt(s_var)
        if abs(innovation) > self.gate * s_sd:
            self.rejected += 1
            return innovation, s_sd, False
        gain = self.cov[:, index] / s_var
        for i in range(N):
            self.x[i] += float(gain[i]) * innovation
        self.cov = self.cov - np.outer(gain, self.cov[index, :])
        self.cov = 0.5 * (self.cov + self.cov.T)
        for i in range(4):
            self.x[i] = max(0.0, self.x[i])
        self.x[ETA] = min(2.0, max(0.05, self.x[ETA]))
        return innovation, s_sd, True

    def sd(self, index: int) -> float:
        return math.sqrt(max(0.0, float(self.cov[index, index])))

    # -- forecast --------------------------------------------------------------------------------
    def forecast(
        self, horizon_h: float, threshold: float, search_h: float, step_h: float = 0.5
    ) -> Forecast:
        """Glucose at ``+horizon_h`` at the current feed (mean and sd, the covariance propagated
        with the model in steps of ``step_h``), and the hours until glucose falls below
        ``threshold`` (searched up to ``search_h``, beyond the horizon in steps of up to 2 h,
        shorter as glucose nears the threshold; its sd from the glucose sd there over the
        glucose slope)."""
        p, u = self.p, self.u
        s = list(self.x)
        cov = self.cov.copy()
        factor = _growth_factor(p, u)
        t = 0.0
        at_horizon: tuple[float, float] | None = None
        depletion: float | None = None
        depletion_sd = math.inf
        end = max(horizon_h, search_h)
        if s[G] < threshold:
            depletion, depletion_sd = 0.0, 0.0
        while t < end - 1e-9:
            d = derivatives(s, p, u, factor)
            if at_horizon is None:
                dt = min(step_h, horizon_h - t)
            else:
                # Far from depletion, long steps: a fifth of the time glucose needs to reach it.
                falling = -d[G]
                room = s[G] - threshold
                dt = 2.0 if falling <= 0 else min(2.0, max(step_h, 0.2 * room / falling))
            dt = max(1e-9, min(dt, end - t))
            if at_horizon is None:
                f = _transition(s, d, p, u, factor, dt)
                cov = f @ cov @ f.T + self._q * dt
            g_before = s[G]
            for i in range(4):
                s[i] = max(0.0, s[i] + d[i] * dt)
            t += dt
            if at_horizon is None and t >= horizon_h - 1e-9:
                at_horizon = (s[G], math.sqrt(max(0.0, float(cov[G, G]))))
            if depletion is None and s[G] < threshold:
                slope = (s[G] - g_before) / dt
                frac = (g_before - threshold) / (g_before - s[G]) if g_before > s[G] else 1.0
                depletion = t - dt + frac * dt
                g_sd = math.sqrt(max(0.0, float(cov[G, G])))
                depletion_sd = g_sd / abs(slope) if slope < 0 else math.inf
            if depletion is not None and at_horizon is not None:
                break
        glucose, glucose_sd = at_horizon if at_horizon is not None else (s[G], math.inf)
        return Forecast(glucose, glucose_sd, depletion, depletion_sd)
