"""The ``pls`` processor with the demo's shipped model, on spectra made the way the emulated
spectrometer and the real driver make them: what it publishes for good, uncertain, bad,
foreign and out-of-range spectra, and the configuration mistakes it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from conftest import write_config

from firmware_stubs.raman.spectrum import (
    Composition,
    SpectrumSynthesizer,
    raman_shift_cm1,
    wavelength_coefficients,
    wavelengths_nm,
)
from gateway import (
    ConfigError,
    PluginContext,
    Quality,
    Sample,
    Signal,
    SignalKind,
    SpectralAxis,
    Spectrum,
    build_registry,
    load_plan,
)
from plugins.ocean_obp.spectrum import build_axis, dark_corrected
from plugins.softsensor.processor import PlsOptions, PlsProcessor

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "configs" / "models" / "raman-glucose-lactate.json"
PIXELS, DARK = 2048, 16
COEFFICIENTS = wavelength_coefficients(PIXELS)
# The axis the live driver builds from the emulated device's calibration, and the physics.
AXIS = build_axis(COEFFICIENTS, PIXELS, dark_pixels=DARK, kind="raman_shift", laser_nm=785.0)
SYNTHESIZER = SpectrumSynthesizer(
    raman_shift_cm1(wavelengths_nm(COEFFICIENTS, PIXELS), 785.0), DARK
)
T0 = 1_790_000_000_000_000_000


class Published(NamedTuple):
    value: Any
    source_ts: int | None
    quality: Quality
    reason: str | None


class Recorder:
    def __init__(self) -> None:
        self.published: list[Published] = []

    def publish(
        self,
        value: Any,
        source_ts: int | None = None,
        quality: Quality = Quality.GOOD,
        reason: str | None = None,
    ) -> None:
        self.published.append(Published(value, source_ts, quality, reason))


class IO:
    processor_id = "softsensor"

    def __init__(self) -> None:
        self.outputs: dict[str, Recorder] = {}

    def output(self, channel: str) -> Recorder:
        return self.outputs.setdefault(channel, Recorder())

    def last(self, channel: str) -> Published:
        return self.outputs[channel].published[-1]


def processor(**options: Any) -> PlsProcessor:
    return PlsProcessor(
        PlsOptions(model=MODEL, spectrum="raman/spectrum", **options),
        PluginContext("softsensor", Path("data")),
    )


def spectrum(broth: Composition, seed: int = 0, extra: Any = 0.0) -> Spectrum:
    counts = SYNTHESIZER.counts(broth, 0.5, -10.0, np.random.default_rng(seed))
    return Spectrum(dark_corrected(counts, DARK) + extra, AXIS)


def sample(value: Any, quality: Quality = Quality.GOOD, reason: str | None = None) -> Sample:
    return Sample("reactor1/raman/spectrum", value, "{counts}", T0, T0 + 5, quality, 7, reason)


BROTH = Composition(glucose_g_L=4.0, lactate_g_L=1.5, glutamine_mM=3.0, vcd_e6_per_mL=8.0)


def test_a_good_spectrum_gives_good_predictions_at_its_source_time() -> None:
    p, io = processor(), IO()
    p.process(sample(spectrum(BROTH)), io)
    assert sorted(io.outputs) == sorted(
        [
            "glucose",
            "glucose_t2",
            "glucose_q",
            "lactate",
            "lactate_t2",
            "lactate_q",
            "reference_intensity",
        ]
    )
    assert [c.name for c in p.channels()] == list(io.outputs)
    glucose, lactate = io.last("glucose"), io.last("lactate")
    assert glucose.value == pytest.approx(4.0, abs=0.75)
    assert lactate.value == pytest.approx(1.5, abs=0.75)
    for channel, recorder in io.outputs.items():
        (published,) = recorder.published
        assert published.source_ts == T0, channel
        assert published.quality is Quality.GOOD and published.reason is None, channel
    model = json.loads(MODEL.read_text())
    t2_limit = model["targets"][0]["limits"]["t2"]
    assert 0 <= io.last("glucose_t2").value < t2_limit
    assert 0 <= io.last("glucose_q").value < model["targets"][0]["limits"]["q"]


def reference_and_glucose(band_scale: float, broth: Composition, seed: int) -> tuple[float, float]:
    counts = SYNTHESIZER.counts(broth, 0.5, -10.0, np.random.default_rng(seed), band_scale)
    p, io = processor(), IO()
    p.process(sample(Spectrum(dark_corrected(counts, DARK), AXIS)), io)
    return io.last("reference_intensity").value, io.last("glucose").value


def test_reference_intensity_falls_with_the_laser_where_predictions_do_not() -> None:
    """A laser at 80 % of its power: the normalised predictions stay, the reference band's
    intensity falls by the same 20 %; and it hardly moves as the broth changes (cells grow,
    their fluorescence triples the raw counts' background): it is a measure of the laser."""
    seeds = range(8)
    full = [reference_and_glucose(1.0, BROTH, seed) for seed in seeds]
    weak = [reference_and_glucose(0.8, BROTH, seed) for seed in seeds]
    grown = Composition(glucose_g_L=2.0, lactate_g_L=3.0, vcd_e6_per_mL=25.0, titer_g_L=3.0)
    late = [reference_and_glucose(1.0, grown, seed) for seed in seeds]
    reference = float(np.mean([r for r, _ in full]))
    assert reference > 0
    assert np.mean([r for r, _ in weak]) / reference == pytest.approx(0.8, abs=0.02)
    assert np.mean([r for r, _ in late]) / reference == pytest.approx(1.0, abs=0.04)
    glucose_shift = np.mean([g for _, g in weak]) - np.mean([g for _, g in full])
    assert abs(glucose_shift) < 0.3  # g/L: about the model's own error


def test_reference_intensity_shares_the_spectrum_s_quality_and_its_unit() -> None:
    p, io = processor(), IO()
    (channel,) = [c for c in p.channels() if c.name == "reference_intensity"]
    assert channel.unit == "{counts}" and "1580-1700 cm-1" in channel.description
    p.process(sample(spectrum(BROTH), Quality.UNCERTAIN, "detector warm"), io)
    assert io.last("reference_intensity").quality is Quality.UNCERTAIN
    assert io.last("reference_intensity").reason == "spectrum uncertain: detector warm"
    p.process(sample(None, Quality.BAD, "timeout"), io)
    assert io.last("reference_intensity") == Published(
        None, T0, Quality.BAD, "spectrum bad: timeout"
    )


def test_predictions_follow_glucose_across_the_calibrated_range() -> None:
    p = processor()
    truth = np.linspace(0.5, 7.5, 15)
    predicted = []
    for seed, glucose in enumerate(truth):
        io = IO()
        broth = Composition(glucose_g_L=float(glucose), lactate_g_L=1.0, vcd_e6_per_mL=10.0)
        p.process(sample(spectrum(broth, seed)), io)
        predicted.append(io.last("glucose").value)
    errors = np.asarray(predicted) - truth
    # The model's RMSEP on independent runs is 0.23 g/L; 15 spectra stay well inside 0.5.
    assert float(np.sqrt(np.mean(errors**2))) < 0.5
    assert float(np.corrcoef(predicted, truth)[0, 1]) > 0.98


def test_a_bad_spectrum_makes_every_output_bad_saying_why() -> None:
    p, io = processor(), IO()
    p.process(sample(None, Quality.BAD, "unreachable: timeout"), io)
    for channel, recorder in io.outputs.items():
        assert recorder.published == [
            Published(None, T0, Quality.BAD, "spectrum bad: unreachable: timeout")
        ], channel
    assert len(io.outputs) == 7  # with reference_intensity


def test_an_uncertain_spectrum_gives_uncertain_outputs_with_its_reason() -> None:
    p, io = processor(), IO()
    p.process(sample(spectrum(BROTH), Quality.UNCERTAIN, "saturated: 3 pixels"), io)
    for channel, recorder in io.outputs.items():
        (published,) = recorder.published
        assert published.quality is Quality.UNCERTAIN, channel
        assert published.reason is not None
        assert published.reason.startswith("spectrum uncertain: saturated: 3 pixels"), channel
        assert published.value is not None


def test_a_spectrum_on_another_axis_is_refused_not_predicted() -> None:
    p, io = processor(), IO()
    # The same detector with a 780 nm laser: every point's Raman shift differs.
    other = build_axis(COEFFICIENTS, PIXELS, dark_pixels=DARK, kind="raman_shift", laser_nm=780.0)
    foreign = Spectrum(spectrum(BROTH).values, other)
    p.process(sample(foreign), io)
    p.process(sample(foreign), io)  # judged once per axis, refused every time
    for recorder in io.outputs.values():
        assert [x.quality for x in recorder.published] == [Quality.BAD, Quality.BAD]
        reason = recorder.published[0].reason
        assert reason is not None
        assert reason.startswith("model raman-glucose-lactate refuses this spectrum: ")
    # Fewer points (a cropped export) are refused too.
    short = SpectralAxis(AXIS.values[:-1], "cm-1")
    p.process(sample(Spectrum(spectrum(BROTH).values[:-1], short)), io)
    assert io.last("glucose").quality is Quality.BAD


def test_a_foreign_band_is_flagged_by_q_and_the_prediction_is_uncertain() -> None:
    p, io = processor(), IO()
    # A strong band the calibration never saw (a contaminant at 1300 cm-1).
    band = 3000.0 * np.exp(-(((AXIS.values - 1300.0) / 15.0) ** 2))
    p.process(sample(spectrum(BROTH, extra=band.astype(np.float32))), io)
    glucose = io.last("glucose")
    assert glucose.quality is Quality.UNCERTAIN
    assert (
        glucose.reason is not None
        and "Q " in glucose.reason
        and "above its 99 % limit" in (glucose.reason)
    )
    q = io.last("glucose_q")
    assert q.quality is Quality.GOOD  # the statistic itself is a valid measurement
    limit = json.loads(MODEL.read_text())["targets"][0]["limits"]["q"]
    assert q.value > 2 * limit


def test_an_extrapolated_prediction_is_uncertain_unless_the_range_check_is_off() -> None:
    broth = Composition(glucose_g_L=14.0, lactate_g_L=1.0, vcd_e6_per_mL=10.0)
    io = IO()
    processor().process(sample(spectrum(broth)), io)
    glucose = io.last("glucose")
    assert glucose.value > 10
    assert glucose.quality is Quality.UNCERTAIN
    assert (
        glucose.reason is not None
        and "g/L outside the calibrated range 0.000..7." in glucose.reason
    )
    io = IO()
    processor(range_margin=None).process(sample(spectrum(broth)), io)
    reason = io.last("glucose").reason or ""
    assert "calibrated range" not in reason


def test_bind_refuses_a_scalar_or_a_spectrum_in_another_unit() -> None:
    p = processor()
    scalar = Signal("reactor1/raman/spectrum", "{counts}", SignalKind.SCALAR, "", "raman")
    with pytest.raises(ValueError, match="is a scalar signal; a PLS model reads spectra"):
        p.bind({"raman/spectrum": scalar})
    per_second = Signal("reactor1/raman/spectrum", "{counts}/s", SignalKind.SPECTRUM, "", "raman")
    with pytest.raises(ValueError, match=r"was fitted on spectra in '\{counts\}'"):
        p.bind({"raman/spectrum": per_second})


def config(tmp_path: Path, model: Path, signals: list[dict[str, Any]] | None = None) -> Path:
    return write_config(
        tmp_path / "g.yaml",
        {
            "area": "reactor1",
            "store": {"path": str(tmp_path / "s.sqlite")},
            "instruments": [
                {
                    "id": "raman",
                    "driver": "ocean_obp",
                    "options": {"port": "/dev/null", "laser_wavelength_nm": 785},
                }
            ],
            "processors": [
                {
                    "id": "softsensor",
                    "type": "pls",
                    "options": {"model": str(model), "spectrum": "raman/spectrum"},
                    "signals": signals,
                }
            ],
        },
    )


def test_a_missing_or_changed_model_file_is_a_configuration_error(tmp_path: Path) -> None:
    registry = build_registry()
    plan = load_plan(config(tmp_path, MODEL), registry)
    assert [sp.signal.id for sp in plan.processors[0].signals][:2] == [
        "reactor1/softsensor/glucose",
        "reactor1/softsensor/glucose_t2",
    ]
    with pytest.raises(ConfigError) as missing:
        load_plan(config(tmp_path, tmp_path / "nope.json"), registry)
    [line] = missing.value.problems
    assert line.startswith("processors[0].options: ") and "nope.json" in line
    doc = json.loads(MODEL.read_text())
    doc["targets"][0]["intercept"] += 0.5  # someone "adjusts" the model by hand
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as tampered:
        load_plan(config(tmp_path, changed), registry)
    [line] = tampered.value.problems
    assert line.startswith("processors[0].options: ") and "content hash mismatch" in line


def test_a_configured_description_keeps_the_model_s_identity(tmp_path: Path) -> None:
    signals = [{"id": "glucose", "description": "Glucose (soft sensor)"}, {"id": "glucose_q"}]
    plan = load_plan(config(tmp_path, MODEL, signals), build_registry())
    glucose, q = (sp.signal for sp in plan.processors[0].signals)
    sha = json.loads(MODEL.read_text())["sha256"]
    assert glucose.description.startswith("Glucose (soft sensor) (glucose by PLS model ")
    assert f"(sha256 {sha[:12]})" in glucose.description
    assert q.description.startswith("Q residual of the spectrum in PLS model raman-glucose-")
