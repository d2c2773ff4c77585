"""Residence-time distribution (RTD) models of one unit operation, in volume coordinates.

A unit (a surge tank, a hold line) is described as a plug-flow dead volume followed by ``N``
equal, ideally mixed tanks (tanks in series, TIS). Material moves by the *volume that flowed*,
not by time: with a flow that changes (a skid pausing its feed, a pump ramping), the same model
holds. Its step response to a tracer, ``volume`` flowed since the step, is the regularized
incomplete gamma function ``P(N, (volume - dead_volume) * N / tank_volume_total)``; the mean
residence volume is ``volume_mL + dead_volume_mL`` (divide by the flow for a time).

The model file (``"kind": "rtd"``), versioned and hashed like the other model files::

    {
      "format": "pat-gateway/rtd-model", "format_version": 1, "kind": "rtd",
      "id": "surge-rtd", "version": "1", "description": "...", "created": "...",
      "unit": "surge_tank",                        # the unit operation it was fitted on
      "model": "tanks_in_series",
      "parameters": {"n_tanks": 3, "volume_mL": 480.0, "dead_volume_mL": 12.0},
      "training": {...},                           # what it was fitted on, and how well
      "sha256": "<hex of the canonical JSON without this member>"
    }

A file with a non-finite or absurd parameter (no tanks, more than :data:`MAX_TANKS`, a
volume of zero or beyond :data:`MAX_VOLUME_ML`) is refused naming the member
(:class:`RtdModelFileError`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from plugins.softsensor.model import (
    check_document,
    check_hash,
    content_hash,
    read_json_document,
    write_atomically,
)

__all__ = [
    "FORMAT",
    "MAX_TANKS",
    "MAX_VOLUME_ML",
    "RtdModel",
    "RtdModelFileError",
    "load_rtd_model",
    "rtd_model_from_dict",
    "rtd_model_to_dict",
    "save_rtd_model",
    "step_response",
]

FORMAT = "pat-gateway/rtd-model"
FORMAT_VERSION = 1
KIND = "rtd"
MODEL = "tanks_in_series"
#: More tanks than this is a plug flow better written as a dead volume (and costs time).
MAX_TANKS = 50
#: 100 m³: no unit operation of a cell-culture line holds more.
MAX_VOLUME_ML = 1e8

Array = NDArray[np.float64]

_TOP = (
    "format",
    "format_version",
    "kind",
    "id",
    "version",
    "description",
    "created",
    "unit",
    "model",
    "parameters",
    "training",
    "sha256",
)
_PARAMETERS = ("n_tanks", "volume_mL", "dead_volume_mL")


class RtdModelFileError(ValueError):
    """An RTD model file that cannot be used; the message names the file and the member."""


@dataclass(frozen=True, slots=True)
class RtdModel:
    """Tanks in series with a dead volume, fitted on one unit operation."""

    id: str
    version: str
    unit: str
    n_tanks: int
    volume_mL: float
    dead_volume_mL: float = 0.0
    description: str = ""
    created: str = ""
    training: Mapping[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @property
    def mean_residence_mL(self) -> float:
        """Mean residence volume: divide by a flow (mL/h) for the mean residence time."""
        return self.volume_mL + self.dead_volume_mL

    def describe(self) -> str:
        return f"rtd model {self.id} v{self.version} of {self.unit}"


def rtd_model_to_dict(model: RtdModel) -> dict[str, Any]:
    """The model's JSON document, ``sha256`` computed from its content."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "id": model.id,
        "version": model.version,
        "description": model.description,
        "created": model.created,
        "unit": model.unit,
        "model": MODEL,
        "parameters": {
            "n_tanks": int(model.n_tanks),
            "volume_mL": float(model.volume_mL),
            "dead_volume_mL": float(model.dead_volume_mL),
        },
        "training": json.loads(json.dumps(dict(model.training), allow_nan=False)),
    }
    doc["sha256"] = content_hash(doc)
    return doc


def rtd_model_from_dict(doc: Any, source: str = "<dict>") -> RtdModel:
    """Check ``doc`` (a parsed model file) and build the model; :class:`RtdModelFileError`
    naming ``source`` and the member otherwise."""

    def fail(message: str) -> RtdModelFileError:
        return RtdModelFileError(f"{source}: {message}")

    check_document(
        doc,
        fail,
        format=FORMAT,
        kind=KIND,
        members=_TOP,
        strings=("id", "version", "description", "created", "unit", "sha256"),
        not_empty=("id", "version", "unit"),
    )
    if doc["model"] != MODEL:
        raise fail(f"model: {doc['model']!r} is not supported ({MODEL!r})")
    if not isinstance(doc["training"], dict):
        raise fail("training: expected an object")
    params = doc["parameters"]
    if not isinstance(params, dict):
        raise fail("parameters: expected an object of name: number")
    extra = sorted(set(params) - set(_PARAMETERS))
    if extra:
        raise fail(f"parameters: unknown {', '.join(extra)}")
    values: dict[str, float] = {}
    for name in _PARAMETERS:
        if name not in params:
            raise fail(f"parameters.{name}: missing")
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(f"parameters.{name}: expected a number, not {value!r}")
        if not math.isfinite(value):
            raise fail(f"parameters.{name}: {value!r} is not a finite number")
        values[name] = float(value)
    n = values["n_tanks"]
    if n != int(n) or not 1 <= n <= MAX_TANKS:
        raise fail(
            f"parameters.n_tanks: {params['n_tanks']!r} is not a whole number 1..{MAX_TANKS}"
        )
    if not 0 < values["volume_mL"] <= MAX_VOLUME_ML:
        raise fail(
            f"parameters.volume_mL: {values['volume_mL']!r} outside (0, {MAX_VOLUME_ML:g}] mL"
        )
    if not 0 <= values["dead_volume_mL"] <= MAX_VOLUME_ML:
        raise fail(
            f"parameters.dead_volume_mL: {values['dead_volume_mL']!r} outside"
            f" [0, {MAX_VOLUME_ML:g}] mL"
        )
    check_hash(doc, fail)
    return RtdModel(
        id=doc["id"],
        version=doc["version"],
        unit=doc["unit"],
        n_tanks=int(n),
        volume_mL=values["volume_mL"],
        dead_volume_mL=values["dead_volume_mL"],
        description=doc["description"],
        created=doc["created"],
        training=doc["training"],
        sha256=doc["sha256"],
    )


def load_rtd_model(path: Path) -> RtdModel:
    """Read and check the model file at ``path``."""
    return rtd_model_from_dict(read_json_document(path, RtdModelFileError), str(path))


def save_rtd_model(model: RtdModel, path: Path) -> RtdModel:
    """Write ``model`` to ``path`` atomically (read back with the loader's checks first);
    returns it as written (with its hash)."""
    doc = rtd_model_to_dict(model)
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    written = rtd_model_from_dict(json.loads(text), f"{path} (not written)")
    write_atomically(Path(path), text)
    return written


def step_response(volume: Array, n_tanks: int, volume_mL: float, dead_volume_mL: float) -> Array:
    """Outlet response to a unit step at the inlet, at ``volume`` mL flowed since the step."""
    from scipy.special import gammainc  # offline fitting only: not on the gateway's hot path

    x = np.maximum(np.asarray(volume, dtype=np.float64) - dead_volume_mL, 0.0)
    return np.asarray(gammainc(n_tanks, x * n_tanks / volume_mL), dtype=np.float64)
