"""Synthetic Raman spectra of the emulator: axis, bands, scaling, dark pixels, noise, speed."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import numpy as np
import pytest
from numpy.typing import NDArray

from firmware_stubs.raman.spectrum import (
    DARK_PIXELS,
    DEFAULT_COMPOSITION,
    FULL_SCALE,
    Composition,
    SpectrumSynthesizer,
    dark_offset_counts,
    raman_shift_cm1,
    wavelength_coefficients,
    wavelengths_nm,
)


def axis(pixels: int = 2048, laser_nm: float = 785.0) -> NDArray[np.float64]:
    return raman_shift_cm1(wavelengths_nm(wavelength_coefficients(pixels), pixels), laser_nm)


@pytest.fixture(scope="module")
def synth() -> SpectrumSynthesizer:
    return SpectrumSynthesizer(axis())


@pytest.mark.parametrize("pixels", [1024, 1500, 2048])
def test_axis_spans_the_fingerprint_region(pixels: int) -> None:
    shift = axis(pixels)
    assert shift.size == pixels
    assert 60.0 < shift[0] < 400.0 and 1800.0 < shift[-1] < 2100.0
    assert np.all(np.diff(shift) > 0)
    coefficients = wavelength_coefficients(pixels)
    assert all(float(np.float32(c)) == c for c in coefficients)  # exactly what f32 carries


def test_pixel_count_is_checked() -> None:
    with pytest.raises(ValueError, match="pixels"):
        wavelength_coefficients(512)


def band_area(
    synth: SpectrumSynthesizer, counts: NDArray[np.uint16], centre: float, half: float
) -> float:
    """Area of the band at ``centre`` above a straight baseline through its two shoulders."""
    shift = synth.shift_cm1
    inside = np.abs(shift - centre) <= half
    left = (shift > centre - 2 * half) & (shift < centre - half)
    right = (shift > centre + half) & (shift < centre + 2 * half)
    x = np.concatenate([shift[left], shift[right]])
    y = np.concatenate([counts[left], counts[right]]).astype(float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(np.sum(counts[inside] - (slope * shift[inside] + intercept)))


def test_glucose_band_grows_with_glucose(synth: SpectrumSynthesizer) -> None:
    rng = np.random.default_rng(1)
    areas = [
        band_area(synth, synth.counts(Composition(glucose_g_L=g), 1.0, -10.0, rng), 1125.0, 25.0)
        for g in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    ]
    assert all(b > a for a, b in itertools.pairwise(areas)), areas
    assert abs(areas[0]) < 0.2 * areas[-1]


@pytest.mark.parametrize(
    ("species", "peak"),
    [
        ({"glucose_g_L": 5.0}, 1125.0),
        ({"lactate_g_L": 5.0}, 856.0),
        ({"glutamine_mM": 40.0}, 1410.0),
        ({"titer_g_L": 5.0}, 1003.0),
    ],
)
def test_each_species_peaks_at_its_literature_band(
    synth: SpectrumSynthesizer, species: dict[str, float], peak: float
) -> None:
    empty = Composition(0, 0, 0, 0, 0)
    extra = synth.mean_counts(replace(empty, **species), 1.0, -10.0) - synth.mean_counts(
        empty, 1.0, -10.0
    )
    assert abs(synth.shift_cm1[int(np.argmax(extra))] - peak) < 3.0


def test_cells_raise_the_fluorescence_background(synth: SpectrumSynthesizer) -> None:
    low = synth.mean_counts(Composition(vcd_e6_per_mL=1.0), 1.0, -10.0)
    high = synth.mean_counts(Composition(vcd_e6_per_mL=30.0), 1.0, -10.0)
    gain = (high - low)[DARK_PIXELS:]
    assert np.all(gain > 0)
    assert gain[0] > gain[-1]  # sloping: strongest at low shift


def test_counts_scale_with_integration_time(synth: SpectrumSynthesizer) -> None:
    rng = np.random.default_rng(2)
    offset = dark_offset_counts(-10.0)
    short = synth.counts(DEFAULT_COMPOSITION, 0.5, -10.0, rng)[DARK_PIXELS:].mean() - offset
    long = synth.counts(DEFAULT_COMPOSITION, 1.0, -10.0, rng)[DARK_PIXELS:].mean() - offset
    assert long / short == pytest.approx(2.0, rel=0.01)


def test_dark_pixels_carry_no_raman_signal(synth: SpectrumSynthesizer) -> None:
    rich = Composition(glucose_g_L=50, lactate_g_L=10, glutamine_mM=20, vcd_e6_per_mL=40)
    empty = Composition(0, 0, 0, 0, 0)
    dark_rich = synth.mean_counts(rich, 1.0, -10.0)[:DARK_PIXELS]
    dark_empty = synth.mean_counts(empty, 1.0, -10.0)[:DARK_PIXELS]
    np.testing.assert_array_equal(dark_rich, dark_empty)
    counts = synth.counts(rich, 1.0, -10.0, np.random.default_rng(3))
    assert abs(counts[:DARK_PIXELS].mean() - dark_offset_counts(-10.0)) < 40
    assert counts[DARK_PIXELS:].mean() > 5 * counts[:DARK_PIXELS].mean()


def test_dark_offset_and_read_noise_do_not_scale_with_time(synth: SpectrumSynthesizer) -> None:
    counts = synth.counts(DEFAULT_COMPOSITION, 0.0, -10.0, np.random.default_rng(4))
    assert counts.mean() == pytest.approx(1000.0, abs=3.0)
    assert counts.std() == pytest.approx(10.0, rel=0.15)


def test_warm_detector_reads_higher_dark(synth: SpectrumSynthesizer) -> None:
    cold = synth.mean_counts(DEFAULT_COMPOSITION, 1.0, -10.0)[:DARK_PIXELS]
    warm = synth.mean_counts(DEFAULT_COMPOSITION, 1.0, 22.0)[:DARK_PIXELS]
    assert np.all(warm > cold)


def test_saturation_clips_at_full_scale(synth: SpectrumSynthesizer) -> None:
    counts = synth.counts(Composition(vcd_e6_per_mL=60.0), 10.0, -10.0, np.random.default_rng(5))
    assert counts.dtype == np.dtype("<u2")
    assert counts.max() == FULL_SCALE


def test_deterministic_per_seed(synth: SpectrumSynthesizer) -> None:
    def two(seed: int) -> list[NDArray[np.uint16]]:
        rng = np.random.default_rng(seed)
        return [synth.counts(DEFAULT_COMPOSITION, 0.1, -10.0, rng) for _ in range(2)]

    a, b = two(7), two(7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], two(8)[0])


def test_shot_noise_grows_with_signal(synth: SpectrumSynthesizer) -> None:
    rng = np.random.default_rng(6)
    repeats = np.array([synth.counts(DEFAULT_COMPOSITION, 1.0, -10.0, rng) for _ in range(50)])
    sigma = repeats[:, DARK_PIXELS:].std(axis=0).mean()
    mean = synth.mean_counts(DEFAULT_COMPOSITION, 1.0, -10.0)[DARK_PIXELS:]
    expected = np.sqrt(mean - dark_offset_counts(-10.0) + 100.0).mean()
    assert sigma == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_composition_rejects_impossible_values(bad: float) -> None:
    with pytest.raises(ValueError, match="glucose_g_L"):
        Composition(glucose_g_L=bad)


def test_synthesis_is_fast(synth: SpectrumSynthesizer) -> None:
    rng = np.random.default_rng(0)
    synth.counts(DEFAULT_COMPOSITION, 1.0, -10.0, rng)
    started = time.perf_counter()
    for _ in range(100):
        synth.counts(DEFAULT_COMPOSITION, 1.0, -10.0, rng)
    assert (time.perf_counter() - started) / 100 < 0.005
