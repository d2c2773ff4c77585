"""Spectral preprocessing for chemometric models: each step a small, recorded, replayable
transformation of a batch of spectra (rows) on one axis.

A model file records its steps as plain dictionaries (:meth:`Step.to_dict`), so the gateway
applies exactly what was fitted. Steps that learn from the training data (mean centring) are
*fitted* once and keep what they learned. Everything is vectorised over the batch; nothing here
loops over points in Python.

Steps (``{"step": name, ...}``):

- ``crop`` ``{low, high}``: keep the points whose axis value lies in ``[low, high]``.
- ``baseline`` ``{degree}``: subtract, per spectrum, the least-squares polynomial of ``degree``
  in the axis (a smooth fluorescence background).
- ``snv``: standard normal variate — per spectrum, subtract its mean and divide by its standard
  deviation (``ddof=1``); removes multiplicative scatter and intensity changes.
- ``savgol`` ``{window, polyorder, deriv}``: Savitzky-Golay smoothing (``deriv`` 0) or
  derivative along each spectrum (``scipy.signal.savgol_filter``, ``mode="interp"``).
- ``mean_center`` ``{mean}``: subtract the training mean spectrum (learned by :meth:`fit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.signal import savgol_filter

__all__ = [
    "Baseline",
    "Crop",
    "MeanCenter",
    "Pipeline",
    "SavitzkyGolay",
    "Snv",
    "Step",
    "step_from_dict",
]

Array = NDArray[np.float64]


class Step:
    """One preprocessing step. ``apply`` takes spectra as rows ``(n, p)`` on ``axis`` ``(p,)``
    and returns the transformed spectra and their axis."""

    name = ""

    def fit(self, x: Array, axis: Array) -> Step:
        """A copy of this step that learned what it needs from training spectra ``x``."""
        return self

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Crop(Step):
    low: float
    high: float
    name = "crop"

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"crop: low ({self.low}) must be below high ({self.high})")

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        keep = (axis >= self.low) & (axis <= self.high)
        if not keep.any():
            raise ValueError(
                f"crop: no axis point in [{self.low}, {self.high}]"
                f" (the axis spans {axis.min():g}..{axis.max():g})"
            )
        return x[:, keep], axis[keep]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Baseline(Step):
    degree: int = 2
    name = "baseline"

    def __post_init__(self) -> None:
        if not 0 <= self.degree <= 10:
            raise ValueError(f"baseline: degree must be 0..10, not {self.degree}")

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        if len(axis) <= self.degree:
            raise ValueError(f"baseline: {len(axis)} points cannot fit degree {self.degree}")
        # A scaled axis keeps the Vandermonde matrix well conditioned; one least-squares solve
        # fits every spectrum of the batch at once.
        span = axis.max() - axis.min()
        t = (axis - axis.mean()) / (span if span else 1.0)
        basis = np.vander(t, self.degree + 1)
        coefficients, *_ = np.linalg.lstsq(basis, x.T, rcond=None)
        return x - (basis @ coefficients).T, axis

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "degree": self.degree}


@dataclass(frozen=True)
class Snv(Step):
    name = "snv"

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        if x.shape[1] < 2:
            raise ValueError("snv: needs at least 2 points")
        std = x.std(axis=1, ddof=1, keepdims=True)
        std[std == 0] = 1.0  # a flat spectrum stays flat (zero) rather than NaN
        return (x - x.mean(axis=1, keepdims=True)) / std, axis

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name}


@dataclass(frozen=True)
class SavitzkyGolay(Step):
    window: int = 15
    polyorder: int = 2
    deriv: int = 0
    name = "savgol"

    def __post_init__(self) -> None:
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"savgol: window must be odd and at least 3, not {self.window}")
        if not 0 <= self.polyorder < self.window:
            raise ValueError(f"savgol: polyorder must be 0..window-1, not {self.polyorder}")
        if not 0 <= self.deriv <= self.polyorder:
            raise ValueError(f"savgol: deriv must be 0..polyorder, not {self.deriv}")

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        if x.shape[1] < self.window:
            raise ValueError(f"savgol: {x.shape[1]} points, fewer than the window {self.window}")
        out = savgol_filter(x, self.window, self.polyorder, deriv=self.deriv, axis=1, mode="interp")
        return np.asarray(out, dtype=np.float64), axis

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "window": self.window,
            "polyorder": self.polyorder,
            "deriv": self.deriv,
        }


@dataclass(frozen=True)
class MeanCenter(Step):
    mean: tuple[float, ...] | None = None
    name = "mean_center"

    def fit(self, x: Array, axis: Array) -> MeanCenter:
        return MeanCenter(tuple(float(v) for v in x.mean(axis=0)))

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        if self.mean is None:
            raise ValueError("mean_center: not fitted (no training mean)")
        if len(self.mean) != x.shape[1]:
            raise ValueError(
                f"mean_center: the training mean has {len(self.mean)} points, the spectra"
                f" {x.shape[1]}"
            )
        return x - np.asarray(self.mean), axis

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "mean": None if self.mean is None else list(self.mean)}


_STEPS: dict[str, type[Step]] = {
    "crop": Crop,
    "baseline": Baseline,
    "snv": Snv,
    "savgol": SavitzkyGolay,
    "mean_center": MeanCenter,
}


def step_from_dict(spec: Mapping[str, Any]) -> Step:
    """The step a model file records; ``ValueError`` naming what is wrong."""
    fields = dict(spec)
    name = fields.pop("step", None)
    kind = _STEPS.get(str(name))
    if kind is None:
        raise ValueError(f"unknown preprocessing step {name!r}; known: {', '.join(_STEPS)}")
    if kind is MeanCenter and fields.get("mean") is not None:
        fields["mean"] = tuple(float(v) for v in fields["mean"])
    try:
        return kind(**fields)
    except TypeError as exc:
        raise ValueError(f"step {name!r}: {exc}") from None


@dataclass(frozen=True)
class Pipeline:
    """Steps applied in order."""

    steps: tuple[Step, ...]

    @classmethod
    def from_dicts(cls, specs: Sequence[Mapping[str, Any]]) -> Pipeline:
        return cls(tuple(step_from_dict(spec) for spec in specs))

    def to_dicts(self) -> list[dict[str, Any]]:
        return [step.to_dict() for step in self.steps]

    def fit(self, x: Array, axis: Array) -> Pipeline:
        """Fit each step on the output of the previous ones; return the fitted pipeline."""
        fitted = []
        for step in self.steps:
            step = step.fit(x, axis)
            x, axis = step.apply(x, axis)
            fitted.append(step)
        return Pipeline(tuple(fitted))

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        axis = np.asarray(axis, dtype=np.float64)
        if x.shape[1] != len(axis):
            raise ValueError(f"{x.shape[1]} points per spectrum on an axis of {len(axis)}")
        for step in self.steps:
            x, axis = step.apply(x, axis)
        return x, axis
