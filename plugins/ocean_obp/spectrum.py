"""From detector counts to a published spectrum: the calibrated axis, dark subtraction, saturation.

Pure functions on numpy arrays, tested without a device. Per spectrum the work is a handful of
vectorised operations; the axis is computed once per calibration and pixel count, not per
spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from gateway import InstrumentError, SpectralAxis

from .obp import ObpError

__all__ = [
    "MAX_COEFFICIENTS",
    "SATURATION_COUNTS",
    "build_axis",
    "check_coefficients",
    "dark_corrected",
    "decode_counts",
    "pixel_wavelengths",
    "raman_shift",
    "saturated_pixels",
]

SATURATION_COUNTS = 65535
"""A 16-bit pixel at full scale: the light it saw is unknown, only that it was too much."""
MAX_COEFFICIENTS = 8

_U16LE = np.dtype("<u2")


def decode_counts(payload: bytes) -> npt.NDArray[np.uint16]:
    """The raw spectrum's pixels (u16 little-endian each), without copying the payload."""
    if not payload or len(payload) % 2:
        raise ObpError(f"raw spectrum of {len(payload)} bytes is not a whole number of pixels")
    return np.frombuffer(payload, dtype=_U16LE)


def check_coefficients(coefficients: Sequence[float]) -> tuple[float, ...]:
    """The wavelength polynomial's coefficients, checked: 1 to 8 of them, all finite."""
    if not 1 <= len(coefficients) <= MAX_COEFFICIENTS:
        raise InstrumentError(
            f"device reports {len(coefficients)} wavelength coefficients, expected 1 to"
            f" {MAX_COEFFICIENTS}"
        )
    for index, value in enumerate(coefficients):
        if not math.isfinite(value):
            raise InstrumentError(f"wavelength coefficient {index} is {value}")
    return tuple(float(c) for c in coefficients)


def pixel_wavelengths(
    coefficients: Sequence[float], pixel_count: int, first_pixel: int = 0
) -> npt.NDArray[np.float64]:
    """λ(p) = Σ cᵢ·pⁱ in nm for detector pixels ``first_pixel`` … ``pixel_count - 1``.

    Pixels keep their detector index: masked pixels at the start shift nothing.
    """
    pixels = np.arange(first_pixel, pixel_count, dtype=np.float64)
    return np.asarray(np.polynomial.polynomial.polyval(pixels, coefficients), dtype=np.float64)


def raman_shift(wavelength_nm: npt.NDArray[np.float64], laser_nm: float) -> npt.NDArray[np.float64]:
    """Δν̃ = 10⁷/λ0 - 10⁷/λ in cm⁻¹ (positive for Stokes light, λ > λ0)."""
    shift: npt.NDArray[np.float64] = 1e7 / laser_nm - 1e7 / wavelength_nm
    return shift


def build_axis(
    coefficients: Sequence[float],
    pixel_count: int,
    *,
    dark_pixels: int,
    kind: Literal["raman_shift", "wavelength"],
    laser_nm: float | None,
) -> SpectralAxis:
    """The axis of the published (optical) pixels: Raman shift in ``cm-1`` or wavelength in ``nm``.

    The axis follows pixel order. It must be strictly monotonic; for a grating whose wavelength
    falls with pixel index it is monotonic *decreasing* (and so is the Raman shift) — the pixels
    are not reordered, so a spectrum is always the detector's readout as it came.
    Raises ``InstrumentError`` for a calibration that cannot make an axis, or a laser that is
    not below every pixel's wavelength.
    """
    optical = pixel_count - dark_pixels
    if optical < 2:
        raise InstrumentError(
            f"spectrum of {pixel_count} pixels leaves {max(optical, 0)} after {dark_pixels}"
            " dark pixels; at least 2 are needed"
        )
    wavelengths = pixel_wavelengths(coefficients, pixel_count, dark_pixels)
    if not np.isfinite(wavelengths).all() or wavelengths.min() <= 0:
        raise InstrumentError("wavelength calibration gives wavelengths that are not positive")
    steps = np.diff(wavelengths)
    if not ((steps > 0).all() or (steps < 0).all()):
        raise InstrumentError(
            f"wavelength calibration is not monotonic over pixels {dark_pixels}…{pixel_count - 1}"
        )
    if kind == "wavelength":
        return SpectralAxis(wavelengths, "nm")
    if laser_nm is None:
        raise ValueError("a Raman shift axis needs the laser wavelength")
    shortest = float(wavelengths.min())
    if laser_nm >= shortest:
        raise InstrumentError(
            f"laser_wavelength_nm {laser_nm:g} is not below every pixel's wavelength"
            f" (shortest {shortest:.2f} nm)"
        )
    return SpectralAxis(raman_shift(wavelengths, laser_nm), "cm-1")


def dark_corrected(counts: npt.NDArray[np.uint16], dark_pixels: int) -> npt.NDArray[np.float32]:
    """The optical pixels minus the mean of the ``dark_pixels`` masked ones before them.

    Values can fall below zero where the signal is within the dark noise; they are kept, since
    clipping would bias averages downstream.
    """
    optical = counts[dark_pixels:].astype(np.float32)
    if dark_pixels:
        optical -= np.float32(counts[:dark_pixels].mean())
    return optical


def saturated_pixels(counts: npt.NDArray[np.uint16]) -> int:
    """How many pixels (masked ones included: they feed the dark level) sit at full scale."""
    return int(np.count_nonzero(counts == SATURATION_COUNTS))
