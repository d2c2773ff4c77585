"""Spectra as first-class values: an immutable float32 array on a shared, unit-aware axis.

A driver builds one :class:`SpectralAxis` when it learns the instrument's calibration (the
Raman shift of every pixel, in ``cm-1``) and then publishes a :class:`Spectrum` per acquisition
that *references* that axis object: the axis is not copied per spectrum. Its :attr:`key`, a
digest of unit and values, is how the store and the JSON form refer to it, so a consumer can
cache the axis and notice when the calibration changes. See
``docs/decisions/0004-spectra-as-data.md``.

Both classes copy what they are given and freeze it: a stored spectrum is the original record,
and nothing a driver does to its buffer afterwards can change it.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import numpy.typing as npt

from .units import validate_ucum

__all__ = [
    "SpectralAxis",
    "Spectrum",
    "decode_values",
    "encode_values",
    "spectrum_summary",
]

# The stored form of a spectrum's values: magic, axis key, then float32 little-endian values.
_MAGIC = b"SPC1"
_KEY_BYTES = 16
_HEADER = len(_MAGIC) + _KEY_BYTES
_F32LE = np.dtype("<f4")


@functools.lru_cache(maxsize=256)
def _checked_unit(unit: str) -> str:
    return validate_ucum(unit)


class SpectralAxis:
    """The abscissa of a spectrum: one finite value per point, in a UCUM unit (``cm-1``, ``nm``).

    Build it once per calibration, not per spectrum. Equal axes (same unit and values, bit for
    bit) have equal :attr:`key`.
    """

    __slots__ = ("key", "unit", "values")

    values: npt.NDArray[np.float64]
    unit: str
    key: str

    def __init__(self, values: npt.ArrayLike, unit: str) -> None:
        array = np.array(values, dtype=np.float64)  # always a copy
        if array.ndim != 1 or array.size < 2:
            raise ValueError(f"an axis is a 1-D array of 2 or more points, not shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("an axis must not contain NaN or infinities")
        array.flags.writeable = False
        self.values = array
        self.unit = _checked_unit(unit)
        digest = hashlib.blake2b(unit.encode() + b"\0" + array.tobytes(), digest_size=_KEY_BYTES)
        self.key = digest.hexdigest()

    def __len__(self) -> int:
        return int(self.values.size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpectralAxis) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return (
            f"SpectralAxis({len(self)} points, {self.values[0]:.6g}…{self.values[-1]:.6g}"
            f" {self.unit}, key={self.key[:12]})"
        )


class Spectrum:
    """One acquisition: float32 values, one per point of :attr:`axis`.

    The unit of the values is the signal's unit (e.g. ``{counts}``); the axis carries its own.
    """

    __slots__ = ("axis", "values")

    values: npt.NDArray[np.float32]
    axis: SpectralAxis

    def __init__(self, values: npt.ArrayLike, axis: SpectralAxis) -> None:
        if not isinstance(axis, SpectralAxis):
            raise TypeError(f"axis must be a SpectralAxis, got {type(axis).__name__}")
        array = np.array(values, dtype=np.float32)  # always a copy
        if array.ndim != 1:
            raise ValueError(f"spectrum values must be 1-D, got shape {array.shape}")
        if array.size != len(axis):
            raise ValueError(f"{array.size} values for an axis of {len(axis)} points")
        array.flags.writeable = False
        self.values = array
        self.axis = axis

    def __len__(self) -> int:
        return int(self.values.size)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Spectrum)
            and other.axis.key == self.axis.key
            and np.array_equal(other.values, self.values)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container semantics

    def __repr__(self) -> str:
        return f"Spectrum({len(self)} points, max {float(self.values.max()):.6g}, {self.axis!r})"

    @classmethod
    def _trusted(cls, values: npt.NDArray[np.float32], axis: SpectralAxis) -> Spectrum:
        """Wrap values already checked and frozen (the store's read path): no copy."""
        spectrum = cls.__new__(cls)
        spectrum.values = values
        spectrum.axis = axis
        return spectrum


def encode_values(spectrum: Spectrum) -> bytes:
    """The stored form: ``SPC1``, the 16-byte axis key, float32 little-endian values."""
    return _MAGIC + bytes.fromhex(spectrum.axis.key) + spectrum.values.astype(_F32LE).tobytes()


def decode_values(blob: bytes) -> tuple[str, npt.NDArray[np.float32]]:
    """Inverse of :func:`encode_values`: the axis key and the (read-only) values."""
    if len(blob) < _HEADER or blob[:4] != _MAGIC or (len(blob) - _HEADER) % 4:
        raise ValueError(f"not a stored spectrum ({len(blob)} bytes)")
    values = np.frombuffer(blob, dtype=_F32LE, offset=_HEADER).astype(np.float32, copy=False)
    return blob[4:_HEADER].hex(), values


def spectrum_summary(spectrum: Spectrum, *, prominence: float = 0.05) -> str:
    """One line for a terminal: points, axis range, maximum and the number of peaks.

    Peaks are counted on a smoothed copy (a 15-point moving average: shot noise would make every
    pixel a peak, Raman bands are wider): a peak is a local maximum standing out by
    ``prominence`` times the spectrum's range above the higher of its two bases — crude, but
    stable enough for an operator to see that bands are there. Not for the hot path.
    """
    y = spectrum.values.astype(np.float64)
    smooth = np.convolve(y, np.ones(15) / 15, mode="valid") if y.size >= 30 else y
    axis = spectrum.axis
    return (
        f"{len(y)} pts {axis.values.min():.0f}-{axis.values.max():.0f} {axis.unit}, "
        f"max {y.max():.6g}, {count_peaks(smooth, prominence)} peaks"
    )


def count_peaks(y: npt.NDArray[np.float64], prominence: float = 0.05) -> int:
    """Local maxima whose prominence exceeds ``prominence`` times the range of ``y``."""
    span = float(y.max() - y.min()) if y.size else 0.0
    if y.size < 3 or span == 0.0:
        return 0
    threshold = prominence * span
    interior = np.flatnonzero((y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:])) + 1
    count = 0
    for i in interior:
        left = y[: i + 1][::-1]
        right = y[i:]
        # Walk outwards until a higher point (or the edge): the lowest point on each side is
        # that side's base; prominence is the height above the higher base.
        left_higher = np.flatnonzero(left > y[i])
        right_higher = np.flatnonzero(right > y[i])
        left_base = left[: left_higher[0] if left_higher.size else None].min()
        right_base = right[: right_higher[0] if right_higher.size else None].min()
        if y[i] - max(left_base, right_base) > threshold:
            count += 1
    return count
