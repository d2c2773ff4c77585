"""``patgw model fit / show / check`` end to end, on files as ``patgw export`` and a laboratory
would write them."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from firmware_stubs.raman.spectrum import (
    Composition,
    SpectrumSynthesizer,
    raman_shift_cm1,
    wavelength_coefficients,
    wavelengths_nm,
)
from gateway import (
    Quality,
    Sample,
    SpectralAxis,
    Spectrum,
    build_registry,
    format_ns,
    parse_iso_ns,
    sample_to_json,
)
from gateway.modelcli import run_model
from plugins.softsensor import plugin as softsensor_plugin
from plugins.softsensor.model import content_hash

SHIFT = raman_shift_cm1(wavelengths_nm(wavelength_coefficients(2048), 2048), 785.0)
AXIS = SpectralAxis(SHIFT[16:], "cm-1")
SYNTHESIZER = SpectrumSynthesizer(SHIFT, dark_pixels=16)
RAMAN = "reactor1/raman/spectrum"
T0 = parse_iso_ns("2026-11-26T16:00:00Z")
MINUTE = 60_000_000_000


def patgw_model(argv: list[str]) -> int:
    """Run ``patgw model ARGV`` as the real ``patgw`` does (the soft sensor's ``pls`` kind)."""
    return run_model(argv, build_registry([softsensor_plugin], entry_points=False))


def write_run(
    folder: Path, name: str, count: int, start: int, seed: int, axis: SpectralAxis = AXIS
) -> tuple[Path, Path]:
    """An export of ``count`` spectra a minute apart (with pH samples between them and one bad
    spectrum), and the laboratory's CSV: a sample drawn 10 s after each spectrum, in batches of
    25, plus two samples taken when no spectrum was."""
    rng = np.random.default_rng(seed)
    lines, rows = [], ["time,batch,glucose [g/L],lactate [g/L]"]
    for i in range(count):
        broth = Composition(
            glucose_g_L=rng.uniform(0, 8),
            lactate_g_L=rng.uniform(0, 4),
            glutamine_mM=rng.uniform(0, 6),
            vcd_e6_per_mL=rng.uniform(0.3, 20),
            titer_g_L=rng.uniform(0, 3),
        )
        counts = SYNTHESIZER.counts(broth, 0.5, -10.0, rng).astype(np.float64)
        ts = start + i * MINUTE
        spectrum = Spectrum(counts[16:] - counts[:16].mean(), axis)
        lines.append(sample_to_json(Sample(RAMAN, spectrum, "{counts}", ts, ts, Quality.GOOD, i)))
        lines.append(
            sample_to_json(Sample("reactor1/dcu/ph", 7.0, "[pH]", ts, ts, Quality.GOOD, i))
        )
        lab = format_ns(ts + 10_000_000_000)
        rows.append(f"{lab},B{i // 25},{broth.glucose_g_L!r},{broth.lactate_g_L!r}")
    bad = Sample(RAMAN, None, "{counts}", start - MINUTE, start, Quality.BAD, 0, "no signal")
    lines.append(sample_to_json(bad))
    for hours in (100, 200):
        rows.append(f"{format_ns(start + hours * 60 * MINUTE)},B9,4.0,")
    export = folder / f"{name}.jsonl"
    export.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    lab_csv = folder / f"{name}.csv"
    lab_csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return export, lab_csv


@dataclass(frozen=True)
class Files:
    folder: Path
    spectra: Path
    reference: Path
    model: Path
    new_spectra: Path
    new_reference: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """Calibration data, a model fitted from it, and a later run to check the model on."""
    folder = tmp_path_factory.mktemp("softsensor")
    spectra, reference = write_run(folder, "calibration", 100, T0, seed=1)
    new_spectra, new_reference = write_run(folder, "later", 40, T0 + 1000 * MINUTE, seed=2)
    model = folder / "model.json"
    argv = ["fit", "--spectra", str(spectra), "--reference", str(reference)]
    argv += ["--output", str(model), "--id", "r1-glc-lac", "--model-version", "1"]
    assert patgw_model([*argv, "--description", "reactor 1, Raman"]) == 0
    return Files(folder, spectra, reference, model, new_spectra, new_reference)


def test_fit_reports_and_writes_the_model(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "again.json"
    argv = ["fit", "--spectra", str(files.spectra), "--reference", str(files.reference)]
    argv += ["--output", str(output), "--id", "r1", "--model-version", "2", "--max-components", "6"]
    assert patgw_model(argv) == 0
    out = capsys.readouterr().out
    assert f"spectra: 100 of {RAMAN}; skipped 100 not a spectrum, 1 not good quality" in out
    assert "references: 102 rows, 100 matched within 60 s, 2 unmatched" in out
    assert "cross-validation: leave one batch out (4 batches)" in out
    assert "glucose [g/L], n=100:" in out and "lactate [g/L], n=100:" in out
    assert out.count("  * ") == 2  # the chosen number of components, once per target
    assert f"model r1 v2 written to {output}" in out
    assert output.exists()


def test_fit_json_report(files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "m.json"
    argv = ["fit", "--spectra", str(files.spectra), "--reference", str(files.reference), "--json"]
    argv += ["--output", str(output), "--id", "r1", "--model-version", "2", "--components", "3"]
    argv += ["--preprocess", '[{"step": "crop", "low": 400, "high": 1800}]', "--folds", "4"]
    assert patgw_model(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["references"] == {"rows": 102, "matched": 100, "unmatched": 2, "max_gap_s": 60}
    assert report["spectra"]["axis"]["key"] == AXIS.key
    assert [t["components"] for t in report["targets"]] == [3, 3]
    assert [len(t["rmsecv"]) for t in report["targets"]] == [3, 3]
    model = json.loads(output.read_text())
    assert report["model"]["sha256"] == model["sha256"]
    assert [s["step"] for s in model["preprocessing"]] == ["crop", "mean_center"]


def test_show(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    assert patgw_model(["show", str(files.model)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model r1-glc-lac v1, created 20")
    assert "reactor 1, Raman" in out
    assert f"axis: 2032 points, 83.6953-2055.09 cm-1 (key {AXIS.key[:12]})" in out
    assert "preprocessing: crop (low 400.0, high 1800.0); baseline (degree 2)" in out
    assert "glucose [g/L]: " in out and "T² limit" in out
    assert patgw_model(["show", str(files.model), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sha256"] == json.loads(files.model.read_text())["sha256"]
    assert shown["preprocessing"][-1]["mean"].endswith(" points")
    assert [t["name"] for t in shown["targets"]] == ["glucose", "lactate"]
    sources = shown["training"]
    assert sources["spectra"]["sha256"] == hashlib.sha256(files.spectra.read_bytes()).hexdigest()
    assert sources["reference"]["unmatched"] == 2
    assert sources["batches"] == ["B0", "B1", "B2", "B3"]


def test_check_on_later_data(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", str(files.model), "--data", str(files.new_spectra)]
    assert patgw_model([*argv, "--reference", str(files.new_reference), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = json.loads(files.model.read_text())
    assert result["model"] == {"id": "r1-glc-lac", "version": "1", "sha256": model["sha256"]}
    glucose = result["targets"]["glucose"]
    assert set(glucose) == {"n", "rmsep", "bias", "sep", "r2", "t2_over_limit", "q_over_limit"}
    assert glucose["n"] == 40 and glucose["rmsep"] < 0.3 and glucose["r2"] > 0.98
    assert glucose["rmsep"] ** 2 == pytest.approx(
        glucose["bias"] ** 2 + glucose["sep"] ** 2 * 39 / 40, rel=1e-9
    )
    assert result["targets"]["lactate"]["n"] == 40
    assert glucose["q_over_limit"] <= 3 and glucose["t2_over_limit"] <= 3
    assert patgw_model([*argv, "--reference", str(files.new_reference)]) == 0
    out = capsys.readouterr().out
    assert "40 references matched, 2 unmatched" in out
    assert out.splitlines()[1].split() == [
        "target", "unit", "n", "RMSEP", "bias", "SEP", "R²", "T²>limit", "Q>limit",
    ]  # fmt: skip


def test_check_refuses_spectra_on_another_axis(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moved = SpectralAxis(AXIS.values + 1.5, "cm-1")  # a recalibrated instrument
    spectra, reference = write_run(tmp_path, "moved", 5, T0, seed=3, axis=moved)
    argv = ["check", str(files.model), "--data", str(spectra), "--reference", str(reference)]
    assert patgw_model(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"patgw model check: model r1-glc-lac cannot read {spectra}:")
    assert f"key {moved.key[:12]}" in err and f"key {AXIS.key[:12]}" in err


def test_bad_input_exits_2_with_one_line(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("time,glucose [g/L]\n2026-11-26T16:00:10Z,four\n", encoding="utf-8")
    tampered = tmp_path / "tampered.json"
    tampered.write_text(files.model.read_text().replace('"version": "1"', '"version": "2"'))
    fit = ["fit", "--spectra", str(files.spectra), "--reference", str(files.reference)]
    fit += ["--id", "x", "--model-version", "1"]
    out = ["--output", str(tmp_path / "m.json")]
    cases = {
        "missing.jsonl: cannot read": [*fit[:2], str(tmp_path / "missing.jsonl"), *fit[3:], *out],
        "bad.csv:2: column 'glucose [g/L]': 'four' is not a number": [
            *fit[:4], str(bad_csv), *fit[5:], *out,
        ],
        "no good-quality spectra matching 'r9/*'": [*fit, *out, "--signal", "r9/*"],
        "--preprocess: not JSON": [*fit, *out, "--preprocess", "[{"],
        "unknown preprocessing step 'msc'": [*fit, *out, "--preprocess", '[{"step": "msc"}]'],
        "--preprocess: baseline: degree must be an integer, not 2.5": [
            *fit, *out, "--preprocess", '[{"step": "baseline", "degree": 2.5}]',
        ],
        "--preprocess: crop: low must be a number, not '400'": [
            *fit, *out, "--preprocess", '[{"step": "crop", "low": "400", "high": 1800}]',
        ],
        # Blank names: once fitted and written, then refused by the reader (show, the gateway).
        "--id: must not be empty": [*fit[:-3], " ", *fit[-2:], *out],
        "--model-version: must not be empty": [*fit[:-1], " ", *out],
        "--preprocess: cannot read": [*fit, *out, "--preprocess", "@/nonexistent/steps.json"],
        "--output: the folder": [*fit, "--output", str(tmp_path / "no" / "m.json")],
        "content hash mismatch": ["show", str(tampered)],
        "no reference lies within 0.001 s of a spectrum": [*fit, *out, "--max-gap-s", "0.001"],
    }  # fmt: skip
    for message, argv in cases.items():
        assert patgw_model(argv) == 2, message
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (message, err)
        assert err.startswith("patgw model ")
    assert not (tmp_path / "m.json").exists()
    assert not list(tmp_path.glob(".m.json.*"))  # nor a temporary file
    with pytest.raises(SystemExit) as usage:
        patgw_model(["fit", "--spectra", str(files.spectra)])
    assert usage.value.code == 2


@pytest.mark.parametrize(("index", "field", "value"), [(2, "window", 15.0), (1, "degree", 2.0)])
def test_a_hash_valid_model_with_a_float_step_parameter_is_refused(
    files: Files,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    index: int,
    field: str,
    value: float,
) -> None:
    # Made by hand, hash and all: it used to load and then raise TypeError on every spectrum
    # (or crash show with an internal error).
    doc = json.loads(files.model.read_text())
    assert field in doc["preprocessing"][index]
    doc["preprocessing"][index][field] = value
    model = tmp_path / "edited.json"
    model.write_text(json.dumps(doc | {"sha256": content_hash(doc)}))
    assert patgw_model(["show", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"preprocessing[{index}]: " in err and f"{field} must be an integer, not {value}" in err


def test_the_fit_does_not_depend_on_the_order_of_the_csv_rows(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without batches cross-validation takes contiguous blocks of time: the same references,
    # shuffled, give the same folds and the same RMSECV.
    header, *rows = files.reference.read_text().splitlines()
    columns = header.split(",")
    batch = columns.index("batch")
    rows = [",".join(c for i, c in enumerate(row.split(",")) if i != batch) for row in rows]
    header = ",".join(c for i, c in enumerate(columns) if i != batch)
    shuffled = [rows[i] for i in np.random.default_rng(7).permutation(len(rows))]
    reports = []
    for name, lines in (("ordered", rows), ("shuffled", shuffled)):
        csv = tmp_path / f"{name}.csv"
        csv.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
        argv = ["fit", "--spectra", str(files.spectra), "--reference", str(csv), "--json"]
        argv += ["--output", str(tmp_path / f"{name}.json"), "--id", "r1", "--model-version", "1"]
        assert patgw_model([*argv, "--max-components", "4"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    ordered, again = reports
    assert ordered["cv"] == "5-fold, contiguous blocks"
    assert [t["rmsecv"] for t in again["targets"]] == [t["rmsecv"] for t in ordered["targets"]]
    assert [t["components"] for t in again["targets"]] == [
        t["components"] for t in ordered["targets"]
    ]


def test_fitting_for_a_configuration_needs_an_engineer_and_is_audited(
    files: Files,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.audit import read_records
    from tests.test_model_kinds import engineer_config

    config = engineer_config(tmp_path)
    output = tmp_path / "m.json"
    argv = ["fit", "--spectra", str(files.spectra), "--reference", str(files.reference)]
    argv += ["--output", str(output), "--id", "r1", "--model-version", "3", "--components", "2"]
    argv += ["--config", str(config), "--reason", "recalibrated after the probe change"]

    def run(user: str, password: str) -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(f"{password}\n"))
        return patgw_model([*argv, "--user", user])

    assert run("operator", "operator-pw") == 2
    assert "needs the 'configure' permission" in capsys.readouterr().err
    assert run("engineer", "wrong") == 2
    assert "unknown user or wrong password" in capsys.readouterr().err
    assert not output.exists()
    assert run("engineer", "engineer-pw") == 0
    trail = tmp_path / "store.audit.sqlite"
    records = [(r.event.action, r.event.user, r.event.outcome) for r in read_records(trail)]
    assert records[1:] == [
        ("login", "operator", "ok"),
        ("model.fit.refused", "operator", "refused"),
        ("login.failed", "engineer", "refused"),
        ("login", "engineer", "ok"),
        ("model.fitted", "engineer", "ok"),
    ]
    fitted = list(read_records(trail))[-1].event
    assert fitted.target == str(output.resolve()) and fitted.reason.startswith("recalibrated")
    assert fitted.new == hashlib.sha256(output.read_bytes()).hexdigest()
