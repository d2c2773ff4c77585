"""The twin's model file: a versioned, hashed JSON document of kinetic parameters, estimator
noise levels and the input signals it was fitted for (``"kind": "twin"``).

::

    {
      "format": "pat-gateway/twin-model", "format_version": 1, "kind": "twin",
      "id": "cho-twin", "version": "1", "description": "...", "created": "2026-12-07T05:00:00Z",
      "inputs": {"feed_total": "mL", "glucose": "g/L", ...},   # role -> unit it was fitted in
      "parameters": {"mu_max": 0.04, ...},                       # see PARAMETERS
      "noise": {"x": 0.02, ...},                                 # see NOISE
      "training": {...},                                         # what it was fitted on
      "sha256": "<hex of the canonical JSON without this member>"
    }

Every parameter and noise level must be a finite number within its stated range: a file with a
NaN, an infinity, a missing or an unknown parameter is refused with the member's path
(:class:`TwinModelFileError`), as ``patgw check`` reports it (exit 2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugins.softsensor.model import (
    check_document,
    check_hash,
    content_hash,
    read_json_document,
    write_atomically,
)

__all__ = [
    "FORMAT",
    "INPUTS",
    "NOISE",
    "PARAMETERS",
    "REQUIRED_INPUTS",
    "TwinModel",
    "TwinModelFileError",
    "load_twin_model",
    "save_twin_model",
    "twin_model_from_dict",
    "twin_model_to_dict",
]

FORMAT = "pat-gateway/twin-model"
FORMAT_VERSION = 1
KIND = "twin"

#: The inputs a twin reads, by role, with the unit each is taken in (UCUM).
INPUTS: dict[str, str] = {
    "feed_total": "mL",
    "glucose": "g/L",
    "lactate": "g/L",
    "base_total": "mL",
    "temperature": "Cel",
    "ph": "[pH]",
    "dissolved_oxygen": "%",
}
#: Roles every twin model needs.
REQUIRED_INPUTS = ("feed_total", "glucose", "lactate")

#: Kinetic parameters: name -> (low, high, meaning). All hours, g/L, 1e6 cells/mL, mL.
PARAMETERS: dict[str, tuple[float, float, str]] = {
    "volume0": (0.01, 1e5, "working volume at inoculation, L"),
    "x0": (0.0, 100.0, "viable cell density at inoculation, 1e6 cells/mL"),
    "g0": (0.0, 100.0, "glucose at inoculation, g/L"),
    "l0": (0.0, 100.0, "lactate at inoculation, g/L"),
    "p0": (0.0, 100.0, "titer at inoculation, g/L"),
    "feed_glucose": (0.0, 2000.0, "glucose in the feed medium, g/L"),
    "mu_max": (0.0, 1.0, "maximum specific growth rate, 1/h"),
    "x_max": (0.01, 1000.0, "carrying capacity of the logistic growth, 1e6 cells/mL"),
    "k_g": (1e-4, 100.0, "glucose half-saturation of growth, g/L"),
    "kd": (0.0, 1.0, "specific death rate, 1/h"),
    "kd_starved": (0.0, 1.0, "extra death rate without glucose, 1/h"),
    "q_g": (0.0, 1.0, "maximum specific glucose uptake, g/L/h per 1e6 cells/mL"),
    "k_gu": (1e-4, 100.0, "glucose half-saturation of uptake, g/L"),
    "y_l": (0.0, 100.0, "lactate made per cell grown, g/L per 1e6 cells/mL"),
    "q_l": (0.0, 1.0, "maximum specific lactate uptake once growth stops, g/L/h per 1e6/mL"),
    "k_l": (1e-4, 100.0, "lactate half-saturation of its uptake, g/L"),
    "q_p": (0.0, 1.0, "specific productivity, g/L/h per 1e6 cells/mL"),
    "base_per_lactate": (0.0, 1000.0, "base used per net lactate made, mL per g"),
    "base_per_cell": (0.0, 100.0, "base used for respiration, mL/h per 1e6 cells/mL per L"),
    "temperature_ref": (0.0, 50.0, "temperature of the fitted kinetics, °C"),
    "temperature_coeff": (0.0, 1.0, "growth change per °C off temperature_ref, 1/°C"),
    "ph_opt": (5.0, 9.0, "pH of fastest growth"),
    "ph_width": (0.01, 10.0, "pH distance at which growth falls to 1/e"),
    "do_crit": (0.0, 100.0, "dissolved oxygen below which growth slows, %"),
}
#: Estimator noise levels: name -> (low, high, meaning). Standard deviations.
NOISE: dict[str, tuple[float, float, str]] = {
    "x": (0.0, 10.0, "VCD process noise, 1e6 cells/mL per sqrt(h)"),
    "g": (0.0, 10.0, "glucose process noise, g/L per sqrt(h)"),
    "l": (0.0, 10.0, "lactate process noise, g/L per sqrt(h)"),
    "p": (0.0, 10.0, "titer process noise, g/L per sqrt(h)"),
    "eta": (0.0, 1.0, "feed-efficiency random walk, 1 per sqrt(h)"),
    "x0": (1e-6, 100.0, "initial VCD uncertainty, 1e6 cells/mL"),
    "g0": (1e-6, 100.0, "initial glucose uncertainty, g/L"),
    "l0": (1e-6, 100.0, "initial lactate uncertainty, g/L"),
    "p0": (1e-6, 100.0, "initial titer uncertainty, g/L"),
    "eta0": (1e-6, 1.0, "initial feed-efficiency uncertainty, 1"),
    "glucose": (1e-6, 100.0, "glucose measurement (soft sensor) error, g/L"),
    "lactate": (1e-6, 100.0, "lactate measurement (soft sensor) error, g/L"),
    "base_fraction": (0.0, 10.0, "uncertainty of the expected base use, fraction of it"),
    "base_floor": (0.0, 1e6, "uncertainty of the expected base use at least, mL"),
}

_TOP = (
    "format",
    "format_version",
    "kind",
    "id",
    "version",
    "description",
    "created",
    "inputs",
    "parameters",
    "noise",
    "training",
    "sha256",
)


class TwinModelFileError(ValueError):
    """A twin model file that cannot be used; the message names the file and the member."""


@dataclass(frozen=True, slots=True)
class TwinModel:
    """A twin's parameters, noise levels and the inputs it was fitted for."""

    id: str
    version: str
    parameters: Mapping[str, float]
    noise: Mapping[str, float]
    inputs: Mapping[str, str]
    description: str = ""
    created: str = ""
    training: Mapping[str, Any] = field(default_factory=dict)
    sha256: str = ""


def twin_model_to_dict(model: TwinModel) -> dict[str, Any]:
    """The model's JSON document, ``sha256`` computed from its content."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "id": model.id,
        "version": model.version,
        "description": model.description,
        "created": model.created,
        "inputs": dict(model.inputs),
        "parameters": {k: float(model.parameters[k]) for k in PARAMETERS},
        "noise": {k: float(model.noise[k]) for k in NOISE},
        "training": json.loads(json.dumps(dict(model.training), allow_nan=False)),
    }
    doc["sha256"] = content_hash(doc)
    return doc


def twin_model_from_dict(doc: Any, source: str = "<dict>") -> TwinModel:
    """Check ``doc`` (a parsed model file) and build the model; :class:`TwinModelFileError`
    naming ``source`` and the member otherwise."""

    def fail(message: str) -> TwinModelFileError:
        return TwinModelFileError(f"{source}: {message}")

    check_document(
        doc,
        fail,
        format=FORMAT,
        kind=KIND,
        members=_TOP,
        strings=("id", "version", "description", "created", "sha256"),
        not_empty=("id", "version"),
    )
    inputs = doc["inputs"]
    if not isinstance(inputs, dict):
        raise fail("inputs: expected an object of role: unit")
    for role, unit in inputs.items():
        if role not in INPUTS:
            raise fail(f"inputs.{role}: unknown input (known: {', '.join(INPUTS)})")
        if unit != INPUTS[role]:
            raise fail(f"inputs.{role}: unit {unit!r}, expected {INPUTS[role]!r}")
    for role in REQUIRED_INPUTS:
        if role not in inputs:
            raise fail(f"inputs: {role} is required")
    if not isinstance(doc["training"], dict):
        raise fail("training: expected an object")
    parameters = _numbers(doc["parameters"], PARAMETERS, "parameters", fail)
    noise = _numbers(doc["noise"], NOISE, "noise", fail)
    check_hash(doc, fail)
    return TwinModel(
        id=doc["id"],
        version=doc["version"],
        parameters=parameters,
        noise=noise,
        inputs=dict(inputs),
        description=doc["description"],
        created=doc["created"],
        training=doc["training"],
        sha256=doc["sha256"],
    )


def _numbers(
    values: Any, spec: Mapping[str, tuple[float, float, str]], where: str, fail: Any
) -> dict[str, float]:
    if not isinstance(values, dict):
        raise fail(f"{where}: expected an object of name: number")
    unknown = sorted(set(values) - set(spec))
    if unknown:
        raise fail(f"{where}: unknown {', '.join(unknown)}")
    out: dict[str, float] = {}
    for name, (low, high, meaning) in spec.items():
        if name not in values:
            raise fail(f"{where}.{name}: missing ({meaning})")
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail(f"{where}.{name}: expected a number, not {value!r}")
        if not math.isfinite(value):
            raise fail(f"{where}.{name}: {value!r} is not a finite number")
        if not low <= value <= high:
            raise fail(f"{where}.{name}: {value!r} outside {low:g}..{high:g} ({meaning})")
        out[name] = float(value)
    return out


def load_twin_model(path: Path) -> TwinModel:
    """Read and check the model file at ``path``."""
    return twin_model_from_dict(read_json_document(path, TwinModelFileError), str(path))


def save_twin_model(model: TwinModel, path: Path) -> TwinModel:
    """Write ``model`` to ``path`` atomically (read back with the loader's checks first);
    returns it as written (with its hash)."""
    doc = twin_model_to_dict(model)
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    written = twin_model_from_dict(json.loads(text), f"{path} (not written)")
    write_atomically(Path(path), text)
    return written
