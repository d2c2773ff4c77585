"""Pure physics of the emulated Raman spectrometer: pixel axis and synthetic raw spectra.

For the Raman emulator, and for tests or notebooks that want realistic cell-culture spectra
without a device. Nothing here does I/O or reads a clock; randomness comes only from the
:class:`numpy.random.Generator` passed in, so a seed reproduces a spectrum exactly.

Model of one raw spectrum, in detector counts per pixel::

    counts = dark offset(T) + t · (Raman bands + fluorescence + dark current(T))
             + noise(shot, read),  rounded and clipped to 0..65535

* Raman bands: pseudo-Voigt shapes at literature shifts, each scaled by one component of the
  :class:`Composition` (see :data:`BANDS` for the shifts and where they come from).
* Fluorescence: a smooth background sloping down towards high shift, growing with cell density.
* The first :data:`DARK_PIXELS` pixels are optically masked: dark offset, dark current and
  noise only, never light.
* ``t`` is the integration time; the dark offset and read noise do not scale with it.
* ``band_scale`` (1 by default) scales the Raman bands alone: a decaying laser (the emulator's
  ``laser_decay`` fault) weakens them while fluorescence, dark current and offset stay as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BANDS",
    "DARK_PIXELS",
    "DEFAULT_COMPOSITION",
    "FULL_SCALE",
    "MAX_PIXELS",
    "MIN_PIXELS",
    "READ_NOISE_COUNTS",
    "Band",
    "Composition",
    "SpectrumSynthesizer",
    "dark_offset_counts",
    "raman_shift_cm1",
    "wavelength_coefficients",
    "wavelengths_nm",
]

MIN_PIXELS = 1024
MAX_PIXELS = 2048
#: Optically masked ("electric dark") pixels at the start of every spectrum.
DARK_PIXELS = 16
FULL_SCALE = 65535
READ_NOISE_COUNTS = 10.0

#: Wavelength of the first and last pixel: with 785 nm excitation about 65-2055 cm⁻¹.
FIRST_PIXEL_NM = 789.0
LAST_PIXEL_NM = 936.0

# Detector: offset and dark current at the -10 °C TEC setpoint; dark current doubles every
# 7 K, the rule of thumb for silicon CCDs.
_DARK_OFFSET_COUNTS = 1000.0
_DARK_OFFSET_PER_K = 4.0
_DARK_CURRENT_PER_S = 15.0
_DARK_DOUBLING_K = 7.0
_REFERENCE_C = -10.0

# Fluorescence of medium and optics, and of cells (per 10⁶ cells/mL), in counts/s at 0 cm⁻¹.
_FLUORESCENCE_BASE_PER_S = 1500.0
_FLUORESCENCE_PER_VCD = 350.0


@dataclass(frozen=True, slots=True)
class Composition:
    """What is in the bioreactor broth right now, as the Raman probe sees it."""

    glucose_g_L: float = 4.0
    lactate_g_L: float = 1.0
    glutamine_mM: float = 4.0
    #: Viable cell density, 10⁶ cells/mL.
    vcd_e6_per_mL: float = 10.0
    #: Product (antibody) concentration.
    titer_g_L: float = 1.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{field.name} must be finite and >= 0, got {value!r}")


DEFAULT_COMPOSITION = Composition()

# The order of the species vector the synthesiser multiplies the band shapes with.
_SPECIES = ("glucose", "lactate", "glutamine", "cells", "titer", "water")


@dataclass(frozen=True, slots=True)
class Band:
    """One Raman band: where, how wide, and its peak rate per unit of its species."""

    species: str
    shift_cm1: float
    fwhm_cm1: float
    #: Peak counts per second per unit of the species (g/L, mM, 10⁶ cells/mL; water: 1).
    counts_per_s: float


#: Bands of aqueous cell-culture broth under 785 nm excitation. Glucose: 1125 (C-O-H bend),
#: 1060 (C-O stretch), 910 and 520 (skeletal); lactate 856 (C-COO⁻ stretch); glutamine 1410
#: (COO⁻ symmetric stretch, chosen over its ~1130 band, which glucose's 1125 would hide);
#: phenylalanine ring breathing 1003 for protein, from cells and from product; water bending
#: 1640, constant.
BANDS: tuple[Band, ...] = (
    Band("glucose", 1125.0, 30.0, 150.0),
    Band("glucose", 1060.0, 30.0, 100.0),
    Band("glucose", 910.0, 25.0, 60.0),
    Band("glucose", 520.0, 25.0, 80.0),
    Band("lactate", 856.0, 20.0, 120.0),
    Band("glutamine", 1410.0, 25.0, 15.0),
    Band("cells", 1003.0, 8.0, 25.0),
    Band("titer", 1003.0, 8.0, 90.0),
    Band("water", 1640.0, 100.0, 400.0),
)

# Pseudo-Voigt mixing: half Lorentzian (natural line shape), half Gaussian (instrument).
_LORENTZ_FRACTION = 0.5


def wavelength_coefficients(pixels: int) -> tuple[float, float, float, float]:
    """Polynomial coefficients c0..c3 of λ(p) = c0 + c1·p + c2·p² + c3·p³ in nm.

    The pixels span :data:`FIRST_PIXEL_NM` to :data:`LAST_PIXEL_NM` whatever their count, with
    the slight curvature of a real grating. The values are rounded to float32, as the device
    reports them, so host and device compute the same axis.
    """
    _check_pixels(pixels)
    span = LAST_PIXEL_NM - FIRST_PIXEL_NM
    # In x = p / (pixels - 1): λ = c0 + a·x + b·x² + c·x³ with a + b + c = span.
    b, c = -6.0, 0.5
    a = span - b - c
    last = float(pixels - 1)
    c0, c1, c2, c3 = (
        float(np.float32(value)) for value in (FIRST_PIXEL_NM, a / last, b / last**2, c / last**3)
    )
    return c0, c1, c2, c3


def wavelengths_nm(coefficients: tuple[float, ...], pixels: int) -> NDArray[np.float64]:
    """Wavelength of every pixel from the calibration polynomial (lowest order first)."""
    p = np.arange(pixels, dtype=np.float64)
    return np.asarray(np.polynomial.polynomial.polyval(p, coefficients), dtype=np.float64)


def raman_shift_cm1(wavelengths: NDArray[np.float64], laser_nm: float) -> NDArray[np.float64]:
    """Raman shift Δν̃ = 10⁷/λ0 - 10⁷/λ in cm⁻¹ of each wavelength (nm) for excitation λ0."""
    return np.asarray(1e7 / laser_nm - 1e7 / wavelengths, dtype=np.float64)


def dark_offset_counts(detector_c: float) -> float:
    """Electronic offset of every pixel at detector temperature ``detector_c`` (°C)."""
    return _DARK_OFFSET_COUNTS + _DARK_OFFSET_PER_K * (detector_c - _REFERENCE_C)


def _dark_current_per_s(detector_c: float) -> float:
    doublings = (detector_c - _REFERENCE_C) / _DARK_DOUBLING_K
    return _DARK_CURRENT_PER_S * math.pow(2.0, doublings)


def _check_pixels(pixels: int) -> None:
    if not MIN_PIXELS <= pixels <= MAX_PIXELS:
        raise ValueError(f"pixels must be {MIN_PIXELS}..{MAX_PIXELS}, got {pixels}")


class SpectrumSynthesizer:
    """Raw spectra for one pixel axis. Band shapes are computed once here; each spectrum is
    then a small matrix product, a few vector operations and one normal draw per pixel."""

    def __init__(self, shift_cm1: NDArray[np.float64], dark_pixels: int = DARK_PIXELS) -> None:
        shift = np.asarray(shift_cm1, dtype=np.float64)
        if shift.ndim != 1 or not 0 <= dark_pixels < shift.size:
            raise ValueError("shift_cm1 must be a 1-D axis longer than the dark pixels")
        self.shift_cm1 = shift
        self.dark_pixels = dark_pixels
        optical = np.ones(shift.size)
        optical[:dark_pixels] = 0.0
        shapes = np.zeros((len(_SPECIES), shift.size))
        for band in BANDS:
            shapes[_SPECIES.index(band.species)] += band.counts_per_s * _pseudo_voigt(
                shift, band.shift_cm1, band.fwhm_cm1
            )
        # Masked pixels see no light: zero their shapes once instead of masking per spectrum.
        self._shapes = shapes * optical
        self._fluorescence = _fluorescence_shape(shift) * optical

    def mean_counts(
        self,
        composition: Composition,
        integration_s: float,
        detector_c: float,
        band_scale: float = 1.0,
    ) -> NDArray[np.float64]:
        """The noise-free expectation of every pixel, before rounding and clipping."""
        return self._mean(composition, integration_s, detector_c, band_scale)[0]

    def counts(
        self,
        composition: Composition,
        integration_s: float,
        detector_c: float,
        rng: np.random.Generator,
        band_scale: float = 1.0,
    ) -> NDArray[np.uint16]:
        """One noisy raw spectrum as the detector reads it out (little-endian u16 counts)."""
        mean, electrons = self._mean(composition, integration_s, detector_c, band_scale)
        # Shot noise (variance = collected electrons, gain 1 count/e⁻) and read noise, drawn
        # together: the normal approximation of Poisson is exact enough above a few counts.
        sigma = np.sqrt(electrons + READ_NOISE_COUNTS**2)
        noisy = mean + sigma * rng.standard_normal(mean.size)
        return np.clip(np.rint(noisy), 0, FULL_SCALE).astype("<u2")

    def _mean(
        self,
        composition: Composition,
        integration_s: float,
        detector_c: float,
        band_scale: float = 1.0,
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        if not (math.isfinite(integration_s) and integration_s >= 0.0):
            raise ValueError(f"integration time must be finite and >= 0, got {integration_s}")
        if not (math.isfinite(band_scale) and band_scale >= 0.0):
            raise ValueError(f"band scale must be finite and >= 0, got {band_scale}")
        species = np.array(
            [
                composition.glucose_g_L,
                composition.lactate_g_L,
                composition.glutamine_mM,
                composition.vcd_e6_per_mL,
                composition.titer_g_L,
                1.0,
            ]
        )
        fluorescence = _FLUORESCENCE_BASE_PER_S + _FLUORESCENCE_PER_VCD * composition.vcd_e6_per_mL
        light_per_s = band_scale * (species @ self._shapes) + fluorescence * self._fluorescence
        electrons = integration_s * (light_per_s + _dark_current_per_s(detector_c))
        return electrons + dark_offset_counts(detector_c), electrons


def _pseudo_voigt(x: NDArray[np.float64], centre: float, fwhm: float) -> NDArray[np.float64]:
    """Peak-normalised pseudo-Voigt profile (1.0 at ``centre``)."""
    half = fwhm / 2.0
    d = x - centre
    lorentz = half**2 / (d**2 + half**2)
    gauss = np.exp(-math.log(2.0) * (d / half) ** 2)
    return np.asarray(_LORENTZ_FRACTION * lorentz + (1 - _LORENTZ_FRACTION) * gauss)


def _fluorescence_shape(shift: NDArray[np.float64]) -> NDArray[np.float64]:
    """Relative fluorescence: 1 at 0 cm⁻¹, falling gently and curving towards 2000 cm⁻¹."""
    u = shift / 2000.0
    return np.asarray(1.0 - 0.5 * u + 0.15 * u**2)
