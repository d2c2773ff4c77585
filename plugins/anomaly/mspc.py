"""Batch-evolution PCA: a model of normal operation of a fed-batch, its file, and its statistics.

A fed-batch is not stationary: the base dosed, the oxygen demand and the DO all move with the
culture's age. A PCA on the raw signals would call every young batch abnormal. So each signal is
standardised *per maturity bin* (process hours since inoculation, cut into bins of ``bin_h``):
``z = (x - mean[bin]) / sd[bin]``, the mean and standard deviation of the normal runs at that
age. The PCA then models the correlation of the deviations, which is what stays the same along
the batch (batch-evolution monitoring, as in SIMCA's BEM).

For a point ``z`` (p signals) with loadings ``P`` (p x a) and score variances ``λ``:

* scores ``t = z P``; Hotelling's ``T² = Σ t_k² / λ_k`` (unusual *within* the model);
* residual ``e = z - t Pᵀ``; ``Q = SPE = Σ e_j²`` (what the model cannot explain: a broken
  correlation, the usual sign of a failing sensor);
* contributions: to Q, ``e_j²``; to T², ``z_j Σ_k P_jk t_k / λ_k`` (they sum to T²).

The limits are empirical, at ``confidence`` (e.g. 99 %), from *leave-one-run-out* statistics:
each training run is scored by a model fitted without it. Theoretical limits (F for T², Box's
χ² for Q) assume independent points; consecutive points of a run are not, and a new run differs
from the training runs as a whole, so they are too tight on new normal runs (see
docs/decisions/0021).

The file is JSON like the PLS models: ``format``, ``format_version``, ``kind`` (``pca``, for
``patgw model show`` and ``check``), an ``id`` and ``version``
chosen by whoever fits it, and ``sha256`` over the canonical content, checked at load.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KIND",
    "ModelFileError",
    "PcaModel",
    "Run",
    "Scores",
    "fit_pca",
    "load_model",
    "model_from_dict",
    "model_to_dict",
    "save_model",
]

Array = NDArray[np.float64]

FORMAT = "pat-gateway/pca-model"
FORMAT_VERSION = 1
#: The ``kind`` member: which ``patgw model`` kind shows and checks the file.
KIND = "pca"

#: A standard deviation below this fraction of the signal's typical magnitude (or 1e-9) is
#: floored: a signal held perfectly still at one age must not make its tiniest wobble infinite.
_SD_FLOOR_REL = 1e-3


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Run:
    """One normal run for fitting: process hours since its start and the signals' values there
    (one row per time, one column per signal, in the model's signal order)."""

    name: str
    hours: Array
    values: Array


@dataclass(frozen=True, slots=True)
class Scores:
    """The statistics of one point."""

    t2: float
    q: float
    #: Per signal, contribution to T² and to Q (model signal order).
    t2_contributions: tuple[float, ...]
    q_contributions: tuple[float, ...]
    #: The maturity is past the last bin the model was trained on (the last bin is used).
    beyond_maturity: bool


@dataclass(frozen=True, slots=True)
class PcaModel:
    """A fitted batch-evolution PCA model (see the module docstring)."""

    id: str
    version: int
    signals: tuple[str, ...]
    units: tuple[str, ...]
    bin_h: float
    mean: Array  # bins x p
    sd: Array  # bins x p
    loadings: Array  # p x a
    variances: Array  # a
    confidence: float
    t2_limit: float
    q_limit: float
    training: Mapping[str, Any] = field(default_factory=dict)
    sha256: str = ""

    def __post_init__(self) -> None:
        bins, p = self.mean.shape
        if p != len(self.signals) or p != len(self.units) or self.sd.shape != (bins, p):
            raise ValueError(f"mean/sd shapes {self.mean.shape}/{self.sd.shape} for {p} signals")
        if self.loadings.shape[0] != p or self.loadings.shape[1] != self.variances.shape[0]:
            raise ValueError(f"loadings {self.loadings.shape} do not fit {p} signals")
        if not self.loadings.shape[1] >= 1:
            raise ValueError("a PCA model needs at least one component")
        arrays = (self.mean, self.sd, self.loadings, self.variances)
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("non-finite numbers in the model")
        if not ((self.sd > 0).all() and (self.variances > 0).all()):
            raise ValueError("standard deviations and score variances must be > 0")
        if not (self.bin_h > 0 and self.t2_limit > 0 and self.q_limit > 0):
            raise ValueError("bin_h and the limits must be > 0")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence {self.confidence} outside (0, 1)")
        if len(set(self.signals)) != len(self.signals):
            raise ValueError("a signal is listed twice")

    @property
    def bins(self) -> int:
        return int(self.mean.shape[0])

    @property
    def components(self) -> int:
        return int(self.loadings.shape[1])

    @property
    def max_maturity_h(self) -> float:
        return self.bins * self.bin_h

    def describe(self) -> str:
        return f"PCA model {self.id} v{self.version} (sha256 {self.sha256[:12] or '-'})"

    def score(self, hours: float, values: Sequence[float]) -> Scores:
        """T², Q and contributions of one point at ``hours`` of process time."""
        index = int(hours // self.bin_h) if hours > 0 else 0
        beyond = index >= self.bins
        if beyond:
            index = self.bins - 1
        z = (np.asarray(values, dtype=np.float64) - self.mean[index]) / self.sd[index]
        t = z @ self.loadings
        weighted = t / self.variances
        t2_parts = z * (self.loadings @ weighted)
        e = z - self.loadings @ t
        q_parts = e * e
        return Scores(
            float(t @ weighted),
            float(q_parts.sum()),
            tuple(t2_parts.tolist()),
            tuple(q_parts.tolist()),
            beyond,
        )

    def score_many(self, hours: Array, values: Array) -> tuple[Array, Array]:
        """T² and Q of many points (rows of ``values``) at once."""
        index = np.clip((np.maximum(hours, 0.0) // self.bin_h).astype(int), 0, self.bins - 1)
        z = (values - self.mean[index]) / self.sd[index]
        t = z @ self.loadings
        e = z - t @ self.loadings.T
        return (t * t / self.variances).sum(axis=1), (e * e).sum(axis=1)


# --- fitting -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Core:
    mean: Array
    sd: Array
    loadings: Array
    variances: Array
    explained: Array


def _fit_core(runs: Sequence[Run], bin_h: float, bins: int, components: int | None) -> _Core:
    p = runs[0].values.shape[1]
    hours = np.concatenate([r.hours for r in runs])
    values = np.concatenate([r.values for r in runs])
    index = (hours // bin_h).astype(int)
    keep = (index >= 0) & (index < bins)
    hours, values, index = hours[keep], values[keep], index[keep]
    mean = np.empty((bins, p))
    sd = np.empty((bins, p))
    scale = np.maximum(np.abs(values).mean(axis=0), 1e-6) * _SD_FLOOR_REL
    for b in range(bins):
        rows = values[index == b]
        mean[b] = rows.mean(axis=0)
        sd[b] = np.maximum(rows.std(axis=0, ddof=1), np.maximum(scale, 1e-9))
    z = (values - mean[index]) / sd[index]
    # SVD of the standardised deviations: z is centred per bin already.
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    variance = s * s / max(len(z) - 1, 1)
    explained = variance / variance.sum()
    if components is None:
        components = int(np.searchsorted(np.cumsum(explained), 0.8) + 1)
        components = min(components, max(p - 1, 1))
    return _Core(mean, sd, vt[:components].T.copy(), variance[:components].copy(), explained)


def fit_pca(
    runs: Sequence[Run],
    *,
    signals: Sequence[str],
    units: Sequence[str],
    model_id: str,
    version: int,
    bin_h: float = 2.0,
    components: int | None = None,
    confidence: float = 0.99,
    min_runs: int = 3,
) -> PcaModel:
    """Fit a batch-evolution PCA model on normal ``runs`` (see the module docstring).

    The model covers the maturity bins every run reaches (at least ``min_runs`` runs, each with
    points in every bin). ``components`` None: the fewest that explain 80 % of the variance
    (at most p - 1). Raises ``ValueError`` for too few runs or points.
    """
    if len(runs) < min_runs:
        raise ValueError(f"{len(runs)} runs: a batch-evolution model needs at least {min_runs}")
    p = len(signals)
    if p < 2:
        raise ValueError("a PCA model needs at least two signals")
    for run in runs:
        if run.values.ndim != 2 or run.values.shape[1] != p or len(run.hours) != len(run.values):
            raise ValueError(f"run {run.name}: values are not {len(run.hours)} x {p}")
        if not np.isfinite(run.values).all():
            raise ValueError(f"run {run.name}: non-finite values")
    if not bin_h > 0:
        raise ValueError(f"bin_h must be > 0, not {bin_h}")
    reach = min(float(r.hours.max()) for r in runs)
    bins = int(reach // bin_h)
    if bins < 1:
        raise ValueError(f"the shortest run lasts {reach:.3g} h, less than one {bin_h:g} h bin")
    for run in runs:
        counts = np.bincount((run.hours // bin_h).astype(int).clip(0, bins), minlength=bins + 1)
        if (counts[:bins] < 2).any():
            empty = int(np.argmax(counts[:bins] < 2))
            raise ValueError(
                f"run {run.name} has fewer than 2 points at {empty * bin_h:g}-"
                f"{(empty + 1) * bin_h:g} h: sample more often or use wider bins"
            )
    if components is not None and not 1 <= components < p:
        raise ValueError(f"components must be 1..{p - 1}, not {components}")
    core = _fit_core(runs, bin_h, bins, components)
    a = core.loadings.shape[1]
    # Leave-one-run-out statistics for the limits (module docstring).
    t2s: list[Array] = []
    qs: list[Array] = []
    for k, held in enumerate(runs):
        others = [r for j, r in enumerate(runs) if j != k]
        sub = _fit_core(others, bin_h, bins, a)
        probe = PcaModel(
            "loo", 1, tuple(signals), tuple(units), bin_h, sub.mean, sub.sd, sub.loadings,
            sub.variances, confidence, 1.0, 1.0,
        )  # fmt: skip
        inside = held.hours < bins * bin_h
        t2, q = probe.score_many(held.hours[inside], held.values[inside])
        t2s.append(t2)
        qs.append(q)
    all_t2 = np.concatenate(t2s)
    all_q = np.concatenate(qs)
    points = int(sum(len(r.hours) for r in runs))
    return PcaModel(
        id=model_id,
        version=version,
        signals=tuple(signals),
        units=tuple(units),
        bin_h=float(bin_h),
        mean=core.mean,
        sd=core.sd,
        loadings=core.loadings,
        variances=core.variances,
        confidence=confidence,
        t2_limit=float(np.quantile(all_t2, confidence)),
        q_limit=float(np.quantile(all_q, confidence)),
        training={
            "runs": [r.name for r in runs],
            "points": points,
            "explained_variance": [round(float(x), 6) for x in core.explained[:a]],
            "limits": f"leave-one-run-out empirical {confidence * 100:g} % quantiles",
        },
    )


# --- the file ------------------------------------------------------------------------------------


def _content_hash(doc: Mapping[str, Any]) -> str:
    body = {key: value for key, value in doc.items() if key != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_to_dict(model: PcaModel) -> dict[str, Any]:
    """The model's JSON document, its ``sha256`` computed from the content."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "id": model.id,
        "version": model.version,
        "signals": [{"id": s, "unit": u} for s, u in zip(model.signals, model.units, strict=True)],
        "bin_h": model.bin_h,
        "confidence": model.confidence,
        "t2_limit": model.t2_limit,
        "q_limit": model.q_limit,
        "mean": model.mean.tolist(),
        "sd": model.sd.tolist(),
        "loadings": model.loadings.tolist(),
        "variances": model.variances.tolist(),
        "training": dict(model.training),
    }
    doc["sha256"] = _content_hash(doc)
    return doc


def model_from_dict(doc: Any, source: str = "model") -> PcaModel:
    """The model a JSON document describes, after checking format, version and hash."""

    def fail(problem: str) -> ModelFileError:
        return ModelFileError(f"{source}: {problem}")

    if not isinstance(doc, dict):
        raise fail("not a JSON object")
    if doc.get("format") != FORMAT:
        raise fail(f"format {doc.get('format')!r} is not a PAT Gateway PCA model ({FORMAT!r})")
    if doc.get("kind") != KIND:
        raise fail(f"kind {doc.get('kind')!r}: not a {KIND!r} model")
    if doc.get("format_version") != FORMAT_VERSION:
        raise fail(f"format_version {doc.get('format_version')!r}: this gateway reads 1")
    if doc.get("sha256") != _content_hash(doc):
        raise fail("sha256 does not match the content (the file was changed after fitting)")
    try:
        signals = doc["signals"]
        model = PcaModel(
            id=str(doc["id"]),
            version=int(doc["version"]),
            signals=tuple(str(s["id"]) for s in signals),
            units=tuple(str(s["unit"]) for s in signals),
            bin_h=float(doc["bin_h"]),
            mean=np.asarray(doc["mean"], dtype=np.float64),
            sd=np.asarray(doc["sd"], dtype=np.float64),
            loadings=np.asarray(doc["loadings"], dtype=np.float64),
            variances=np.asarray(doc["variances"], dtype=np.float64),
            confidence=float(doc["confidence"]),
            t2_limit=float(doc["t2_limit"]),
            q_limit=float(doc["q_limit"]),
            training=dict(doc.get("training") or {}),
            sha256=str(doc["sha256"]),
        )
    except KeyError as exc:
        raise fail(f"missing member {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise fail(str(exc)) from exc
    if not all(math.isfinite(x) for x in (model.t2_limit, model.q_limit)):
        raise fail("non-finite limits")
    return model


def load_model(path: Path) -> PcaModel:
    """Read and check a PCA model file (``ModelFileError`` naming the file on any problem)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ModelFileError(f"{path}: not JSON: {exc}") from exc
    return model_from_dict(doc, str(path))


def save_model(model: PcaModel, path: Path) -> None:
    """Write the model file (one top-level member per line)."""
    doc = model_to_dict(model)
    lines = [f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in doc.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
