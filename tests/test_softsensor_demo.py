"""Issue 6's done-when: ``patgw run configs/demo.yaml --for 30`` exports glucose and lactate
predictions in g/L whose source timestamps are those of the spectra they came from — and they
track the emulated process's true values, which the demo reads from the controller beside them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from conftest import demo_copy, patgw

from gateway import parse_iso_ns
from gateway.store import SampleStore

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "configs" / "models" / "raman-glucose-lactate.json"


def exported(config: Path, pattern: str) -> dict[str, list[dict[str, Any]]]:
    result = patgw("export", str(config), "--signal", pattern)
    assert result.returncode == 0, result.stderr
    out: dict[str, list[dict[str, Any]]] = {}
    for line in result.stdout.splitlines():
        sample = json.loads(line)
        out.setdefault(sample["signal"].rsplit("/", 1)[1], []).append(sample)
    return out


def test_demo_exports_predictions_at_the_spectra_times_tracking_the_truth(
    tmp_path: Path,
) -> None:
    config, _ = demo_copy(tmp_path)
    # Another working directory than the config's: its paths resolve against its own folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = patgw("run", str(config), "--for", "30", "--no-view", cwd=elsewhere, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(elsewhere.iterdir()) == []  # nothing written where it was started

    spectra = exported(config, "reactor1/raman/spectrum")["spectrum"]
    predicted = exported(config, "reactor1/softsensor/*")
    truth = exported(config, "reactor1/controller/*_true")
    assert len(spectra) >= 10  # one every 2 s, each a 500 ms exposure
    spectrum_times = [s["source_ts"] for s in spectra if s["quality"] == "good"]
    assert len(spectrum_times) == len(spectra)
    for name in ("glucose", "lactate"):
        values = predicted[name]
        assert {v["unit"] for v in values} == {"g/L"}
        # One prediction per spectrum, carrying that spectrum's source time.
        assert [v["source_ts"] for v in values] == spectrum_times, name
        for statistic in (f"{name}_t2", f"{name}_q"):
            assert [v["source_ts"] for v in predicted[statistic]] == spectrum_times
            assert all(v["quality"] == "good" and v["value"] >= 0 for v in predicted[statistic])
        # Inside the model's limits nearly always (99 % limits): a few may be uncertain.
        good = [v for v in values if v["quality"] == "good"]
        assert len(good) >= 0.8 * len(values), [v.get("reason") for v in values]
        # The soft sensor tracks the process: each prediction against the true value nearest in
        # time (the model's RMSEP on independent runs is ~0.23 g/L glucose, ~0.26 g/L lactate).
        true_values = truth[f"{name}_true"]
        true_times = [parse_iso_ns(t["source_ts"]) for t in true_values]
        errors = []
        for v in values:
            at = parse_iso_ns(v["source_ts"])
            nearest = min(range(len(true_times)), key=lambda i: abs(true_times[i] - at))
            assert abs(true_times[nearest] - at) < 2e9  # the controller updates every 0.5 s
            errors.append(v["value"] - true_values[nearest]["value"])
        rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
        assert max(map(abs, errors)) < 1.0 and rmse < 0.5, (name, errors)

    # Which model made them is on record in the store: one definition per model.
    store = SampleStore(tmp_path / "data" / "demo.sqlite", read_only=True)
    try:
        described = {s.id: s.description for s in store.signals()}
    finally:
        store.close()
    model = json.loads(MODEL.read_text())
    for name in ("glucose", "lactate"):
        description = described[f"reactor1/softsensor/{name}"]
        assert f"PLS model {model['id']} v{model['version']}" in description
        assert f"sha256 {model['sha256'][:12]}" in description
