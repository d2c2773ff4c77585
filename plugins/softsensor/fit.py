"""Fitting a soft-sensor model: one PLS1 per target with scikit-learn, cross-validated.

Only ``patgw model fit`` (and tests) import this module; the gateway predicts with
:mod:`plugins.softsensor.model` alone, without scikit-learn.

For each target, on the samples where it was measured:

1. **Cross-validation** — leave-one-batch-out when the samples name 3 or more batches (a new
   batch is what the model will meet in production), else ``folds`` contiguous blocks of the
   samples in the order given — time order, as :func:`~plugins.softsensor.data.match` returns
   them (neighbouring samples of one run are alike; shuffled folds would flatter the model).
   One PLS fit with the most components per fold gives the predictions of every smaller
   model too: PLS components are found one after another, so the first ``A`` of a larger
   model *are* the ``A``-component model.
2. **Components** — the smallest ``A`` whose RMSECV is within 2 % of the lowest RMSECV over
   1..``max_components``: extra components that buy less than that mostly fit noise, and a
   leaner model extrapolates more gracefully. ``max_components`` is capped so that every
   cross-validation training set keeps at least 2 more samples than components.
3. **Final model** on all of the target's samples, its scores taken about the mean of their
   preprocessed spectra (the target's ``center``), with its outlier limits at ``confidence``:
   T² for a new observation ``A(n²-1)/(n(n-A)) · F(A, n-A)``; Q by Box's approximation
   ``g·χ²(h)`` with ``g = var(Q)/(2·mean(Q))``, ``h = 2·mean(Q)²/var(Q)`` over the training
   spectra's Q.

The spectra are preprocessed once with the whole pipeline; only the mean-centring learns from
the data, and scikit-learn re-centres each cross-validation training set itself, so no
held-out sample leaks into the model that predicts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from sklearn.cross_decomposition import PLSRegression
from sklearn.model_selection import KFold, LeaveOneGroupOut

from gateway import SpectralAxis, validate_ucum

from .model import PlsModel, Target, content_hash, model_to_dict
from .preprocess import MeanCenter, Pipeline

__all__ = [
    "DEFAULT_PREPROCESSING",
    "SELECTION_TOLERANCE",
    "FitReport",
    "TargetReport",
    "fit_model",
]

Array = NDArray[np.float64]

#: The preprocessing ``patgw model fit`` uses unless told otherwise (the fit appends
#: ``mean_center``): keep 400-1800 cm-1 (every band of interest, none of the detector's
#: noisy ends), remove a quadratic fluorescence background, smooth over 15 points, and divide
#: by the water band (1580-1700 cm-1) as an internal standard against intensity changes.
#:
#: Chosen on emulator spectra (firmware_stubs.raman, 2032 points, 0.5 s integration, random
#: compositions: glucose 0-8 g/L, lactate 0-4, glutamine 0-6 mM, VCD 0.3-20e6/mL, titer
#: 0-3 g/L): 90 training spectra at 0.5 s, 5-fold CV; held-out RMSEP in g/L, glucose /
#: lactate, over 60 spectra each at 0.5 s, at 0.3-0.7 s and at 0.45-0.55 s integration (an
#: intensity change the training never saw, like a drifting laser), mean of seeds 1-5::
#:
#:     candidate (then mean_center)          0.5 s        0.3-0.7 s    0.45-0.55 s
#:     crop 400-1800                         0.121 0.404  0.892 0.515  0.279 0.438
#:     crop, baseline 2                      0.129 0.409  0.994 0.562  0.310 0.452
#:     crop, baseline 2, savgol 9            0.109 0.235  1.018 0.554  0.308 0.303
#:     crop, baseline 2, savgol 15           0.107 0.210  1.019 0.552  0.307 0.280
#:     crop, baseline 2, savgol 21           0.107 0.203  1.020 0.555  0.307 0.270
#:     crop, baseline 3, savgol 15           0.107 0.222  1.020 0.566  0.309 0.287
#:     crop, savgol 15                       0.100 0.209  0.906 0.429  0.277 0.256
#:     baseline 2, savgol 15 (no crop)       0.103 0.224  0.936 0.477  0.288 0.274
#:     crop, baseline 2, snv                 0.496 0.469  0.515 0.476  0.527 0.514
#:     crop, baseline 2, snv, savgol 15      0.462 0.342  0.466 0.351  0.472 0.349
#:     crop, baseline 2, savgol 15, snv      0.392 0.394  0.411 0.387  0.405 0.407
#:     crop, baseline 2, savgol 21, snv      0.377 0.400  0.390 0.394  0.385 0.411
#:     crop, baseline 2, normalize 1580-1700 0.189 0.417  0.207 0.423  0.225 0.436
#:     ... savgol 9, normalize 1580-1700     0.176 0.248  0.203 0.270  0.223 0.276
#:     ... savgol 15, normalize 1580-1700 *  0.176 0.229  0.204 0.260  0.222 0.249
#:     ... savgol 21, normalize 1580-1700    0.175 0.219  0.203 0.255  0.221 0.237
#:     crop, baseline 3, savgol 15, norm.    0.177 0.237  0.205 0.265  0.225 0.255
#:     ... savgol 15, normalize 1550-1730    0.206 0.238  0.217 0.273  0.237 0.264
#:     ... savgol 15, normalize 1600-1680    0.187 0.228  0.207 0.260  0.217 0.253
#:
#: (savgol: polyorder 2; "..." = crop, baseline 2.) Without normalisation the model is the
#: most accurate at the training intensity but misses the 0.3 g/L target after a ±10 %
#: change, and T² and Q do not flag such a change: it stays within the shot noise. SNV
#: removes intensity too but costs three to four times the glucose error, more than the
#: target: in these spectra the analytes' own bands dominate the spectrum's spread, so
#: dividing by it divides by glucose. The water band does not depend on the analytes. Window
#: 15 rather than 21 (equal here) keeps narrow bands such as phenylalanine's (8 cm-1) sharper.
DEFAULT_PREPROCESSING: tuple[Mapping[str, Any], ...] = (
    {"step": "crop", "low": 400.0, "high": 1800.0},
    {"step": "baseline", "degree": 2},
    {"step": "savgol", "window": 15, "polyorder": 2, "deriv": 0},
    {"step": "normalize", "low": 1580.0, "high": 1700.0},
)

#: A model with more components must lower the RMSECV by more than this fraction.
SELECTION_TOLERANCE = 0.02


@dataclass(frozen=True)
class TargetReport:
    """How one target's model did in calibration and cross-validation."""

    name: str
    unit: str
    #: Samples with a reference value for this target.
    n: int
    #: RMSECV of the 1-, 2-, … component models (index ``A - 1``).
    rmsecv: tuple[float, ...]
    #: The number of components chosen (or forced).
    components: int
    #: Root mean square error of calibration (the final model on its own training samples).
    rmsec: float
    #: R² of the final model on its training samples, and of the cross-validated predictions.
    r2: float
    r2cv: float
    t2_limit: float
    q_limit: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "n": self.n,
            "rmsecv": list(self.rmsecv),
            "components": self.components,
            "rmsec": self.rmsec,
            "r2": self.r2,
            "r2cv": self.r2cv,
            "t2_limit": self.t2_limit,
            "q_limit": self.q_limit,
        }


@dataclass(frozen=True)
class FitReport:
    """The fit's figures of merit, per target in the model's order."""

    n_samples: int
    #: How cross-validation split the samples, e.g. ``"5-fold, contiguous blocks"``.
    cv: str
    targets: tuple[TargetReport, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "cv": self.cv,
            "targets": [t.to_dict() for t in self.targets],
        }


def fit_model(
    spectra: NDArray[np.floating[Any]],
    axis: SpectralAxis,
    references: NDArray[np.floating[Any]],
    targets: Sequence[tuple[str, str]],
    *,
    preprocessing: Sequence[Mapping[str, Any]] = DEFAULT_PREPROCESSING,
    groups: Sequence[str] | None = None,
    folds: int = 5,
    components: int | None = None,
    max_components: int = 15,
    confidence: float = 0.99,
    model_id: str,
    version: str,
    description: str = "",
    spectrum_unit: str,
    training: Mapping[str, Any] | None = None,
) -> tuple[PlsModel, FitReport]:
    """Fit one PLS1 per target and return the model (with its hash) and the report.

    ``spectra`` ``(n, len(axis))`` in time order (the cross-validation blocks are contiguous
    runs of rows); ``references`` ``(n, k)`` in the units of ``targets`` (``(name, unit)``
    pairs), NaN where a target was not measured. ``groups`` names each sample's batch.
    ``components`` forces the number of components of every target. ``ValueError`` with one
    line saying what is wrong for unusable input (a blank ``model_id`` or ``version`` among
    it).
    """
    for name, text in (("model_id", model_id), ("version", version)):
        if not text.strip():
            raise ValueError(f"{name} must not be empty")
    x, y = _checked_inputs(spectra, axis, references, targets, groups, confidence)
    for name, value, least in (("folds", folds, 2), ("max_components", max_components, 1)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, not {value}")
    if components is not None and components < 1:
        raise ValueError(f"components must be at least 1, not {components}")
    measured = ~np.isnan(y).all(axis=1)
    if not measured.any():
        raise ValueError("no sample has a reference value")
    x, y = x[measured], y[measured]
    batches = None if groups is None else np.asarray(groups, dtype=object)[measured]
    pipeline = _fitted_pipeline(preprocessing, x, axis)
    x_pre, _ = pipeline.apply(x, axis.values)
    fitted, reports, cv = _fit_targets(
        x_pre, y, targets, batches, folds, components, max_components, confidence
    )
    report = FitReport(n_samples=int(measured.sum()), cv=cv, targets=reports)
    model = PlsModel(
        id=model_id,
        version=version,
        description=description,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        axis=axis,
        spectrum_unit=validate_ucum(spectrum_unit),
        preprocessing=pipeline,
        targets=fitted,
        confidence=confidence,
        training={**_training_record(report, pipeline), **dict(training or {})},
    )
    return _with_hash(model), report


def _checked_inputs(
    spectra: NDArray[np.floating[Any]],
    axis: SpectralAxis,
    references: NDArray[np.floating[Any]],
    targets: Sequence[tuple[str, str]],
    groups: Sequence[str] | None,
    confidence: float,
) -> tuple[Array, Array]:
    x = np.asarray(spectra, dtype=np.float64)
    y = np.asarray(references, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(axis):
        raise ValueError(f"spectra of shape {x.shape} on an axis of {len(axis)} points")
    if not np.isfinite(x).all():
        raise ValueError("spectra contain values that are not finite")
    if y.ndim == 1:
        y = y[:, None]
    if y.shape != (len(x), len(targets)):
        raise ValueError(f"references of shape {y.shape}, expected {(len(x), len(targets))}")
    if np.isinf(y).any():
        raise ValueError("references contain infinities")
    names = [name for name, _ in targets]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"target names must be present and distinct, not {names}")
    for _, unit in targets:
        validate_ucum(unit)
    if groups is not None and len(groups) != len(x):
        raise ValueError(f"{len(groups)} batch names for {len(x)} samples")
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), not {confidence}")
    return x, y


def _fitted_pipeline(
    preprocessing: Sequence[Mapping[str, Any]], x: Array, axis: SpectralAxis
) -> Pipeline:
    """The steps with ``mean_center`` last (appended if absent), fitted on ``x``."""
    steps = Pipeline.from_dicts(preprocessing).steps
    centring = [i for i, step in enumerate(steps) if isinstance(step, MeanCenter)]
    if centring and centring != [len(steps) - 1]:
        raise ValueError("preprocessing: mean_center must be the last step, and only once")
    if not centring:
        steps = (*steps, MeanCenter())
    return Pipeline(steps).fit(x, axis.values)


def _fit_targets(
    x_pre: Array,
    y: Array,
    targets: Sequence[tuple[str, str]],
    batches: NDArray[Any] | None,
    folds: int,
    components: int | None,
    max_components: int,
    confidence: float,
) -> tuple[tuple[Target, ...], tuple[TargetReport, ...], str]:
    """Each target's model and report, on the samples where it was measured; and the
    cross-validation scheme (per target when they differ)."""
    fitted: list[Target] = []
    reports: list[TargetReport] = []
    schemes: dict[str, str] = {}
    for j, (name, unit) in enumerate(targets):
        rows = ~np.isnan(y[:, j])
        splits, schemes[name] = _splits(
            int(rows.sum()), None if batches is None else batches[rows], folds
        )
        target, report = _fit_target(
            name, unit, x_pre[rows], y[rows, j], splits, components, max_components, confidence
        )
        fitted.append(target)
        reports.append(report)
    if len(set(schemes.values())) == 1:
        cv = next(iter(schemes.values()))
    else:
        cv = "; ".join(f"{name}: {scheme}" for name, scheme in schemes.items())
    return tuple(fitted), tuple(reports), cv


def _splits(
    n: int, batches: NDArray[Any] | None, folds: int
) -> tuple[list[tuple[NDArray[np.intp], NDArray[np.intp]]], str]:
    """Cross-validation (train, test) index pairs and a description of the scheme."""
    if batches is not None and len(set(batches)) >= 3:
        count = len(set(batches))
        splits = list(LeaveOneGroupOut().split(np.zeros(n), groups=batches))
        return splits, f"leave one batch out ({count} batches)"
    if n < 4:
        raise ValueError(f"{n} samples are too few to cross-validate (at least 4)")
    blocks = min(folds, n)
    return list(KFold(n_splits=blocks).split(np.zeros(n))), f"{blocks}-fold, contiguous blocks"


def _fit_target(
    name: str,
    unit: str,
    x: Array,
    y: Array,
    splits: Sequence[tuple[NDArray[np.intp], NDArray[np.intp]]],
    components: int | None,
    max_components: int,
    confidence: float,
) -> tuple[Target, TargetReport]:
    n = len(y)
    if n and np.ptp(y) == 0:
        raise ValueError(f"{name}: every reference value is {y[0]:g}; a model needs variation")
    # Each CV training set (and the final one) must keep 2 samples more than components:
    # the T² limit needs n - A >= 1, and a model as large as its data fits nothing but noise.
    cap = min(min(len(train) for train, _ in splits) - 2, x.shape[1])
    top = max_components if components is None else components
    if components is not None and components > cap:
        raise ValueError(
            f"{name}: {components} components need more samples ({n} measured; at most {cap})"
        )
    top = min(top, cap)
    if top < 1:
        raise ValueError(f"{name}: {n} samples are too few to fit a model")
    cv_predictions, cv_q = _cross_validated(x, y, splits, top)
    press = ((cv_predictions - y[:, None]) ** 2).sum(axis=0)
    rmsecv = np.sqrt(press / n)
    chosen = components or _choose(rmsecv)
    pls = PLSRegression(n_components=chosen, scale=False).fit(x, y)
    target, fitted = _target(
        name, unit, pls, x, y, confidence, float(rmsecv[chosen - 1]), cv_q[:, chosen - 1]
    )
    total = float(((y - y.mean()) ** 2).sum())
    report = TargetReport(
        name=name,
        unit=unit,
        n=n,
        rmsecv=tuple(float(v) for v in rmsecv),
        components=chosen,
        rmsec=math.sqrt(float(np.mean((fitted - y) ** 2))),
        r2=_r2(float(((fitted - y) ** 2).sum()), total),
        r2cv=_r2(float(press[chosen - 1]), total),
        t2_limit=target.t2_limit,
        q_limit=target.q_limit,
    )
    return target, report


def _cross_validated(
    x: Array, y: Array, splits: Sequence[tuple[NDArray[np.intp], NDArray[np.intp]]], top: int
) -> tuple[Array, Array]:
    """Held-out predictions ``(n, top)`` of the 1..``top``-component models, and each sample's
    held-out Q residual ``(n, top)`` under them.

    The first ``a`` components of a PLS fit are the ``a``-component fit (NIPALS: PᵀW is upper
    triangular), so one model per fold gives every smaller one."""
    predictions = np.empty((len(y), top))
    q = np.empty((len(y), top))
    for train, test in splits:
        pls = PLSRegression(n_components=top, scale=False).fit(x[train], y[train])
        coefficients = _coefficients_by_components(pls)
        centred = x[test] - x[train].mean(axis=0)
        predictions[test] = centred @ coefficients + y[train].mean()
        scores = centred @ np.asarray(pls.x_rotations_, dtype=np.float64)
        loadings = np.asarray(pls.x_loadings_, dtype=np.float64)
        residual = centred.copy()
        for a in range(top):  # take one component more out of the residual each time
            residual -= np.outer(scores[:, a], loadings[:, a])
            q[test, a] = np.einsum("ij,ij->i", residual, residual)
    return predictions, q


def _coefficients_by_components(pls: Any) -> Array:
    """``(p, A)``: column ``a`` holds the regression coefficients of the first ``a + 1``
    components (on centred spectra, unscaled: ``scale=False``)."""
    rotations = np.asarray(pls.x_rotations_, dtype=np.float64)
    y_loadings = np.asarray(pls.y_loadings_, dtype=np.float64)[0]
    return np.cumsum(rotations * y_loadings, axis=1)


def _choose(rmsecv: Array) -> int:
    """The fewest components whose RMSECV is within :data:`SELECTION_TOLERANCE` of the
    lowest."""
    good = np.flatnonzero(rmsecv <= (1.0 + SELECTION_TOLERANCE) * rmsecv.min())
    return int(good[0]) + 1


def _target(
    name: str,
    unit: str,
    pls: Any,
    x: Array,
    y: Array,
    confidence: float,
    rmsecv: float,
    cv_q: Array,
) -> tuple[Target, Array]:
    """The file's form of a fitted PLS1, with its limits; and its fitted values.

    The Q limit comes from the cross-validated residuals ``cv_q`` (each sample's, from the
    model that did not see it): a model's own training spectra fit it better than new ones do,
    and with few samples a limit from them flagged about 1 in 9 new in-range spectra."""
    coefficients = np.asarray(pls.coef_, dtype=np.float64)[0]
    # scikit-learn centres x internally; the file's model takes the preprocessed spectrum as
    # is, so the intercept absorbs the training mean: y = x @ b + (ȳ - x̄ @ b).
    intercept = float(y.mean() - x.mean(axis=0) @ coefficients)
    rotations = np.asarray(pls.x_rotations_, dtype=np.float64)
    loadings = np.asarray(pls.x_loadings_, dtype=np.float64)
    # Scores about this target's own centre, as scikit-learn's transform takes them: for a
    # target measured on only some samples the model-wide centre (what mean_center removed)
    # is not theirs, and T² about it would carry an offset its score variance does not count.
    center = x.mean(axis=0)
    centred = x - center
    scores = centred @ rotations
    n, a = x.shape[0], rotations.shape[1]
    target = Target(
        name=name,
        unit=unit,
        components=a,
        coefficients=coefficients,
        intercept=intercept,
        center=center,
        rotations=rotations,
        loadings=loadings,
        score_variance=scores.var(axis=0, ddof=1),
        t2_limit=t2_limit(n, a, confidence),
        q_limit=q_limit(cv_q, confidence),
        calibration_range=(float(y.min()), float(y.max())),
        rmsecv=rmsecv,
    )
    return target, x @ coefficients + intercept


def t2_limit(n: int, components: int, confidence: float) -> float:
    """Hotelling T² limit for a *new* observation of a model with ``components`` fitted on
    ``n`` samples: ``A(n²-1)/(n(n-A)) · F_conf(A, n-A)``."""
    a = components
    return float(a * (n * n - 1) / (n * (n - a)) * stats.f.ppf(confidence, a, n - a))


def q_limit(q: Array, confidence: float) -> float:
    """Q (squared residual) limit by Box's approximation: the training Q values as a scaled
    χ², ``g·χ²_conf(h)`` with ``g = var/(2·mean)`` and ``h = 2·mean²/var`` (sample variance).
    """
    mean, variance = float(np.mean(q)), float(np.var(q, ddof=1))
    if variance <= 0.0 or mean <= 0.0:
        return max(mean, np.finfo(np.float64).tiny)  # all residuals equal: nothing to scale
    g, h = variance / (2.0 * mean), 2.0 * mean * mean / variance
    return float(g * stats.chi2.ppf(confidence, h))


def _r2(residual: float, total: float) -> float:
    return 1.0 - residual / total if total > 0 else math.nan


def _training_record(report: FitReport, pipeline: Pipeline) -> dict[str, Any]:
    """What the model file records about how it was fitted (the caller adds its sources)."""
    return {
        "n_samples": report.n_samples,
        "cv": report.cv,
        "selection": (f"fewest components with RMSECV <= {1 + SELECTION_TOLERANCE:g} x the lowest"),
        "targets": {
            t.name: {
                "n": t.n,
                "rmsecv_by_components": list(t.rmsecv),
                "components": t.components,
                "rmsec": t.rmsec,
                "r2": _finite_or_none(t.r2),
                "r2cv": _finite_or_none(t.r2cv),
            }
            for t in report.targets
        },
        "preprocessing": [
            {k: v for k, v in step.items() if k != "mean"} for step in pipeline.to_dicts()
        ],
        "software": {name: package_version(name) for name in ("scikit-learn", "scipy", "numpy")},
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _with_hash(model: PlsModel) -> PlsModel:
    """``model`` carrying the hash its file will have."""
    return replace(model, sha256=content_hash(model_to_dict(model)))
