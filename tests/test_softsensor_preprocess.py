"""Spectral preprocessing against small cases computed by hand; the compiled (per-axis) form
against the plain one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from plugins.softsensor.preprocess import (
    Baseline,
    Crop,
    MeanCenter,
    Normalize,
    Pipeline,
    SavitzkyGolay,
    Snv,
    Step,
    step_from_dict,
)

AXIS = np.array([100.0, 200.0, 300.0, 400.0, 500.0])


def test_crop_keeps_the_window_inclusive_and_names_an_empty_one() -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    out, axis = Crop(200, 400).apply(x, AXIS)
    assert out.tolist() == [[2.0, 3.0, 4.0]] and axis.tolist() == [200.0, 300.0, 400.0]
    with pytest.raises(ValueError, match=r"no axis point in \[600.0, 700.0\].*100..500"):
        Crop(600.0, 700.0).apply(x, AXIS)
    with pytest.raises(ValueError, match="must be below"):
        Crop(5, 5)


def test_snv_by_hand() -> None:
    # [1, 2, 3]: mean 2, sample std 1 -> [-1, 0, 1]; [2, 4, 6]: mean 4, std 2 -> the same.
    x = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [5.0, 5.0, 5.0]])
    out, _ = Snv().apply(x, AXIS[:3])
    assert out.tolist() == [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_baseline_removes_a_polynomial_background_exactly() -> None:
    # A peak on a quadratic background: degree 2 leaves only what the quadratic cannot fit.
    background = 3.0 + 0.01 * AXIS + 2e-5 * AXIS**2
    out, _ = Baseline(2).apply(background[None, :], AXIS)
    assert np.allclose(out, 0.0, atol=1e-9)
    line = 5.0 + 0.5 * AXIS
    out, _ = Baseline(1).apply(np.vstack([line, 2 * line]), AXIS)
    assert np.allclose(out, 0.0, atol=1e-9)
    # Degree 0 subtracts the mean.
    out, _ = Baseline(0).apply(np.array([[1.0, 2.0, 3.0, 4.0, 5.0]]), AXIS)
    assert np.allclose(out, [[-2.0, -1.0, 0.0, 1.0, 2.0]], atol=1e-12)


def test_savitzky_golay_smooths_and_differentiates_by_hand() -> None:
    # Window 3, order 1 smoothing is the 3-point moving average inside the spectrum.
    x = np.array([[0.0, 3.0, 0.0, 3.0, 0.0, 3.0, 0.0]])
    out, _ = SavitzkyGolay(3, 1, 0).apply(x, np.arange(7.0))
    assert np.allclose(out[0, 1:-1], [1.0, 2.0, 1.0, 2.0, 1.0])
    # The first derivative of a straight line is its slope everywhere (per point).
    line = np.array([2.0 * np.arange(9.0) + 1.0])
    out, _ = SavitzkyGolay(5, 2, 1).apply(line, np.arange(9.0))
    assert np.allclose(out, 2.0)
    with pytest.raises(ValueError, match="odd"):
        SavitzkyGolay(4, 2)
    with pytest.raises(ValueError, match="deriv"):
        SavitzkyGolay(5, 1, 2)


def test_mean_centre_learns_the_training_mean_and_refuses_another_length() -> None:
    training = np.array([[1.0, 2.0], [3.0, 6.0]])
    fitted = MeanCenter().fit(training, AXIS[:2])
    assert fitted.mean == (2.0, 4.0)
    out, _ = fitted.apply(np.array([[2.0, 5.0]]), AXIS[:2])
    assert out.tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="not fitted"):
        MeanCenter().apply(training, AXIS[:2])
    with pytest.raises(ValueError, match="2 points, the spectra 3"):
        fitted.apply(np.ones((1, 3)), AXIS[:3])


def test_a_fitted_pipeline_round_trips_through_json_and_applies_the_same() -> None:
    rng = np.random.default_rng(1)
    axis = np.linspace(400.0, 1800.0, 200)
    x = rng.normal(100.0, 5.0, (6, 200)) + np.linspace(0.0, 50.0, 200)
    pipeline = Pipeline(
        (Crop(500, 1700), Baseline(1), SavitzkyGolay(11, 2, 0), Snv(), MeanCenter())
    ).fit(x, axis)
    again = Pipeline.from_dicts(json.loads(json.dumps(pipeline.to_dicts())))
    assert again == pipeline
    first, cropped = pipeline.apply(x, axis)
    second, _ = again.apply(x, axis)
    assert np.array_equal(first, second)
    assert cropped.min() >= 500 and cropped.max() <= 1700
    assert np.allclose(first.mean(axis=0), 0.0, atol=1e-9)  # centred on the training mean


def test_unknown_steps_and_bad_fields_are_named() -> None:
    with pytest.raises(ValueError, match="unknown preprocessing step 'msc'"):
        step_from_dict({"step": "msc"})
    with pytest.raises(ValueError, match="step 'snv'"):
        step_from_dict({"step": "snv", "window": 3})
    with pytest.raises(ValueError, match="5 points per spectrum on an axis of 4"):
        Pipeline((Snv(),)).apply(np.ones((1, 5)), AXIS[:4])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"step": "savgol", "window": 15.0}, "savgol: window must be an integer, not 15.0"),
        ({"step": "savgol", "polyorder": 2.5}, "savgol: polyorder must be an integer, not 2.5"),
        ({"step": "savgol", "deriv": False}, "savgol: deriv must be an integer, not False"),
        ({"step": "baseline", "degree": 2.0}, "baseline: degree must be an integer, not 2.0"),
        ({"step": "baseline", "degree": "2"}, "baseline: degree must be an integer, not '2'"),
        ({"step": "crop", "low": "1000", "high": 1800}, "crop: low must be a number, not '1000'"),
        ({"step": "crop", "low": 400, "high": True}, "crop: high must be a number, not True"),
        ({"step": "crop", "low": 400, "high": 1e999}, "crop: high must be finite, not inf"),
        ({"step": "normalize", "low": 10**400, "high": 1}, "normalize: low must be finite"),
        ({"step": "normalize", "low": [1], "high": 2}, r"normalize: low must be a number"),
        ({"step": "mean_center", "mean": 5}, "mean_center: mean must be a list of numbers"),
        ({"step": "mean_center", "mean": "12"}, "mean_center: mean must be a list of numbers"),
        ({"step": "mean_center", "mean": [1.0, "2"]}, r"mean_center: mean\[1\] must be a number"),
    ],
)
def test_parameters_of_the_wrong_type_are_refused_naming_step_and_field(
    spec: dict[str, object], message: str
) -> None:
    # A float window or a string bound used to be accepted and fail later, in numpy, with a
    # TypeError on every spectrum.
    with pytest.raises(ValueError, match=message):
        step_from_dict(spec)


def test_parameters_are_stored_as_plain_int_and_float() -> None:
    crop = Crop(400, 1800)
    assert (crop.low, crop.high) == (400.0, 1800.0) and type(crop.low) is float
    # numpy's integers (a script's arguments, say) become int: the file is JSON.
    savgol = step_from_dict({"step": "savgol", "window": np.int64(5), "polyorder": np.int32(2)})
    assert savgol.to_dict() == {"step": "savgol", "window": 5, "polyorder": 2, "deriv": 0}
    assert (
        type(step_from_dict({"step": "baseline", "degree": np.int64(3)}).to_dict()["degree"]) is int
    )
    centre = step_from_dict({"step": "mean_center", "mean": np.array([1, 2])})
    assert centre == MeanCenter((1.0, 2.0)) and type(centre.to_dict()["mean"][0]) is float


def test_normalize_divides_by_the_band_mean_by_hand() -> None:
    # Band 200..300 cm-1: mean of (4, 6) is 5, of (1, 3) is 2; a spectrum without it stays.
    x = np.array([[1.0, 4.0, 6.0, 8.0, 10.0], [2.0, 1.0, 3.0, 4.0, 0.0], [7.0, 0.0, 0.0, 1.0, 1.0]])
    out, axis = Normalize(200, 300).apply(x, AXIS)
    assert out.tolist() == [[0.2, 0.8, 1.2, 1.6, 2.0], [1.0, 0.5, 1.5, 2.0, 0.0], x[2].tolist()]
    assert axis is AXIS
    compiled, _ = Normalize(200, 300).compile(AXIS)
    assert compiled(x).tolist() == out.tolist()
    with pytest.raises(ValueError, match=r"normalize: no axis point in \[600.0, 700.0\]"):
        Normalize(600.0, 700.0).compile(AXIS)
    with pytest.raises(ValueError, match="must be below"):
        Normalize(5, 5)
    assert step_from_dict({"step": "normalize", "low": 1.0, "high": 2.0}) == Normalize(1.0, 2.0)


# A Raman-like axis: 2032 points, unevenly spaced (a grating's curvature), 84..2055 cm-1.
RAMAN_AXIS = 84.0 + 1971.0 * np.linspace(0.0, 1.0, 2032) ** 1.05


@pytest.mark.parametrize(
    "steps",
    [
        (Crop(400, 1800), Baseline(2), SavitzkyGolay(15, 2, 0), Normalize(1580, 1700)),
        (Crop(400, 1800), SavitzkyGolay(11, 3, 1), Baseline(3), Snv()),
        (Snv(), SavitzkyGolay(21, 4, 2), Crop(300, 1900), Baseline(0)),
        (Baseline(5), SavitzkyGolay(3, 1, 0), SavitzkyGolay(31, 2, 0)),
    ],
    ids=["default", "derivative-then-baseline", "second-derivative", "high-degree"],
)
def test_the_compiled_pipeline_equals_the_plain_one(steps: tuple[Step, ...]) -> None:
    rng = np.random.default_rng(4)
    background = 3000.0 * (1.0 - RAMAN_AXIS / 4000.0)
    bands = 500.0 * np.exp(-0.5 * ((RAMAN_AXIS - 1003.0) / 6.0) ** 2)
    x = background + bands * rng.uniform(0.5, 2.0, (7, 1)) + rng.normal(0.0, 40.0, (7, 2032))
    pipeline = Pipeline((*steps, MeanCenter())).fit(x[:5], RAMAN_AXIS)
    expected, axis = pipeline.apply(x, RAMAN_AXIS)
    compiled = pipeline.compile(RAMAN_AXIS)
    assert np.array_equal(compiled.output_axis, axis)
    scale = np.abs(expected).max()
    assert np.abs(compiled(x) - expected).max() <= 1e-9 * scale
    # One spectrum at a time (the soft sensor's case) gives the same rows.
    assert np.abs(compiled(x[3:4]) - expected[3:4]).max() <= 1e-9 * scale


def test_compiling_raises_what_applying_would() -> None:
    with pytest.raises(ValueError, match=r"crop: no axis point in \[600.0, 700.0\]"):
        Pipeline((Crop(600.0, 700.0),)).compile(AXIS)
    with pytest.raises(ValueError, match="savgol: 5 points, fewer than the window 7"):
        Pipeline((SavitzkyGolay(7, 2, 0),)).compile(AXIS)
    with pytest.raises(ValueError, match="baseline: 5 points cannot fit degree 5"):
        Pipeline((Baseline(5),)).compile(AXIS)
    with pytest.raises(ValueError, match="mean_center: not fitted"):
        Pipeline((MeanCenter(),)).compile(AXIS)
    # A crop of a non-monotonic axis keeps scattered points, compiled or not.
    axis = np.array([300.0, 100.0, 500.0, 200.0, 400.0])
    x = np.arange(10.0).reshape(2, 5)
    compiled = Pipeline((Crop(150, 450),)).compile(axis)
    assert compiled(x).tolist() == Crop(150, 450).apply(x, axis)[0].tolist()
    assert compiled.output_axis.tolist() == [300.0, 200.0, 400.0]
