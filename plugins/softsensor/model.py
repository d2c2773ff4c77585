"""A fitted PLS soft-sensor model: its file format, its validation, and prediction.

A model turns spectra on one :class:`~gateway.SpectralAxis` into one value per *target*
(analyte), each with the two outlier statistics a chemometrician checks before trusting it:

* **Hotelling T²** — how far the spectrum's scores lie from the training centre, in units of
  the training scores' spread (an extrapolation *within* the model's subspace);
* **Q residual** (SPE) — the squared norm of what the model's loadings cannot reconstruct (a
  spectrum *unlike* any in training: a foreign band, a fouled probe).

Each target is its own PLS1 model on the same preprocessed spectrum. Prediction is numpy only
(the fit, with scikit-learn, lives in :mod:`plugins.softsensor.fit`): the preprocessing is
compiled for the model's axis once, when the model is built, and the targets' coefficients and
rotations are stacked, so one spectrum costs a handful of array operations.

A model file is JSON (``docs/model-file.md`` documents it field by field) carrying a SHA-256
of its own canonical content: :func:`load_model` refuses a file that was changed after it was
written, as well as anything malformed, with a :class:`ModelFileError` naming the file and the
field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway import SpectralAxis, UnitError, parse_iso_ns, validate_ucum

from .preprocess import CompiledPipeline, Crop, MeanCenter, Normalize, Pipeline

__all__ = [
    "AXIS_TOLERANCE",
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "PlsModel",
    "Prediction",
    "Target",
    "check_document",
    "check_hash",
    "content_hash",
    "load_model",
    "model_from_dict",
    "model_to_dict",
    "read_json_document",
    "save_model",
    "write_atomically",
]

Array = NDArray[np.float64]

FORMAT = "pat-gateway/pls-model"
#: The version this module writes; :data:`SUPPORTED_VERSIONS` are the ones it reads.
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
#: Two axes match when every point differs by at most this fraction of the model axis' span:
#: 1e-6 * ~2000 cm-1 is 0.002 cm-1, a thousandth of a pixel — far above the rounding of an
#: axis recomputed from the same calibration, far below any real recalibration.
AXIS_TOLERANCE = 1e-6

_TOP_FIELDS = (
    "format",
    "format_version",
    "id",
    "version",
    "description",
    "created",
    "axis",
    "spectrum_unit",
    "preprocessing",
    "confidence",
    "targets",
    "training",
    "sha256",
)
_TARGET_FIELDS = (
    "name",
    "unit",
    "components",
    "coefficients",
    "intercept",
    "center",
    "rotations",
    "loadings",
    "score_variance",
    "limits",
    "calibration_range",
    "rmsecv",
)


class ModelFileError(ValueError):
    """A model file (or document) that cannot be used; the message names the file and what
    is wrong with it."""


def _frozen(values: Any) -> Array:
    array = np.array(values, dtype=np.float64)  # a copy the caller cannot change
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class Target:
    """One analyte's PLS1 model on the preprocessed spectrum ``x_pre`` (``p`` points, ``A``
    components): ``y = x_pre @ coefficients + intercept``, scores
    ``t = (x_pre - center) @ rotations``, ``T² = Σ t² / score_variance``,
    ``Q = ‖x_pre - center - t @ loadings.T‖²``.

    Arrays are copied to read-only float64. Equality is identity (compare models by hash).
    """

    name: str
    #: UCUM unit of the value, e.g. ``g/L``.
    unit: str
    components: int
    coefficients: Array
    intercept: float
    #: The mean of this target's own preprocessed training spectra ``(p,)``: the centre of its
    #: scores. About 0 for a target measured on every training sample (``mean_center`` took
    #: their mean out); not for one measured on only some.
    center: Array
    #: scikit-learn's ``x_rotations_`` ``(p, A)``.
    rotations: Array
    #: scikit-learn's ``x_loadings_`` ``(p, A)``.
    loadings: Array
    #: Variance (``ddof=1``) of each component's training scores ``(A,)``.
    score_variance: Array
    #: Limits at the model's confidence level.
    t2_limit: float
    q_limit: float
    #: The lowest and highest reference value in training.
    calibration_range: tuple[float, float]
    rmsecv: float | None

    def __post_init__(self) -> None:
        for name in ("coefficients", "center", "rotations", "loadings", "score_variance"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        p, a = len(self.coefficients), self.components
        problems = [
            f"{name} has shape {getattr(self, name).shape}, expected {shape}"
            for name, shape in (
                ("coefficients", (p,)),
                ("center", (p,)),
                ("rotations", (p, a)),
                ("loadings", (p, a)),
                ("score_variance", (a,)),
            )
            if getattr(self, name).shape != shape
        ]
        if problems:
            raise ValueError(f"target {self.name!r}: {'; '.join(problems)}")


@dataclass(frozen=True, eq=False)
class Prediction:
    """Predictions for ``n`` spectra and ``k`` targets (in the model's target order): values in
    each target's unit, and each target's T² and Q. All ``(n, k)`` float64."""

    values: Array
    t2: Array
    q: Array
    #: ``(n,)``: each spectrum's mean in the model's normalisation window, after the steps
    #: before ``normalize`` (baseline-corrected counts): the reference band's intensity, which
    #: normalisation cancels and a falling laser power lowers. ``None`` without ``normalize``.
    reference: Array | None = None


@dataclass(frozen=True, eq=False, repr=False)
class PlsModel:
    """A fitted soft sensor: the axis it accepts, its preprocessing, one PLS1 per target.

    Build it with :func:`load_model`, :func:`model_from_dict` or the fit; constructing it
    compiles the preprocessing for :attr:`axis` and stacks the targets for :meth:`predict`
    (``ValueError`` if they do not fit together). Equality is identity; :attr:`sha256`
    identifies the content.
    """

    id: str
    version: str
    description: str
    #: When it was fitted, ISO 8601 UTC.
    created: str
    #: The axis spectra must be on (compare with the instrument's: :meth:`axis_mismatch`).
    axis: SpectralAxis
    #: Unit of the spectrum signal it was trained on, e.g. ``{counts}``.
    spectrum_unit: str
    #: Fitted preprocessing, ``mean_center`` last.
    preprocessing: Pipeline
    targets: tuple[Target, ...]
    #: Confidence level of the T² and Q limits, e.g. 0.99.
    confidence: float
    #: Free metadata about the fit (samples, sources, cross-validation, library versions).
    training: Mapping[str, Any]
    #: SHA-256 of the canonical content (see :func:`content_hash`); "" before it is computed.
    sha256: str = ""
    _compiled: _Compiled = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "_compiled", _compile(self))

    def __repr__(self) -> str:
        # The identity, not the matrices (a fitted mean alone is ~1500 numbers).
        targets = ", ".join(f"{t.name} [{t.unit}] {t.components} LV" for t in self.targets)
        return (
            f"PlsModel({self.id!r} v{self.version}, {targets}, axis {_describe(self.axis)},"
            f" sha256 {self.sha256[:12] or '-'})"
        )

    @property
    def reference_window(self) -> tuple[float, float] | None:
        """The window its ``normalize`` step divides by (``Prediction.reference`` is the
        spectrum's mean in it), or None without one."""
        for step in self.preprocessing.steps:
            if isinstance(step, Normalize):
                return step.low, step.high
        return None

    def bands(self) -> list[tuple[str, float, float]]:
        """The ranges of its axis the model uses, as ``(use, low, high)`` in the axis unit:
        ``"prediction"`` for each run of points its crops keep (what the PLS sees), then
        ``"reference"`` for the points of its ``normalize`` window (the internal standard).
        ``low`` and ``high`` are the first and last points' axis values, not the steps' bounds:
        what a chart should shade."""
        values = self.axis.values
        kept = np.arange(values.size)
        reference: tuple[float, float] | None = None
        for step in self.preprocessing.steps:
            if isinstance(step, Crop):
                kept = kept[(values[kept] >= step.low) & (values[kept] <= step.high)]
            elif isinstance(step, Normalize) and reference is None:
                inside = kept[(values[kept] >= step.low) & (values[kept] <= step.high)]
                if inside.size:
                    reference = (float(values[inside].min()), float(values[inside].max()))
        found: list[tuple[str, float, float]] = []
        if kept.size:
            # Runs of consecutive points: a crop of a monotonic axis keeps exactly one.
            breaks = np.flatnonzero(np.diff(kept) != 1) + 1
            for run in np.split(kept, breaks):
                ends = values[run]
                found.append(("prediction", float(ends.min()), float(ends.max())))
        if reference is not None:
            found.append(("reference", *reference))
        return found

    def axis_mismatch(self, axis: SpectralAxis) -> str | None:
        """``None`` when spectra on ``axis`` can be used: the same unit, the same number of
        points, and every point within :data:`AXIS_TOLERANCE` times the model axis' span of the
        model's. Otherwise one line naming both axes and the difference."""
        mine = self.axis
        if axis.key == mine.key:
            return None
        if axis.unit != mine.unit:
            why = f"unit {axis.unit} is not the model's {mine.unit}"
        elif len(axis) != len(mine):
            why = f"{len(axis)} points, the model has {len(mine)}"
        else:
            span = float(np.ptp(mine.values))
            delta = float(np.max(np.abs(axis.values - mine.values)))
            if delta <= AXIS_TOLERANCE * span:
                return None
            why = (
                f"points differ by up to {delta:.3g} {mine.unit}"
                f" (tolerance {AXIS_TOLERANCE * span:.3g})"
            )
        return f"spectrum axis {_describe(axis)} does not match model axis {_describe(mine)}: {why}"

    def predict(self, spectra: NDArray[np.floating[Any]]) -> Prediction:
        """Values, T² and Q of spectra ``(n, len(axis))`` on the model's axis (a single
        spectrum ``(len(axis),)`` is taken as ``n = 1``). Check the axis with
        :meth:`axis_mismatch` first; this checks only the number of points."""
        c = self._compiled
        x = np.asarray(spectra, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != c.points:
            raise ValueError(
                f"spectra of shape {x.shape}; the model expects (n, {c.points}) on its axis"
            )
        reference = None
        if c.reference_band is None:
            x = c.prepare(x)
        else:
            x = c.before_normalize(x)
            band = c.reference_band
            reference = np.add.reduce(x[:, band], axis=1) / c.reference_points
            x = c.prepare(x)
        values = x @ c.coefficients
        values += c.intercepts
        # (x - center) @ rotations for every target at once: one product, one subtraction.
        scores = x @ c.rotations
        scores -= c.score_offsets
        t2 = np.square(scores) @ c.t2_weights
        q = np.empty_like(values)
        for k, (columns, loadings_t, center) in enumerate(c.reconstruct):
            # x - (center + t @ loadings.T), in the array the product made.
            residual = scores[:, columns] @ loadings_t
            residual += center
            np.subtract(x, residual, out=residual)
            q[:, k] = np.add.reduce(np.square(residual), axis=1)
        return Prediction(values, t2, q, reference)


@dataclass(frozen=True, eq=False)
class _Compiled:
    """Everything :meth:`PlsModel.predict` needs, laid out for it once."""

    points: int
    #: The preprocessing; with a ``normalize`` step, only from that step on (the steps before
    #: it are :attr:`before_normalize`, so the reference band is read on their output).
    prepare: CompiledPipeline
    before_normalize: CompiledPipeline
    #: Points of :attr:`before_normalize`'s output in the normalisation window (None: no
    #: ``normalize`` step), and how many.
    reference_band: slice | NDArray[np.intp] | None
    reference_points: int
    #: ``(p, k)`` stacked coefficients and ``(k,)`` intercepts.
    coefficients: Array
    intercepts: Array
    #: ``(p, ΣA)``: every target's rotations side by side.
    rotations: Array
    #: ``(ΣA,)``: every target's ``center @ rotations``, taken from the stacked scores.
    score_offsets: Array
    #: ``(ΣA, k)``: 1/score_variance in the rows of target k's components, 0 elsewhere, so
    #: ``scores² @ t2_weights`` is every target's T² at once.
    t2_weights: Array
    #: Per target: its columns of the stacked scores, its loadings transposed ``(A, p)`` and
    #: its centre ``(p,)``.
    reconstruct: tuple[tuple[slice, Array, Array], ...]


def _compile(model: PlsModel) -> _Compiled:
    steps = model.preprocessing.steps
    if not steps or not isinstance(steps[-1], MeanCenter) or steps[-1].mean is None:
        raise ValueError("preprocessing must end with a fitted mean_center step")
    if any(isinstance(step, MeanCenter) for step in steps[:-1]):
        raise ValueError("preprocessing has mean_center before its last step")
    if not model.targets:
        raise ValueError("a model needs at least one target")
    prepare = model.preprocessing.compile(model.axis.values)
    p = len(prepare.output_axis)
    before, band, points = _split_at_normalize(model.preprocessing, prepare)
    if band is not None:
        prepare = CompiledPipeline(
            prepare.transforms[len(before.transforms) :], before.output_axis, prepare.output_axis
        )
    for target in model.targets:
        if len(target.coefficients) != p:
            raise ValueError(
                f"target {target.name!r}: {len(target.coefficients)} coefficients, but the"
                f" preprocessing gives {p} points"
            )
    total = sum(t.components for t in model.targets)
    t2_weights = np.zeros((total, len(model.targets)))
    reconstruct = []
    start = 0
    for k, target in enumerate(model.targets):
        columns = slice(start, start + target.components)
        t2_weights[columns, k] = 1.0 / target.score_variance
        reconstruct.append((columns, np.ascontiguousarray(target.loadings.T), target.center))
        start += target.components
    return _Compiled(
        points=len(model.axis),
        prepare=prepare,
        before_normalize=before,
        reference_band=band,
        reference_points=points,
        coefficients=np.ascontiguousarray(np.stack([t.coefficients for t in model.targets], 1)),
        intercepts=np.array([t.intercept for t in model.targets]),
        rotations=np.ascontiguousarray(np.hstack([t.rotations for t in model.targets])),
        score_offsets=np.concatenate([t.center @ t.rotations for t in model.targets]),
        t2_weights=t2_weights,
        reconstruct=tuple(reconstruct),
    )


def _split_at_normalize(
    pipeline: Pipeline, compiled: CompiledPipeline
) -> tuple[CompiledPipeline, slice | NDArray[np.intp] | None, int]:
    """The compiled steps before the first ``normalize``, and the points of their output axis
    in its window (as a slice when they are one run); no ``normalize``: all steps, None, 0."""
    for index, step in enumerate(pipeline.steps):
        if isinstance(step, Normalize):
            head = Pipeline(pipeline.steps[:index]).compile(compiled.axis)
            axis = head.output_axis
            kept = np.flatnonzero((axis >= step.low) & (axis <= step.high))
            run = int(kept[-1]) - int(kept[0]) + 1 == kept.size
            band = slice(int(kept[0]), int(kept[-1]) + 1) if run else kept
            return head, band, int(kept.size)
    return compiled, None, 0


def _describe(axis: SpectralAxis) -> str:
    values = axis.values
    return (
        f"({len(axis)} points, {values.min():.6g}-{values.max():.6g} {axis.unit},"
        f" key {axis.key[:12]})"
    )


# --- the document ------------------------------------------------------------------------------


def content_hash(doc: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``doc`` without its ``"sha256"`` member: keys
    sorted, no spaces, UTF-8, no NaN or infinities."""
    body = {key: value for key, value in doc.items() if key != "sha256"}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_to_dict(model: PlsModel) -> dict[str, Any]:
    """The model's JSON document, with ``"sha256"`` computed from the content (whatever
    :attr:`PlsModel.sha256` says). Numbers are Python floats: ``json`` writes each as its
    shortest repr, which reads back bit for bit."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "id": model.id,
        "version": model.version,
        "description": model.description,
        "created": model.created,
        "axis": {"unit": model.axis.unit, "values": model.axis.values.tolist()},
        "spectrum_unit": model.spectrum_unit,
        "preprocessing": _plain(model.preprocessing.to_dicts()),
        "confidence": float(model.confidence),
        "targets": [_target_to_dict(t) for t in model.targets],
        "training": _plain(model.training),
    }
    doc["sha256"] = content_hash(doc)
    return doc


def _target_to_dict(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "unit": target.unit,
        "components": target.components,
        "coefficients": target.coefficients.tolist(),
        "intercept": float(target.intercept),
        "center": target.center.tolist(),
        "rotations": target.rotations.tolist(),
        "loadings": target.loadings.tolist(),
        "score_variance": target.score_variance.tolist(),
        "limits": {"t2": float(target.t2_limit), "q": float(target.q_limit)},
        "calibration_range": [float(v) for v in target.calibration_range],
        "rmsecv": None if target.rmsecv is None else float(target.rmsecv),
    }


def _plain(value: Any) -> Any:
    """``value`` as JSON's own types (tuples become lists, numpy scalars floats), so the hash
    of the document is the hash of what is written and read back."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, default=_numpy_default))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from exc


def _numpy_default(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def model_from_dict(doc: Any, source: str = "<dict>") -> PlsModel:
    """The model a JSON document describes, after checking its format, version, content hash
    and every field; :class:`ModelFileError` ``"<source>: <field>: <problem>"`` otherwise."""
    reader = _Reader(source)
    # Format and version first: a newer file may have other fields, and should say so.
    reader.check_format(reader.mapping(doc, "", None))
    top = reader.mapping(doc, "", _TOP_FIELDS)
    expected = reader.text(top["sha256"], "sha256")
    try:
        actual = content_hash(top)
    except ValueError:  # json.dumps(allow_nan=False): only a document built in memory has one
        raise reader.error("", "a number is not finite (NaN or infinity)") from None
    if actual != expected:
        raise reader.error("", "content hash mismatch: the file was changed after it was written")
    try:
        model = PlsModel(
            id=reader.text(top["id"], "id", nonempty=True),
            version=reader.text(top["version"], "version", nonempty=True),
            description=reader.text(top["description"], "description"),
            created=reader.time(top["created"], "created"),
            axis=reader.axis(top["axis"]),
            spectrum_unit=reader.unit(top["spectrum_unit"], "spectrum_unit"),
            preprocessing=reader.pipeline(top["preprocessing"]),
            targets=reader.targets(top["targets"]),
            confidence=reader.confidence(top["confidence"]),
            training=reader.mapping(top["training"], "training", None),
            sha256=expected,
        )
    except (TypeError, ValueError) as exc:
        # TypeError too: a step or a shape check that meets a value of a type it does not
        # expect is a bad file, not a bug of the reader's caller.
        if isinstance(exc, ModelFileError):
            raise
        raise reader.error("", str(exc)) from None
    return model


class _Reader:
    """Field checks that say where: every error is ``"<source>: <path>: <problem>"``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, problem: str) -> ModelFileError:
        where = f"{path}: " if path else ""
        return ModelFileError(f"{self.source}: {where}{problem}")

    def mapping(self, value: Any, path: str, fields: Sequence[str] | None) -> dict[str, Any]:
        """An object; with ``fields``, exactly those members (all required, no others)."""
        if not isinstance(value, dict):
            raise self.error(path, f"expected an object, found {_kind(value)}")
        if fields is not None:
            missing = [name for name in fields if name not in value]
            unknown = [name for name in value if name not in fields]
            prefix = f"{path}." if path else ""
            if missing:
                raise self.error(prefix + missing[0], "missing")
            if unknown:
                raise self.error(prefix + unknown[0], "unknown field")
        return value

    def check_format(self, top: Mapping[str, Any]) -> None:
        if top.get("format") != FORMAT:
            raise self.error(
                "format", f"{top.get('format')!r} is not a PAT Gateway PLS model ({FORMAT!r})"
            )
        version = top.get("format_version")
        if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
            supported = ", ".join(map(str, SUPPORTED_VERSIONS))
            raise self.error(
                "format_version",
                f"{version!r} is not supported (this gateway reads version {supported})",
            )

    def text(self, value: Any, path: str, nonempty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, found {_kind(value)}")
        if nonempty and not value.strip():
            raise self.error(path, "must not be empty")
        return value

    def time(self, value: Any, path: str) -> str:
        text = self.text(value, path, nonempty=True)
        try:
            parse_iso_ns(text)
        except ValueError:
            raise self.error(path, f"{text!r} is not an ISO 8601 time") from None
        return text

    def unit(self, value: Any, path: str) -> str:
        code = self.text(value, path, nonempty=True)
        try:
            return validate_ucum(code)
        except UnitError as exc:
            raise self.error(path, str(exc)) from None

    def number(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(path, f"expected a number, found {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range
            number = math.inf
        if not math.isfinite(number):
            raise self.error(path, f"{value!r} is not finite")
        return number

    def vector(self, value: Any, path: str, length: int | None = None) -> Array:
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of numbers, found {_kind(value)}")
        if length is not None and len(value) != length:
            raise self.error(path, f"expected {length} numbers, found {len(value)}")
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise self.error(f"{path}[{i}]", f"expected a number, found {_kind(item)}")
        try:
            array = np.array(value, dtype=np.float64)
        except OverflowError:  # an integer beyond float's range
            raise self.error(path, "contains a number that is not finite") from None
        if not np.isfinite(array).all():
            raise self.error(path, "contains a number that is not finite")
        return array

    def matrix(self, value: Any, path: str, rows: int, columns: int) -> Array:
        if not isinstance(value, list) or len(value) != rows:
            found = f"{len(value)} rows" if isinstance(value, list) else _kind(value)
            raise self.error(path, f"expected {rows} rows of {columns} numbers, found {found}")
        return np.array(
            [self.vector(row, f"{path}[{i}]", columns) for i, row in enumerate(value)],
            dtype=np.float64,
        ).reshape(rows, columns)

    def axis(self, value: Any) -> SpectralAxis:
        doc = self.mapping(value, "axis", ("unit", "values"))
        unit = self.unit(doc["unit"], "axis.unit")
        values = self.vector(doc["values"], "axis.values")
        try:
            return SpectralAxis(values, unit)
        except ValueError as exc:
            raise self.error("axis.values", str(exc)) from None

    def pipeline(self, value: Any) -> Pipeline:
        if not isinstance(value, list) or not value:
            raise self.error("preprocessing", "expected a non-empty list of steps")
        steps = []
        for i, spec in enumerate(value):
            path = f"preprocessing[{i}]"
            self.mapping(spec, path, None)
            if spec.get("step") == "mean_center":
                # The one step whose data is long: check it here, with the position named.
                if spec.get("mean") is None:
                    raise self.error(f"{path}.mean", "missing: the model's mean is not fitted")
                self.vector(spec["mean"], f"{path}.mean")
            try:
                steps.append(Pipeline.from_dicts([spec]).steps[0])
            except (TypeError, ValueError) as exc:
                raise self.error(path, str(exc)) from None
        return Pipeline(tuple(steps))

    def confidence(self, value: Any) -> float:
        level = self.number(value, "confidence")
        if not 0.5 <= level < 1.0:
            raise self.error("confidence", f"{level!r} is not in [0.5, 1)")
        return level

    def targets(self, value: Any) -> tuple[Target, ...]:
        if not isinstance(value, list) or not value:
            raise self.error("targets", "expected a non-empty list of targets")
        targets = tuple(self.target(item, f"targets[{i}]") for i, item in enumerate(value))
        names = [t.name for t in targets]
        for name in names:
            if names.count(name) > 1:
                raise self.error("targets", f"the name {name!r} appears twice")
        points = {len(t.coefficients) for t in targets}
        if len(points) > 1:
            raise self.error("targets", f"coefficients of different lengths {sorted(points)}")
        return targets

    def target(self, value: Any, path: str) -> Target:
        doc = self.mapping(value, path, _TARGET_FIELDS)
        components = doc["components"]
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise self.error(f"{path}.components", f"expected an integer >= 1, not {components!r}")
        coefficients = self.vector(doc["coefficients"], f"{path}.coefficients")
        p = len(coefficients)
        variance = self.vector(doc["score_variance"], f"{path}.score_variance", components)
        if not (variance > 0).all():
            raise self.error(f"{path}.score_variance", "every variance must be positive")
        limits = self.mapping(doc["limits"], f"{path}.limits", ("t2", "q"))
        low_high = self.vector(doc["calibration_range"], f"{path}.calibration_range", 2)
        if low_high[0] > low_high[1]:
            raise self.error(f"{path}.calibration_range", "low is above high")
        rmsecv = doc["rmsecv"]
        return Target(
            name=self.text(doc["name"], f"{path}.name", nonempty=True),
            unit=self.unit(doc["unit"], f"{path}.unit"),
            components=components,
            coefficients=coefficients,
            intercept=self.number(doc["intercept"], f"{path}.intercept"),
            rotations=self.matrix(doc["rotations"], f"{path}.rotations", p, components),
            loadings=self.matrix(doc["loadings"], f"{path}.loadings", p, components),
            center=self.vector(doc["center"], f"{path}.center", p),
            score_variance=variance,
            t2_limit=self.positive(limits["t2"], f"{path}.limits.t2"),
            q_limit=self.positive(limits["q"], f"{path}.limits.q"),
            calibration_range=(float(low_high[0]), float(low_high[1])),
            rmsecv=None if rmsecv is None else self.number(rmsecv, f"{path}.rmsecv"),
        )

    def positive(self, value: Any, path: str) -> float:
        number = self.number(value, path)
        if number <= 0:
            raise self.error(path, f"must be positive, not {number!r}")
        return number


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


# --- files -------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_json_document(path: Path, error: type[ValueError]) -> Any:
    """The JSON document in the model file ``path`` (NaN and infinities refused); ``error``
    naming the file if it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid JSON (not UTF-8: {exc.reason})") from None
    try:
        return json.loads(text, parse_constant=_refuse_non_finite)
    except ValueError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def _refuse_non_finite(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def check_document(
    doc: Any,
    fail: Callable[[str], ValueError],
    *,
    format: str,
    kind: str,
    members: Sequence[str],
    strings: Sequence[str],
    not_empty: Sequence[str],
) -> dict[str, Any]:
    """Check the envelope of a model file of version 1 (``format``, ``format_version``,
    ``kind``, exactly ``members``, the string members, those that must not be empty); raise
    ``fail(message)`` naming the first problem. The content hash is checked last, by
    :func:`check_hash`, once the members are known to be sound."""
    if not isinstance(doc, dict):
        raise fail("not a JSON object")
    if doc.get("format") != format:
        raise fail(f"format: expected {format!r}, not {doc.get('format')!r}")
    if doc.get("format_version") != 1:
        raise fail(f"format_version: {doc.get('format_version')!r} is not supported (1)")
    if doc.get("kind") != kind:
        raise fail(f"kind: expected {kind!r}, not {doc.get('kind')!r}")
    unknown = sorted(set(doc) - set(members))
    if unknown:
        raise fail(f"unknown member(s): {', '.join(unknown)}")
    missing = [k for k in members if k not in doc]
    if missing:
        raise fail(f"missing member(s): {', '.join(missing)}")
    for name in strings:
        if not isinstance(doc[name], str):
            raise fail(f"{name}: expected a string")
    for name in not_empty:
        if not doc[name].strip():
            raise fail(f"{name}: must not be empty")
    return doc


def check_hash(doc: Mapping[str, Any], fail: Callable[[str], ValueError]) -> None:
    """Raise ``fail(message)`` when ``doc["sha256"]`` is not the hash of its content."""
    actual = content_hash(doc)
    if doc["sha256"] != actual:
        raise fail(
            f"sha256: content hash mismatch (file says {str(doc['sha256'])[:16]}, content is"
            f" {actual[:16]}): edited or damaged since it was written"
        )


def load_model(path: Path) -> PlsModel:
    """Read, check and build the model in ``path``; :class:`ModelFileError` naming the file
    if it cannot be read, is not valid JSON, is not a supported model, was changed after it
    was written, or is inconsistent."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelFileError(
            f"{path}: cannot read the model file ({exc.strerror or exc})"
        ) from None
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{path}: not a JSON model file (not UTF-8: {exc.reason})") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ModelFileError(f"{path}: not a JSON model file ({exc})") from None
    return model_from_dict(doc, str(path))


def save_model(model: PlsModel, path: Path) -> None:
    """Write ``model`` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``): readers see the old file or the new one, never half of one. The file's
    ``sha256`` is computed from the content. One top-level member per line, so ``head`` shows
    the identity of a model without scrolling through its matrices.

    The text is read back with :func:`model_from_dict` first, so no file is written that
    :func:`load_model` would refuse (an empty id, say): :class:`ModelFileError`
    ``"<path> (not written): <field>: <problem>"`` instead, and ``path`` is left as it was.
    """
    target = Path(path)
    doc = model_to_dict(model)
    lines = [
        f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False, allow_nan=False)}"
        for key, value in doc.items()
    ]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    model_from_dict(json.loads(text, parse_constant=_refuse_constant), f"{target} (not written)")
    write_atomically(target, text)


def write_atomically(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` through a temporary file in the same folder and
    ``os.replace``: readers see the old file or the new one, never half of one."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the model from the gateway's user
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
