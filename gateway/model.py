"""The data model every part of the gateway speaks: signals and their samples.

A :class:`Signal` is declared once, at configuration time. A :class:`Sample` is one reading of
one signal. Samples are plain named tuples so that creating one on the hot path costs a single
allocation; everything expensive (validation, unit parsing) happened when the signal was declared.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple

import numpy as np

from .spectra import SpectralAxis, Spectrum
from .timefmt import format_ns

__all__ = [
    "Quality",
    "Sample",
    "Signal",
    "SignalKind",
    "float32_decimal",
    "historical_json",
    "sample_to_json",
    "sample_to_json_dict",
]


class Quality(IntEnum):
    """How far a sample can be trusted, in the spirit of OPC UA's Good/Uncertain/Bad."""

    BAD = 0
    UNCERTAIN = 1
    GOOD = 2

    @property
    def label(self) -> str:
        """The lower-case name used in the JSON form (``"good"``)."""
        return _QUALITY_LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> Quality:
        """``"good"`` → ``Quality.GOOD``; raises ``ValueError`` for anything else."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown quality {label!r}") from None


_QUALITY_LABELS = {Quality.BAD: "bad", Quality.UNCERTAIN: "uncertain", Quality.GOOD: "good"}


class SignalKind(StrEnum):
    """What a signal's value is: one number, or an array (a spectrum)."""

    SCALAR = "scalar"
    SPECTRUM = "spectrum"


@dataclass(frozen=True, slots=True)
class Signal:
    """A named, unit-aware measurement stream, e.g. ``reactor1/feed_pump/flow`` in ``mL/min``.

    ``unit`` is a UCUM code (case-sensitive: ``mL/min``, ``Cel``, ``[pH]``). ``instrument`` is
    the id of the instrument that produces it.
    """

    id: str
    unit: str
    kind: SignalKind = SignalKind.SCALAR
    description: str = ""
    instrument: str = ""


class Sample(NamedTuple):
    """One reading of one signal.

    Timestamps are UTC nanoseconds since the epoch: ``source_ts`` as close to the instrument as
    the driver can tell (kept as received, never rewritten), ``gateway_ts`` when the gateway
    received it. ``seq`` starts at 0 per signal, increases by one per sample and survives
    restarts, so a consumer can see any gap. ``reason`` explains a quality that is not good.
    ``value`` is ``None`` for a bad sample that carries no reading.
    """

    signal: str
    value: Any
    unit: str
    source_ts: int
    gateway_ts: int
    quality: Quality
    seq: int
    reason: str | None = None


sample_of_fields: Callable[[tuple[Any, ...]], Sample] = functools.partial(tuple.__new__, Sample)
"""A :class:`Sample` from the tuple of its eight fields, in order, without NamedTuple's
Python-level ``__new__`` (a C call: half the cost, for paths that build one per row)."""


_FLOAT32 = np.float32
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def float32_decimal(value: float) -> float:
    """What an instrument meant by a float32 reading: the double nearest the shortest decimal
    that reads back as the same float32 (``1.600000023841858`` → ``1.6``).

    For drivers, once per reading of a float32 (a Modbus ``float32`` register, an OPC UA
    ``Float``): the store, every sink, the exports and the processors then all see ``1.6``, and
    no output has to know the source's precision. Nothing is lost: the result rounds back to
    the same float32. NaN, infinities and doubles beyond float32's range pass unchanged; any
    other double that is no float32 is rounded to float32 first.
    """
    if not -_FLOAT32_MAX <= value <= _FLOAT32_MAX:
        return value
    # numpy prints a float32 as its shortest round-trip decimal (Dragon4); a quarter of the
    # cost of a pure-Python search over 6-9 digits and never different from it.
    return float(str(_FLOAT32(value)))


def sample_to_json_dict(sample: Sample) -> dict[str, Any]:
    """The JSON form used by export and every upstream sink (key order is part of the form).

    ``{"signal":…, "value":…, "unit":…, "source_ts":…, "gateway_ts":…, "quality":…, "seq":…}``
    plus ``"reason"`` when the quality is not good. NaN and infinities, which JSON cannot carry,
    become ``null``.

    A spectrum's ``value`` is the list of its values (each the shortest decimal that reads back
    as the same float32), and an ``"axis"`` follows ``"unit"``:
    ``{"key": digest, "unit": "cm-1", "values": [...]}``. The key changes exactly when the axis
    does, so a consumer can cache the axis by key.
    """
    value = sample.value
    axis = None
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    elif isinstance(value, Spectrum):
        axis = _axis_dict(value.axis)
        value = _f32_floats(value)
    out: dict[str, Any] = {"signal": sample.signal, "value": value, "unit": sample.unit}
    if axis is not None:
        out["axis"] = axis
    out |= {
        "source_ts": format_ns(sample.source_ts),
        "gateway_ts": format_ns(sample.gateway_ts),
        "quality": Quality(sample.quality).label,
        "seq": sample.seq,
    }
    if sample.quality != Quality.GOOD:
        out["reason"] = sample.reason or ""
    return out


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_LABELS = {int(q): f',"quality":"{q.label}","seq":' for q in Quality}
_GOOD = int(Quality.GOOD)  # a module constant: Enum attribute look-ups are slow


@functools.lru_cache(maxsize=65536)
def _head(signal: str, unit: str) -> tuple[str, str]:
    # Signal and unit repeat in every sample of a signal: quote them once.
    return f'{{"signal":{_dumps(signal)},"value":', f',"unit":{_dumps(unit)},"source_ts":"'


def _axis_dict(axis: SpectralAxis) -> dict[str, Any]:
    return {"key": axis.key, "unit": axis.unit, "values": axis.values.tolist()}


@functools.lru_cache(maxsize=64)
def _axis_json(axis: SpectralAxis) -> str:
    # Axes are few and long (2048 points): encode each one once.
    return _dumps(_axis_dict(axis))


def _f32_floats(spectrum: Spectrum) -> list[float]:
    # numpy prints a float32 as the shortest decimal that reads back as the same float32; as a
    # Python float that decimal prints back unchanged (1e+06 becomes 1000000.0, as json does).
    return list(map(float, map(str, spectrum.values)))


def _value_json(value: Any) -> str:
    kind = type(value)
    if kind is float:
        # json.dumps writes a finite float with float.__repr__; NaN/inf have no JSON form.
        return float.__repr__(value) if value - value == 0.0 else "null"
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "null"
    return _dumps(value)


def sample_to_json(sample: Sample) -> str:
    """:func:`sample_to_json_dict` encoded compactly, exactly as ``json.dumps`` with
    ``separators=(",", ":")`` and ``ensure_ascii=False`` would, but several times faster:
    every sink and export encodes every sample."""
    head, unit = _head(sample.signal, sample.unit)
    if type(sample.value) is Spectrum:
        return _spectrum_json(sample, sample.value, head)
    text = (
        f"{head}{_value_json(sample.value)}{unit}{format_ns(sample.source_ts)}"
        f'","gateway_ts":"{format_ns(sample.gateway_ts)}"{_LABELS[sample.quality]}{sample.seq}'
    )
    if sample.quality != _GOOD:
        return f'{text},"reason":{_dumps(sample.reason or "")}}}'
    return text + "}"


def historical_json(sample: Sample) -> str:
    """:func:`sample_to_json` of a sample delivered late (a sink's backlog after an outage or
    a restart): the same object with ``"historical":true`` as its last member."""
    return sample_to_json(sample)[:-1] + ',"historical":true}'


def _spectrum_json(sample: Sample, spectrum: Spectrum, head: str) -> str:
    values = ",".join(map(float.__repr__, _f32_floats(spectrum)))
    text = (
        f'{head}[{values}],"unit":{_dumps(sample.unit)}'
        f',"axis":{_axis_json(spectrum.axis)},"source_ts":"{format_ns(sample.source_ts)}"'
        f',"gateway_ts":"{format_ns(sample.gateway_ts)}"{_LABELS[sample.quality]}{sample.seq}'
    )
    if sample.quality != _GOOD:
        return f'{text},"reason":{_dumps(sample.reason or "")}}}'
    return text + "}"
