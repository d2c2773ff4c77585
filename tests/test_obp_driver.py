"""The ``ocean_obp`` driver's pure parts: axis from the calibration, dark subtraction, saturation,
options, channels and registration — no device needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from gateway import InstrumentError, PluginContext, PluginKind, Registry, SignalKind, validate_ucum
from plugins.ocean_obp import plugin
from plugins.ocean_obp.driver import ObpSpectrometer
from plugins.ocean_obp.obp import ObpError
from plugins.ocean_obp.options import ObpOptions
from plugins.ocean_obp.spectrum import (
    build_axis,
    check_coefficients,
    dark_corrected,
    decode_counts,
    pixel_wavelengths,
    raman_shift,
    saturated_pixels,
)

# A 785 nm Raman spectrometer: 790 nm at pixel 0, ~0.1 nm per pixel, a little curvature.
COEFFICIENTS = (790.0, 0.1, -1e-6)


def test_raman_shift_of_830_nm_at_785_nm_excitation() -> None:
    shift = raman_shift(np.array([785.0, 830.0]), 785.0)
    assert shift[0] == 0.0
    assert shift[1] == pytest.approx(690.66, abs=0.005)
    assert shift[1] == pytest.approx(1e7 / 785 - 1e7 / 830)


def test_wavelengths_follow_the_polynomial_at_detector_pixel_indices() -> None:
    wl = pixel_wavelengths(COEFFICIENTS, 1024)
    p = np.arange(1024.0)
    np.testing.assert_allclose(wl, 790.0 + 0.1 * p - 1e-6 * p**2)
    # Masked pixels shift nothing: pixel 10 keeps its own wavelength.
    assert pixel_wavelengths(COEFFICIENTS, 1024, first_pixel=10)[0] == wl[10]


def test_raman_axis_in_cm1_over_optical_pixels() -> None:
    axis = build_axis(COEFFICIENTS, 1024, dark_pixels=8, kind="raman_shift", laser_nm=785.0)
    assert axis.unit == "cm-1"
    assert len(axis) == 1016
    wl = pixel_wavelengths(COEFFICIENTS, 1024)[8:]
    np.testing.assert_allclose(axis.values, 1e7 / 785.0 - 1e7 / wl)
    assert (np.diff(axis.values) > 0).all()
    assert axis == build_axis(COEFFICIENTS, 1024, dark_pixels=8, kind="raman_shift", laser_nm=785)


def test_wavelength_axis_in_nm() -> None:
    axis = build_axis(COEFFICIENTS, 512, dark_pixels=0, kind="wavelength", laser_nm=None)
    assert axis.unit == "nm"
    np.testing.assert_allclose(axis.values, pixel_wavelengths(COEFFICIENTS, 512))


def test_a_reversed_grating_keeps_pixel_order_with_a_decreasing_axis() -> None:
    axis = build_axis((900.0, -0.1), 100, dark_pixels=0, kind="raman_shift", laser_nm=785.0)
    assert (np.diff(axis.values) < 0).all()
    assert axis.values[0] == pytest.approx(1e7 / 785 - 1e7 / 900)


@pytest.mark.parametrize(
    ("coefficients", "pixels", "dark", "laser", "match"),
    [
        ((790.0, 0.1), 1024, 0, 800.0, r"laser_wavelength_nm 800 is not below .*790\.00 nm"),
        ((790.0, 0.1), 1024, 0, 790.0, "laser_wavelength_nm"),
        ((790.0, 0.1, -1e-3), 100, 0, 785.0, "not monotonic over pixels 0…99"),
        ((-5.0, 0.001), 1024, 0, 785.0, "not positive"),
        ((790.0, 0.1), 10, 9, 785.0, "leaves 1 after 9 dark pixels"),
        ((790.0, 0.1), 4, 9, 785.0, "leaves 0 after 9 dark pixels"),
        ((790.0, 0.0), 1024, 0, 785.0, "not monotonic"),
    ],
)
def test_calibrations_that_cannot_make_an_axis(
    coefficients: tuple[float, ...], pixels: int, dark: int, laser: float, match: str
) -> None:
    with pytest.raises(InstrumentError, match=match):
        build_axis(coefficients, pixels, dark_pixels=dark, kind="raman_shift", laser_nm=laser)


def test_coefficients_are_checked() -> None:
    assert check_coefficients([790, 0.1]) == (790.0, 0.1)
    with pytest.raises(InstrumentError, match="0 wavelength coefficients"):
        check_coefficients([])
    with pytest.raises(InstrumentError, match="9 wavelength coefficients"):
        check_coefficients([1.0] * 9)
    with pytest.raises(InstrumentError, match="coefficient 1 is nan"):
        check_coefficients([790.0, float("nan")])
    with pytest.raises(InstrumentError, match="coefficient 0 is inf"):
        check_coefficients([float("inf")])


def test_counts_decode_little_endian_without_a_copy() -> None:
    raw = np.array([0, 1, 256, 65535], dtype="<u2").tobytes()
    counts = decode_counts(raw)
    assert counts.tolist() == [0, 1, 256, 65535]
    assert not counts.flags.owndata
    for bad in (b"", b"\x01\x02\x03"):
        with pytest.raises(ObpError, match="not a whole number of pixels"):
            decode_counts(bad)


def test_dark_subtraction_drops_the_masked_pixels() -> None:
    counts = np.array([10, 12, 100, 200, 11], dtype=np.uint16)
    corrected = dark_corrected(counts, 2)
    assert corrected.dtype == np.float32
    assert corrected.tolist() == [89.0, 189.0, 0.0]
    # Within the dark noise a pixel may go below zero: kept, not clipped.
    assert dark_corrected(np.array([10, 14, 11], dtype=np.uint16), 2).tolist() == [-1.0]
    assert dark_corrected(counts, 0).tolist() == counts.tolist()


def test_saturated_pixels_are_counted() -> None:
    counts = np.array([65535, 3, 65535, 65534, 65535], dtype=np.uint16)
    assert saturated_pixels(counts) == 3
    assert saturated_pixels(counts[1:2]) == 0


# -- options ----------------------------------------------------------------------------------


def options(**kwargs: Any) -> ObpOptions:
    return ObpOptions.model_validate({"port": "/dev/ttyUSB0", **kwargs})


def test_defaults() -> None:
    o = options(laser_wavelength_nm=785)
    assert (o.baudrate, o.timeout_s, o.integration_time_ms) == (115200, 2.0, 100.0)
    assert (o.axis, o.dark_pixels, o.checksum) == ("raman_shift", 0, "none")
    assert options(axis="wavelength").laser_wavelength_nm is None


def test_raman_axis_needs_the_laser_and_the_error_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        options()
    [error] = caught.value.errors()
    assert error["loc"] == ("laser_wavelength_nm",)
    assert "laser_wavelength_nm is required when axis is raman_shift" in error["msg"]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"integration_time_ms": 0.5}, "integration_time_ms"),
        ({"integration_time_ms": 10001}, "integration_time_ms"),
        ({"dark_pixels": -1}, "dark_pixels"),
        ({"checksum": "crc"}, "checksum"),
        ({"axis": "pixel"}, "axis"),
        ({"laser_wavelength_nm": -785}, "laser_wavelength_nm"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"port": ""}, "port"),
        ({"baud": 9600}, "baud"),
    ],
)
def test_invalid_options_name_their_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        options(**{"laser_wavelength_nm": 785, **bad})
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


def test_every_option_is_described_and_the_model_is_closed_and_frozen() -> None:
    assert all(f.description for f in ObpOptions.model_fields.values())
    o = options(laser_wavelength_nm=785)
    with pytest.raises(ValidationError):
        o.port = "/dev/ttyS0"  # type: ignore[misc]


# -- driver without I/O -----------------------------------------------------------------------


def test_channels_are_known_without_io(tmp_path: Path) -> None:
    driver = ObpSpectrometer(
        options(laser_wavelength_nm=785, dark_pixels=4), PluginContext("raman", tmp_path)
    )
    channels = {c.name: c for c in driver.channels()}
    assert list(channels) == ["spectrum", "integration_time", "detector_temperature"]
    assert channels["spectrum"].kind is SignalKind.SPECTRUM
    assert channels["spectrum"].unit == "{counts}"
    assert "Raman shift (cm-1)" in channels["spectrum"].description
    assert "4 masked pixels" in channels["spectrum"].description
    assert channels["integration_time"].unit == "ms"
    assert channels["detector_temperature"].unit == "Cel"
    for channel in channels.values():
        validate_ucum(channel.unit)
    assert driver.axis is None and driver.serial_number is None


def test_plugin_registers_a_factory_that_imports_pyserial_when_it_builds() -> None:
    registry = Registry()
    plugin.pat_gateway_register_drivers(registry)
    registration = registry.get(PluginKind.DRIVER, "ocean_obp")
    assert registration is not None
    assert registration.factory is plugin.build_driver
    assert registration.options_model is ObpOptions
    assert "Ocean" in registration.description
    assert (registration.requires, registration.extra) == (("serial",), "serial")
    built = registration.factory(
        options(laser_wavelength_nm=785), PluginContext("raman", Path("."))
    )
    assert isinstance(built, ObpSpectrometer)
