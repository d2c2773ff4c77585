"""Spectral preprocessing for chemometric models: each step a small, recorded, replayable
transformation of a batch of spectra (rows) on one axis.

A model file records its steps as plain dictionaries (:meth:`Step.to_dict`), so the gateway
applies exactly what was fitted. Steps that learn from the training data (mean centring) are
*fitted* once and keep what they learned. Everything is vectorised over the batch; nothing here
loops over points in Python.

Steps (``{"step": name, ...}``; integer parameters must be JSON integers, bounds finite
numbers — a step refuses anything else with a ``ValueError`` naming the step and the field):

- ``crop`` ``{low, high}``: keep the points whose axis value lies in ``[low, high]``.
- ``baseline`` ``{degree}``: subtract, per spectrum, the least-squares polynomial of ``degree``
  in the axis (a smooth fluorescence background).
- ``snv``: standard normal variate — per spectrum, subtract its mean and divide by its standard
  deviation (``ddof=1``); removes multiplicative scatter and intensity changes.
- ``savgol`` ``{window, polyorder, deriv}``: Savitzky-Golay smoothing (``deriv`` 0) or
  derivative along each spectrum (``scipy.signal.savgol_filter``, ``mode="interp"``).
- ``normalize`` ``{low, high}``: divide each spectrum by its mean over the points in
  ``[low, high]`` — an internal-standard band (water's bending band near 1640 cm-1 in aqueous
  media) — which cancels changes of laser power, integration time and optical throughput.
- ``mean_center`` ``{mean}``: subtract the training mean spectrum (learned by :meth:`fit`).

:meth:`Pipeline.apply` is the reference implementation. A soft sensor applies the same steps to
one spectrum at a time on an axis that never changes, so :meth:`Pipeline.compile` does once,
per axis, everything that depends only on the axis (which points a crop keeps, an orthonormal
basis for the baseline, the Savitzky-Golay weights and edge fits) and returns a
:class:`CompiledPipeline`: a few array operations per spectrum, equal to :meth:`Pipeline.apply`
to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Baseline",
    "CompiledPipeline",
    "Crop",
    "MeanCenter",
    "Normalize",
    "Pipeline",
    "SavitzkyGolay",
    "Snv",
    "Step",
    "Transform",
    "step_from_dict",
]

Array = NDArray[np.float64]
#: A compiled step: spectra ``(n, p)`` in, spectra out, for one fixed input axis.
Transform = Callable[[Array], Array]


def _integer(step: str, name: str, value: Any) -> int:
    """``value`` as an ``int``: an integer (Python's or numpy's), never a bool or a float —
    ``15.0`` would load and then fail in numpy on the first spectrum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{step}: {name} must be an integer, not {value!r}")
    return int(value)


def _real(step: str, name: str, value: Any) -> float:
    """``value`` as a finite ``float``: an integer or a float, never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{step}: {name} must be a number, not {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{step}: {name} must be finite, not {value!r}")
    return number


def _set(step: Step, **values: Any) -> None:
    """Store checked values on a frozen step."""
    for name, value in values.items():
        object.__setattr__(step, name, value)


class Step:
    """One preprocessing step. ``apply`` takes spectra as rows ``(n, p)`` on ``axis`` ``(p,)``
    and returns the transformed spectra and their axis."""

    name = ""

    def fit(self, x: Array, axis: Array) -> Step:
        """A copy of this step that learned what it needs from training spectra ``x``."""
        return self

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def compile(self, axis: Array) -> tuple[Transform, Array]:
        """What :meth:`apply` does to spectra on exactly this ``axis``, with the work that
        depends only on the axis done now; and the axis after the step. Raises the errors
        :meth:`apply` would raise for this axis."""
        _, out_axis = self.apply(np.zeros((1, len(axis))), axis)

        def transform(x: Array) -> Array:
            return self.apply(x, axis)[0]

        return transform, out_axis

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Crop(Step):
    low: float
    high: float
    name = "crop"

    def __post_init__(self) -> None:
        _set(self, low=_real(self.name, "low", self.low), high=_real(self.name, "high", self.high))
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

    def compile(self, axis: Array) -> tuple[Transform, Array]:
        _, out_axis = self.apply(np.zeros((1, len(axis))), axis)
        kept = np.flatnonzero((axis >= self.low) & (axis <= self.high))
        if kept[-1] - kept[0] + 1 == kept.size:
            # A monotonic axis keeps one run of points: a slice is a view, no copy.
            run = slice(int(kept[0]), int(kept[-1]) + 1)
            return lambda x: x[:, run], out_axis
        return lambda x: x[:, kept], out_axis

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Baseline(Step):
    degree: int = 2
    name = "baseline"

    def __post_init__(self) -> None:
        _set(self, degree=_integer(self.name, "degree", self.degree))
        if not 0 <= self.degree <= 10:
            raise ValueError(f"baseline: degree must be 0..10, not {self.degree}")

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        basis = self._basis(axis)
        # One least-squares solve fits every spectrum of the batch at once.
        coefficients, *_ = np.linalg.lstsq(basis, x.T, rcond=None)
        return x - (basis @ coefficients).T, axis

    def compile(self, axis: Array) -> tuple[Transform, Array]:
        # The least-squares fit is the orthogonal projection onto the basis' column space:
        # with an orthonormal basis Q of it, the residual is x - (x Q) Qᵀ, two thin products.
        q, _ = np.linalg.qr(self._basis(axis))
        q_t = np.ascontiguousarray(q.T)
        return lambda x: x - (x @ q) @ q_t, axis

    def _basis(self, axis: Array) -> Array:
        if len(axis) <= self.degree:
            raise ValueError(f"baseline: {len(axis)} points cannot fit degree {self.degree}")
        # A scaled axis keeps the Vandermonde matrix well conditioned.
        span = axis.max() - axis.min()
        t = (axis - axis.mean()) / (span if span else 1.0)
        return np.vander(t, self.degree + 1)

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

    def compile(self, axis: Array) -> tuple[Transform, Array]:
        if len(axis) < 2:
            raise ValueError("snv: needs at least 2 points")
        points, dof = len(axis), len(axis) - 1

        def transform(x: Array) -> Array:
            # The same statistics as apply, through numpy's ufuncs directly: x.mean and x.std
            # cost several microseconds each in Python-level overhead, and this runs per
            # spectrum.
            centred = x - np.add.reduce(x, axis=1, keepdims=True) / points
            std = np.sqrt(np.add.reduce(np.square(centred), axis=1) / dof)
            std[std == 0] = 1.0
            centred /= std[:, None]
            return centred

        return transform, axis

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name}


_SAVGOL = ("window", "polyorder", "deriv")


@dataclass(frozen=True)
class SavitzkyGolay(Step):
    window: int = 15
    polyorder: int = 2
    deriv: int = 0
    name = "savgol"

    def __post_init__(self) -> None:
        _set(self, **{name: _integer(self.name, name, getattr(self, name)) for name in _SAVGOL})
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"savgol: window must be odd and at least 3, not {self.window}")
        if not 0 <= self.polyorder < self.window:
            raise ValueError(f"savgol: polyorder must be 0..window-1, not {self.polyorder}")
        if not 0 <= self.deriv <= self.polyorder:
            raise ValueError(f"savgol: deriv must be 0..polyorder, not {self.deriv}")

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        if x.shape[1] < self.window:
            raise ValueError(f"savgol: {x.shape[1]} points, fewer than the window {self.window}")
        from scipy.signal import savgol_filter  # scipy.signal takes ~1 s to import: not at start-up

        out = savgol_filter(x, self.window, self.polyorder, deriv=self.deriv, axis=1, mode="interp")
        return np.asarray(out, dtype=np.float64), axis

    def compile(self, axis: Array) -> tuple[Transform, Array]:
        points = len(axis)
        if points < self.window:
            raise ValueError(f"savgol: {points} points, fewer than the window {self.window}")
        # Inside, each output point is a fixed weighted sum of the window around it. At each
        # edge, mode="interp" fits one polynomial to the first (last) window of points and
        # evaluates it on the half window: also a fixed linear map, precomputed here.
        half = self.window // 2
        # The centre point's weights: what scipy's savgol_coeffs(use="dot") gives, computed
        # here (importing scipy.signal costs about a second of start-up).
        weights = self._edge_map(np.array([float(half)]))[0]
        left = self._edge_map(np.arange(half, dtype=np.float64))
        right = self._edge_map(np.arange(self.window - half, self.window, dtype=np.float64))
        left_t, right_t = np.ascontiguousarray(left.T), np.ascontiguousarray(right.T)
        kernel = np.ascontiguousarray(weights[::-1])  # convolution flips what a dot product reads
        window, tail = self.window, points - self.window

        def transform(x: Array) -> Array:
            out = np.empty_like(x)
            # np.convolve per spectrum is several times faster than a matrix product over a
            # sliding-window view, which numpy copies first.
            for row, spectrum in enumerate(x):
                out[row, half : points - half] = np.convolve(spectrum, kernel, "valid")
            out[:, :half] = x[:, :window] @ left_t
            out[:, points - half :] = x[:, tail:] @ right_t
            return out

        return transform, axis

    def _edge_map(self, at: Array) -> Array:
        """The matrix taking a window of values to the ``deriv``-th derivative, at positions
        ``at`` (0 = the window's first point), of their least-squares polynomial."""
        positions = np.arange(self.window, dtype=np.float64)
        fit = np.linalg.pinv(np.vander(positions, self.polyorder + 1, increasing=True))
        powers = np.arange(self.polyorder + 1)
        # d^m/dt^m t^j = j!/(j-m)! t^(j-m) for j >= m, else 0.
        factors = np.array([math.perm(int(j), self.deriv) for j in powers], dtype=np.float64)
        exponents = np.clip(powers - self.deriv, 0, None)
        evaluate = factors * at[:, None] ** exponents
        return np.asarray(evaluate @ fit, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "window": self.window,
            "polyorder": self.polyorder,
            "deriv": self.deriv,
        }


@dataclass(frozen=True)
class Normalize(Step):
    low: float
    high: float
    name = "normalize"

    def __post_init__(self) -> None:
        _set(self, low=_real(self.name, "low", self.low), high=_real(self.name, "high", self.high))
        if not self.low < self.high:
            raise ValueError(f"normalize: low ({self.low}) must be below high ({self.high})")

    def apply(self, x: Array, axis: Array) -> tuple[Array, Array]:
        band = (axis >= self.low) & (axis <= self.high)
        if not band.any():
            raise ValueError(
                f"normalize: no axis point in [{self.low}, {self.high}]"
                f" (the axis spans {axis.min():g}..{axis.max():g})"
            )
        level = x[:, band].mean(axis=1, keepdims=True)
        level[level == 0] = 1.0  # a spectrum without the band stays as it is rather than inf
        return x / level, axis

    def compile(self, axis: Array) -> tuple[Transform, Array]:
        self.apply(np.zeros((1, len(axis))), axis)  # the same errors as apply
        band = np.flatnonzero((axis >= self.low) & (axis <= self.high))
        points = band.size
        run = slice(int(band[0]), int(band[-1]) + 1) if band[-1] - band[0] + 1 == points else band

        def transform(x: Array) -> Array:
            level = np.add.reduce(x[:, run], axis=1, keepdims=True) / points
            level[level == 0] = 1.0
            return x / level

        return transform, axis

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class MeanCenter(Step):
    mean: tuple[float, ...] | None = None
    name = "mean_center"

    def __post_init__(self) -> None:
        if self.mean is None:
            return
        if isinstance(self.mean, str | bytes | Mapping) or not isinstance(
            self.mean, Sequence | np.ndarray
        ):
            raise ValueError(f"mean_center: mean must be a list of numbers, not {self.mean!r}")
        _set(self, mean=tuple(_real(self.name, f"mean[{i}]", v) for i, v in enumerate(self.mean)))

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

    def compile(self, axis: Array) -> tuple[Transform, Array]:
        self.apply(np.zeros((1, len(axis))), axis)  # the same errors as apply
        mean = np.asarray(self.mean, dtype=np.float64)
        return lambda x: x - mean, axis

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "mean": None if self.mean is None else list(self.mean)}


_STEPS: dict[str, type[Step]] = {
    "crop": Crop,
    "baseline": Baseline,
    "snv": Snv,
    "savgol": SavitzkyGolay,
    "normalize": Normalize,
    "mean_center": MeanCenter,
}


def step_from_dict(spec: Mapping[str, Any]) -> Step:
    """The step a model file records; ``ValueError`` naming what is wrong."""
    fields = dict(spec)
    name = fields.pop("step", None)
    kind = _STEPS.get(str(name))
    if kind is None:
        raise ValueError(f"unknown preprocessing step {name!r}; known: {', '.join(_STEPS)}")
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

    def compile(self, axis: Array) -> CompiledPipeline:
        """This pipeline for spectra on ``axis`` only, with the per-axis work done now.

        Raises ``ValueError`` as :meth:`apply` would for this axis (an empty crop, too few
        points for a step, a training mean of another length).
        """
        source = np.asarray(axis, dtype=np.float64)
        out_axis = source
        transforms = []
        for step in self.steps:
            transform, out_axis = step.compile(out_axis)
            transforms.append(transform)
        return CompiledPipeline(tuple(transforms), source, out_axis)


@dataclass(frozen=True, eq=False)
class CompiledPipeline:
    """A :class:`Pipeline` bound to one input axis: call it with spectra ``(n, p)`` on
    :attr:`axis` (float64) to get the preprocessed spectra on :attr:`output_axis`.

    It does not check its input: the caller (a model) checks the axis once and the shape per
    call, so the per-spectrum path stays a handful of array operations.
    """

    transforms: tuple[Transform, ...]
    axis: Array
    output_axis: Array

    def __call__(self, x: Array) -> Array:
        for transform in self.transforms:
            x = transform(x)
        return x
