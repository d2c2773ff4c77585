"""Fitting a twin's kinetics to exported runs and reference values (offline; scipy allowed here,
never on the gateway's hot path).

Each run gives the process times of its samples, the cumulative feed and base the instruments
reported, and reference values (VCD, glucose, lactate, titer — a laboratory's, or an emulator's
truth for a model meant for the emulator). :func:`fit_parameters` runs the model open loop from
inoculation, fed as the run was, and adjusts the kinetic parameters to the references by
weighted least squares (each quantity scaled by its range). The estimator's noise levels are
set from the fit's residuals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .estimator import simulate
from .model import PARAMETERS

__all__ = ["DEFAULT_NOISE", "DEFAULT_PARAMETERS", "FITTED", "Run", "fit_parameters", "score"]

Array = NDArray[np.float64]

#: Starting values (and the values of what is not fitted): round CHO numbers.
DEFAULT_PARAMETERS: dict[str, float] = {
    "volume0": 2.0,
    "x0": 0.5,
    "g0": 6.0,
    "l0": 0.2,
    "p0": 0.0,
    "feed_glucose": 400.0,
    "mu_max": 0.035,
    "x_max": 15.0,
    "k_g": 0.2,
    "kd": 0.002,
    "kd_starved": 0.03,
    "q_g": 0.008,
    "k_gu": 0.2,
    "y_l": 0.3,
    "q_l": 0.002,
    "k_l": 0.3,
    "q_p": 0.001,
    "base_per_lactate": 11.1,
    "base_per_cell": 0.004,
    "temperature_ref": 36.8,
    "temperature_coeff": 0.05,
    "ph_opt": 7.0,
    "ph_width": 1.0,
    "do_crit": 10.0,
}
DEFAULT_NOISE: dict[str, float] = {
    "x": 0.2,
    "g": 0.05,
    "l": 0.03,
    "p": 0.005,
    "eta": 0.002,
    "x0": 0.2,
    "g0": 0.5,
    "l0": 0.2,
    "p0": 0.05,
    "eta0": 0.05,
    "glucose": 0.25,
    "lactate": 0.25,
    "base_fraction": 0.1,
    "base_floor": 5.0,
}
#: The kinetic parameters the fit adjusts (the others are given: the initial state — from the
#: first reference values — volume and feed, the culture conditions' factors).
FITTED = (
    "mu_max",
    "x_max",
    "kd",
    "kd_starved",
    "q_g",
    "y_l",
    "q_l",
    "q_p",
    "base_per_lactate",
    "base_per_cell",
)


@dataclass(frozen=True, slots=True)
class Run:
    """One run: sample times (process h, sorted), cumulative feed and base (mL), and the
    references at ``ref_times_h`` (NaN where a quantity was not measured)."""

    times_h: Array
    feed_mL: Array
    base_mL: Array | None
    ref_times_h: Array
    vcd: Array
    glucose: Array
    lactate: Array
    titer: Array


def _at(run: Run, states: Array, times: Array) -> Array:
    """The simulated states at the reference times (linear interpolation)."""
    return np.column_stack([np.interp(run.ref_times_h, times, states[:, i]) for i in range(4)])


def score(parameters: Mapping[str, float], runs: Sequence[Run]) -> dict[str, float | None]:
    """Open-loop RMSE of each quantity over ``runs`` and as % of its range."""
    errors: dict[str, list[Array]] = {k: [] for k in ("vcd", "glucose", "lactate", "titer")}
    refs: dict[str, list[Array]] = {k: [] for k in errors}
    for run in runs:
        states, _ = simulate(parameters, run.times_h, run.feed_mL, run.base_mL)
        at = _at(run, states, run.times_h)
        for i, name in enumerate(errors):
            ref = getattr(run, name)
            ok = ~np.isnan(ref)
            errors[name].append(at[ok, i] - ref[ok])
            refs[name].append(ref[ok])
    out: dict[str, float | None] = {}
    for name in errors:
        e = np.concatenate(errors[name])
        r = np.concatenate(refs[name])
        if not len(e):
            out[f"{name}_rmse"] = None
            continue
        rmse = math.sqrt(float(np.mean(e**2)))
        span = float(r.max() - r.min())
        out[f"{name}_rmse"] = rmse
        out[f"{name}_rmse_pct_range"] = 100.0 * rmse / span if span > 0 else None
    return out


def fit_parameters(
    runs: Sequence[Run], start: Mapping[str, float], *, max_evaluations: int = 400
) -> tuple[dict[str, float], dict[str, float]]:
    """Fit :data:`FITTED` to ``runs`` from ``start``; the parameters and the noise levels
    (measurement and initial uncertainties from the residuals)."""
    from scipy.optimize import least_squares  # offline only

    names = list(FITTED)
    low = np.array([max(PARAMETERS[n][0], 1e-6) for n in names])
    high = np.array([PARAMETERS[n][1] for n in names])
    x_start = np.clip(np.array([start[n] for n in names]), low * 1.0001, high * 0.9999)
    scales = {}
    for name in ("vcd", "glucose", "lactate", "titer"):
        values = np.concatenate([getattr(r, name)[~np.isnan(getattr(r, name))] for r in runs])
        span = float(values.max() - values.min()) if len(values) else 1.0
        scales[name] = span if span > 0 else 1.0

    def residuals(theta: Array) -> Array:
        p = dict(start) | dict(zip(names, theta.tolist(), strict=True))
        parts = []
        for run in runs:
            states, expected_base = simulate(p, run.times_h, run.feed_mL, run.base_mL, 0.25)
            at = _at(run, states, run.times_h)
            for i, name in enumerate(("vcd", "glucose", "lactate", "titer")):
                ref = getattr(run, name)
                ok = ~np.isnan(ref)
                parts.append((at[ok, i] - ref[ok]) / scales[name])
            if run.base_mL is not None and len(run.base_mL):
                measured = run.base_mL - run.base_mL[0]
                span = float(measured.max()) or 1.0
                parts.append(
                    0.5 * (expected_base - measured)[:: max(1, len(measured) // 50)] / span
                )
        return np.concatenate(parts)

    result = least_squares(
        residuals, x_start, bounds=(low, high), x_scale="jac", max_nfev=max_evaluations
    )
    fitted = dict(start) | dict(zip(names, result.x.tolist(), strict=True))
    noise = dict(DEFAULT_NOISE)
    figures = score(fitted, runs)
    # The twin's own open-loop error bounds what the estimator should expect at the start.
    for name, key in (("vcd", "x0"), ("titer", "p0")):
        rmse = figures.get(f"{name}_rmse")
        if rmse:
            noise[key] = max(noise[key], float(rmse))
    return fitted, noise
