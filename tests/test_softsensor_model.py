"""The PLS model file: prediction checked by hand, the round trip, and every refusal."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway import SpectralAxis
from plugins.softsensor.model import (
    ModelFileError,
    PlsModel,
    Target,
    content_hash,
    load_model,
    model_from_dict,
    model_to_dict,
    save_model,
)
from plugins.softsensor.preprocess import (
    Baseline,
    Crop,
    MeanCenter,
    Normalize,
    Pipeline,
    SavitzkyGolay,
)

AXIS = SpectralAxis([100.0, 200.0, 300.0, 400.0, 500.0], "cm-1")


def small_model(**changes: Any) -> PlsModel:
    """Crop to the 3 middle points, subtract a mean of 1s; two one-component targets.

    glucose: y = 2·x1 + 1·x3 + 0.5; centre 0, its score is t = x1 (rotation e1) with loading
    e1 and score variance 4, so T² = x1²/4 and Q = x2² + x3² (what e1 cannot reconstruct).
    lactate: y = x2 - 1; centre (0, 1, 0) (measured on part of the samples), so its score is
    t = x2 - 1; loading (0, 2, 0): Q = x1² + (x2 - 1 - 2·t)² + x3².
    """
    glucose = Target(
        name="glucose",
        unit="g/L",
        components=1,
        coefficients=np.array([2.0, 0.0, 1.0]),
        intercept=0.5,
        center=np.zeros(3),
        rotations=np.array([[1.0], [0.0], [0.0]]),
        loadings=np.array([[1.0], [0.0], [0.0]]),
        score_variance=np.array([4.0]),
        t2_limit=9.0,
        q_limit=2.0,
        calibration_range=(0.0, 8.0),
        rmsecv=0.25,
    )
    lactate = Target(
        name="lactate",
        unit="g/L",
        components=1,
        coefficients=np.array([0.0, 1.0, 0.0]),
        intercept=-1.0,
        center=np.array([0.0, 1.0, 0.0]),
        rotations=np.array([[0.0], [1.0], [0.0]]),
        loadings=np.array([[0.0], [2.0], [0.0]]),
        score_variance=np.array([1.0]),
        t2_limit=6.5,
        q_limit=3.0,
        calibration_range=(0.0, 4.0),
        rmsecv=None,
    )
    fields: dict[str, Any] = {
        "id": "reactor1-glc-lac",
        "version": "3",
        "description": "hand-made",
        "created": "2026-11-26T16:00:00Z",
        "axis": AXIS,
        "spectrum_unit": "{counts}",
        "preprocessing": Pipeline((Crop(150, 450), MeanCenter((1.0, 1.0, 1.0)))),
        "targets": (glucose, lactate),
        "confidence": 0.99,
        "training": {"n_samples": 12, "note": ["any", "metadata"]},
    }
    return PlsModel(**(fields | changes))


def test_prediction_by_hand() -> None:
    # After crop and centring, [9, 3, 4, 2, 9] becomes x = (2, 3, 1); lactate's score is
    # t = 3 - 1 = 2 about its own centre.
    prediction = small_model().predict(np.array([[9.0, 3.0, 4.0, 2.0, 9.0]]))
    assert prediction.values.tolist() == [[2 * 2 + 1 + 0.5, 3 - 1.0]]
    assert prediction.t2.tolist() == [[2.0**2 / 4, 2.0**2 / 1]]
    assert prediction.q.tolist() == [[3.0**2 + 1.0**2, 2.0**2 + (3.0 - 1.0 - 4.0) ** 2 + 1.0**2]]


def test_prediction_of_a_batch_a_single_spectrum_and_float32() -> None:
    model = small_model()
    x = np.arange(15.0).reshape(3, 5)
    batch = model.predict(x)
    assert batch.values.shape == batch.t2.shape == batch.q.shape == (3, 2)
    assert batch.values.dtype == np.float64
    single = model.predict(x[1].astype(np.float32))
    assert np.array_equal(single.values, batch.values[1:2])
    with pytest.raises(ValueError, match=r"shape \(1, 4\); the model expects \(n, 5\)"):
        model.predict(np.ones((1, 4)))


def test_a_model_must_end_with_a_fitted_mean_centre_and_fit_its_axis() -> None:
    with pytest.raises(ValueError, match="end with a fitted mean_center"):
        small_model(preprocessing=Pipeline((Crop(150, 450),)))
    with pytest.raises(ValueError, match="3 coefficients, but the preprocessing gives 5"):
        small_model(preprocessing=Pipeline((MeanCenter((0.0,) * 5),)))
    glucose = small_model().targets[0]
    with pytest.raises(ValueError, match=r"rotations has shape \(3, 1\), expected \(3, 2\)"):
        replace(glucose, components=2, loadings=np.zeros((3, 2)), score_variance=np.ones(2))


def test_round_trip_keeps_predictions_and_hash(tmp_path: Path) -> None:
    model = small_model()
    path = tmp_path / "model.json"
    save_model(model, path)
    loaded = load_model(path)
    x = np.random.default_rng(3).normal(size=(4, 5))
    before, after = model.predict(x), loaded.predict(x)
    assert np.array_equal(before.values, after.values)
    assert np.array_equal(before.t2, after.t2) and np.array_equal(before.q, after.q)
    assert loaded.sha256 == model_to_dict(model)["sha256"] == content_hash(model_to_dict(loaded))
    assert model_to_dict(loaded) == model_to_dict(model)
    save_model(loaded, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    # No temporary file is left behind.
    assert {p.name for p in tmp_path.iterdir()} == {"model.json", "again.json"}
    assert path.read_text().startswith('{\n"format": "pat-gateway/pls-model",\n')


def test_floats_round_trip_bit_for_bit(tmp_path: Path) -> None:
    awkward = np.array([0.1, -1 / 3, 2.0**-1074])  # a repeating binary fraction, a subnormal
    glucose = replace(
        small_model().targets[0],
        coefficients=awkward,
        intercept=1 / 7,
        rotations=awkward[::-1, None],
        score_variance=np.array([np.pi]),
        q_limit=1e-12,
    )
    save_model(small_model(targets=(glucose,)), tmp_path / "m.json")
    target = load_model(tmp_path / "m.json").targets[0]
    assert target.coefficients.tobytes() == awkward.tobytes()
    assert target.rotations[:, 0].tobytes() == awkward[::-1].tobytes()
    assert target.intercept == 1 / 7 and target.score_variance[0] == np.pi
    assert target.q_limit == 1e-12


def test_hash_is_sha256_of_the_canonical_document() -> None:
    doc = model_to_dict(small_model())
    body = {k: v for k, v in doc.items() if k != "sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert doc["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_changing_one_number_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    save_model(small_model(), path)
    text = path.read_text()
    assert text.count('"intercept": 0.5') == 1
    path.write_text(text.replace('"intercept": 0.5', '"intercept": 0.6'))
    with pytest.raises(ModelFileError, match=r"model\.json: content hash mismatch: the file was"):
        load_model(path)


def rehashed(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with a hash that matches its (edited) content: the checks behind the hash."""
    return doc | {"sha256": content_hash(doc)}


def edited(**top: Any) -> dict[str, Any]:
    return rehashed(model_to_dict(small_model()) | top)


def test_format_and_version_are_checked_first() -> None:
    doc = model_to_dict(small_model())
    supported = r"m\.json: format_version: 2 is not supported \(this gateway reads version 1\)"
    with pytest.raises(ModelFileError, match=supported):
        model_from_dict(doc | {"format_version": 2, "new_field": 1}, "m.json")
    with pytest.raises(ModelFileError, match="format: 'other' is not a PAT Gateway PLS model"):
        model_from_dict(doc | {"format": "other"}, "m.json")
    with pytest.raises(ModelFileError, match="expected an object, found a list"):
        model_from_dict([doc], "m.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("confidence"), "m.json: confidence: missing"),
        (lambda d: d.update(extra=1), "m.json: extra: unknown field"),
        (lambda d: d.pop("sha256"), "m.json: sha256: missing"),
        (lambda d: d.update(id=""), "m.json: id: must not be empty"),
        (lambda d: d.update(created="yesterday"), "created: 'yesterday' is not an ISO 8601"),
        (lambda d: d.update(confidence=1.5), r"confidence: 1.5 is not in \[0.5, 1\)"),
        (lambda d: d.update(spectrum_unit="counts!"), "spectrum_unit: unknown UCUM unit"),
        (lambda d: d["axis"].update(values=[1.0]), "axis.values: an axis is a 1-D array of 2"),
        (
            lambda d: d["preprocessing"].insert(0, {"step": "msc"}),
            r"preprocessing\[0\]: unknown preprocessing step 'msc'",
        ),
        (
            lambda d: d["preprocessing"][1].update(mean=None),
            r"preprocessing\[1\].mean: missing: the model's mean is not fitted",
        ),
        (
            lambda d: d["preprocessing"][1]["mean"].append(1.0),
            "mean_center: the training mean has 4 points, the spectra 3",
        ),
        (
            lambda d: d["targets"][0]["rotations"].pop(),
            r"targets\[0\].rotations: expected 3 rows of 1 numbers, found 2 rows",
        ),
        (
            lambda d: d["targets"][1]["loadings"][2].append(0.0),
            r"targets\[1\].loadings\[2\]: expected 1 numbers, found 2",
        ),
        (
            lambda d: d["targets"][0]["coefficients"].__setitem__(1, "0.0"),
            r"targets\[0\].coefficients\[1\]: expected a number, found a string",
        ),
        (
            lambda d: d["targets"][0]["coefficients"].append(1.0),
            r"targets\[0\].rotations: expected 4 rows of 1 numbers, found 3 rows",
        ),
        (
            lambda d: d["targets"][0]["score_variance"].__setitem__(0, 0.0),
            r"targets\[0\].score_variance: every variance must be positive",
        ),
        (lambda d: d["targets"][0].pop("limits"), r"targets\[0\].limits: missing"),
        (
            lambda d: d["targets"][0]["limits"].update(q=-1.0),
            r"targets\[0\].limits.q: must be positive",
        ),
        (lambda d: d["targets"][0].update(components=True), r"components: expected an integer"),
        (lambda d: d["targets"][1].update(name="glucose"), "the name 'glucose' appears twice"),
        (
            lambda d: d["targets"][0].update(calibration_range=[8.0, 0.0]),
            "calibration_range: low is above high",
        ),
        (lambda d: d.update(targets=[]), "targets: expected a non-empty list of targets"),
        (lambda d: d["targets"][1].pop("center"), r"targets\[1\].center: missing"),
        (
            lambda d: d["targets"][0]["center"].append(0.0),
            r"targets\[0\].center: expected 3 numbers, found 4",
        ),
        (
            lambda d: d["targets"][0].update(intercept=10**400),
            r"targets\[0\].intercept: 1000+ is not finite",
        ),
        # Step parameters of the wrong type: each once loaded, then failed on every spectrum
        # (or crashed the reader) with a TypeError.
        (
            lambda d: d["preprocessing"][0].update(low="150"),
            r"preprocessing\[0\]: crop: low must be a number, not '150'",
        ),
        (
            lambda d: d["preprocessing"][0].update(high=True),
            r"preprocessing\[0\]: crop: high must be a number, not True",
        ),
        (
            lambda d: d["preprocessing"].insert(1, {"step": "baseline", "degree": 1.0}),
            r"preprocessing\[1\]: baseline: degree must be an integer, not 1.0",
        ),
        (
            lambda d: d["preprocessing"].insert(
                1, {"step": "savgol", "window": 3.0, "polyorder": 1, "deriv": 0}
            ),
            r"preprocessing\[1\]: savgol: window must be an integer, not 3.0",
        ),
        (
            lambda d: d["preprocessing"].insert(1, {"step": "normalize", "low": 1, "high": None}),
            r"preprocessing\[1\]: normalize: high must be a number, not None",
        ),
    ],
)
def test_malformed_documents_are_refused_naming_the_field(change: Any, message: str) -> None:
    doc = model_to_dict(small_model())
    change(doc)
    if "sha256" in doc:
        doc = rehashed(doc)
    with pytest.raises(ModelFileError, match=message):
        model_from_dict(doc, "m.json")


def test_a_type_error_while_building_the_model_is_a_model_file_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The steps check their parameters' types; should one still meet a value it cannot use,
    # the reader reports a bad file rather than crashing.
    doc = model_to_dict(small_model())

    def compile_badly(self: Crop, axis: Any) -> Any:
        raise TypeError("'float' object cannot be interpreted as an integer")

    monkeypatch.setattr(Crop, "compile", compile_badly)
    with pytest.raises(ModelFileError, match=r"m\.json: 'float' object cannot be interpreted"):
        model_from_dict(doc, "m.json")


def test_save_writes_nothing_a_reader_would_refuse(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    save_model(small_model(), path)
    before = path.read_bytes()
    for changes, field in (({"id": " "}, "id"), ({"version": ""}, "version")):
        refused = rf"model\.json \(not written\): {field}: must not be empty"
        with pytest.raises(ModelFileError, match=refused):
            save_model(small_model(**changes), path)
        with pytest.raises(ModelFileError, match="not written"):
            save_model(small_model(**changes), tmp_path / "new.json")
    assert path.read_bytes() == before  # the old model is still there, whole
    assert {p.name for p in tmp_path.iterdir()} == {"model.json"}  # no temporary file


def test_non_finite_numbers_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    save_model(small_model(), path)
    path.write_text(path.read_text().replace('"intercept": 0.5', '"intercept": NaN'))
    with pytest.raises(
        ModelFileError,
        match=r"model\.json: not a JSON model file \(NaN is not a number JSON allows",
    ):
        load_model(path)
    doc = edited()
    doc["targets"][0]["intercept"] = float("inf")
    with pytest.raises(ModelFileError, match=r"m\.json: a number is not finite"):
        model_from_dict(doc, "m.json")
    with pytest.raises(ModelFileError, match=r"missing\.json: cannot read the model file"):
        load_model(tmp_path / "missing.json")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"garbage\.json: not a JSON model file"):
        load_model(tmp_path / "garbage.json")


def test_axis_mismatch_names_both_axes() -> None:
    model = small_model()
    assert model.axis_mismatch(AXIS) is None
    # Within 1e-6 of the 400 cm-1 span (0.0004 cm-1): the same axis, recomputed.
    assert model.axis_mismatch(SpectralAxis(AXIS.values + 3e-4, "cm-1")) is None
    shifted = SpectralAxis(AXIS.values + 0.5, "cm-1")
    reason = model.axis_mismatch(shifted)
    assert reason is not None and "\n" not in reason
    assert f"spectrum axis (5 points, 100.5-500.5 cm-1, key {shifted.key[:12]})" in reason
    assert f"model axis (5 points, 100-500 cm-1, key {AXIS.key[:12]})" in reason
    assert "points differ by up to 0.5 cm-1 (tolerance 0.0004)" in reason
    longer = model.axis_mismatch(SpectralAxis(np.linspace(100, 500, 6), "cm-1"))
    assert longer is not None and "6 points, the model has 5" in longer
    nm = model.axis_mismatch(SpectralAxis(AXIS.values, "nm"))
    assert nm is not None and "unit nm is not the model's cm-1" in nm


def test_predict_is_fast_for_one_realistic_spectrum() -> None:
    # 2032 points, the default preprocessing, two targets of 15 components: well under 1 ms.
    axis = np.linspace(84.0, 2055.0, 2032)
    rng = np.random.default_rng(0)
    steps = (Crop(400, 1800), Baseline(2), SavitzkyGolay(15, 2, 0))
    pipeline = Pipeline((*steps, MeanCenter())).fit(rng.normal(size=(5, 2032)), axis)
    p = len(pipeline.apply(np.zeros((1, 2032)), axis)[1])

    def target(name: str) -> Target:
        return replace(
            small_model().targets[0],
            name=name,
            components=15,
            coefficients=rng.normal(size=p),
            center=rng.normal(size=p),
            rotations=rng.normal(size=(p, 15)),
            loadings=rng.normal(size=(p, 15)),
            score_variance=np.ones(15),
        )

    model = small_model(
        axis=SpectralAxis(axis, "cm-1"),
        preprocessing=pipeline,
        targets=(target("glucose"), target("lactate")),
    )
    spectrum = rng.normal(1000.0, 30.0, (1, 2032)).astype(np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(200):
            model.predict(spectrum)
        best = min(best, (time.perf_counter() - start) / 200)
    assert best < 1e-3, f"{best * 1e6:.0f} µs per prediction"


def test_every_field_and_step_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "model-file.md").read_text()
    doc = model_to_dict(small_model())
    fields = [*doc, *doc["targets"][0], *doc["targets"][0]["limits"]]
    steps = ["crop", "baseline", "snv", "savgol", "normalize", "mean_center"]
    missing = [name for name in fields + steps if f"`{name}`" not in docs]
    assert not missing, f"not in docs/model-file.md: {missing}"


def test_reference_is_the_mean_in_the_normalisation_window_before_normalising() -> None:
    """Crop to 200..400, normalise by the mean over 250..400 (points 300, 400): the reference is
    that mean of the cropped spectrum, and the prediction is on the normalised one."""
    pipeline = Pipeline((Crop(150, 450), Normalize(250, 400), MeanCenter((0.0, 0.0, 0.0))))
    model = small_model(preprocessing=pipeline)
    assert model.reference_window == (250.0, 400.0)
    spectra = np.array([[9.0, 3.0, 4.0, 2.0, 9.0], [0.0, 6.0, 8.0, 4.0, 0.0]])
    prediction = model.predict(spectra)
    assert prediction.reference is not None
    assert prediction.reference.tolist() == [3.0, 6.0]
    # Both normalise to (1, 4/3, 2/3): the same values.
    assert prediction.values[0].tolist() == pytest.approx(prediction.values[1].tolist())
    assert prediction.values[0].tolist() == pytest.approx([2 + 2 / 3 + 0.5, 4 / 3 - 1.0])


def test_a_model_without_normalisation_has_no_reference() -> None:
    model = small_model()
    assert model.reference_window is None
    assert model.predict(np.array([9.0, 3.0, 4.0, 2.0, 9.0])).reference is None
