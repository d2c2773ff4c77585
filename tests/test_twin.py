"""The digital twin: its estimator on a fixed-seed emulated run (within stated bounds), its model
files (refused when damaged, non-finite or for another signal set, at ``patgw check``), its
binding, and the processor in the real runtime publishing its channels."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import demo_copy, patgw

from firmware_stubs.bioreactor.model import FedBatchModel
from gateway import PluginContext, Quality, Sample, Signal, SignalKind
from plugins.softsensor.model import content_hash
from plugins.twin.estimator import ETA, G, L, P, TwinEstimator, X
from plugins.twin.model import load_twin_model
from plugins.twin.processor import TwinOptions, TwinProcessor

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "configs" / "models" / "cho-twin.json"
HOUR_NS = 3_600_000_000_000


def emulated_run(
    seed: int, rate_mL_h: float, start_h: float, efficiency: float = 1.0, worn_from_h: float = 1e9
) -> dict[str, Any]:
    """The shipped twin beside an emulated run of ``seed``: soft-sensor-like glucose and lactate
    (true values + N(0, 0.22 g/L)) every 0.5 h; the pump reports ``rate_mL_h`` but delivers
    ``efficiency`` of it after ``worn_from_h``. Errors after the first 24 h."""
    model = load_twin_model(MODEL)
    process = FedBatchModel(seed=seed)
    twin = TwinEstimator(model.parameters, model.noise)
    rng = np.random.default_rng(seed)
    dt = 0.05
    vcd_err, vcd, titer_err, titer, forecast_err = [], [], [], [], []
    pending: list[tuple[float, float]] = []
    for k in range(1, round(240 / dt) + 1):
        t = k * dt
        reported = rate_mL_h if t > start_h else 0.0
        delivered = reported * (efficiency if t > worn_from_h else 1.0)
        process.add_feed(delivered * dt / 1000)
        process.advance(dt)
        truth = process.state
        twin.u.feed_mL_per_h = reported
        twin.u.volume_L += reported * dt * 1e-3 * twin.x[ETA]
        twin.advance_to(t)
        if k % 10 == 0:
            twin.update(G, truth.glucose_g_L + rng.normal(0, 0.22), model.noise["glucose"])
            twin.update(L, truth.lactate_g_L + rng.normal(0, 0.22), model.noise["lactate"])
        if k % 20 == 0:
            pending.append((t + 6.0, twin.forecast(6.0, 0.5, 72.0).glucose))
            while pending and pending[0][0] <= t + 1e-9:
                forecast_err.append(pending.pop(0)[1] - truth.glucose_g_L)
            if t >= 24:
                vcd_err.append(twin.x[X] - truth.vcd_e6_per_mL)
                vcd.append(truth.vcd_e6_per_mL)
                titer_err.append(twin.x[P] - truth.titer_g_L)
                titer.append(truth.titer_g_L)

    def rmse(errors: list[float]) -> float:
        return math.sqrt(float(np.mean(np.square(errors))))

    return {
        "vcd_pct": 100 * rmse(vcd_err) / (max(vcd) - min(vcd)),
        "titer_pct": 100 * rmse(titer_err) / (max(titer) - min(titer)),
        "forecast_rmse": rmse(forecast_err),
        "efficiency": twin.x[ETA],
        "rejected": twin.rejected,
    }


def test_the_estimator_tracks_a_fixed_seed_run_within_stated_bounds() -> None:
    # A seed and feed the model was not fitted on. Bounds: VCD ≤ 15 % of its range (the
    # issue's target; measured 11.7 %), titer ≤ 10 % (measured 3.1 %), the +6 h glucose forecast
    # within 0.35 g/L RMSE (measured 0.19; the soft sensor's own error is 0.22).
    clean = emulated_run(21, 0.7, 48.0)
    assert clean["vcd_pct"] <= 15.0, clean
    assert clean["titer_pct"] <= 10.0, clean
    assert clean["forecast_rmse"] <= 0.35, clean
    assert clean["rejected"] == 0
    # A worn tubing (80 % delivered from 100 h on, the pump's own reading unchanged) pulls the
    # feed efficiency down: well below that of the clean run.
    worn = emulated_run(21, 0.7, 48.0, efficiency=0.8, worn_from_h=100.0)
    assert worn["efficiency"] < clean["efficiency"] - 0.1, (worn, clean)


def edited(tmp_path: Path, change: Any, rehash: bool = True) -> Path:
    doc = json.loads(MODEL.read_text())
    change(doc)
    if rehash:
        doc["sha256"] = content_hash(doc)
    path = tmp_path / "twin.json"
    path.write_text(json.dumps(doc))
    return path


def twin_config(tmp_path: Path, **options: Any) -> Path:
    """The demo, plus a twin processor with ``options`` over the demo's wiring."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config, _ = demo_copy(tmp_path)
    doc = yaml.safe_load(config.read_text())
    doc["processors"].append(
        {
            "id": "twin",
            "type": "twin",
            "time_base": {"time_scale": 60},
            "options": {
                "model": "models/cho-twin.json",
                "feed_total": "feed_pump/total_volume",
                "glucose": "softsensor/glucose",
                "lactate": "softsensor/lactate",
                "base_total": "controller/base_total",
            }
            | options,
        }
    )
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


def test_bad_model_files_are_refused_at_check_with_the_member(tmp_path: Path) -> None:
    assert patgw("check", str(twin_config(tmp_path))).returncode == 0
    cases = {
        "parameters.q_g: missing": lambda d: d["parameters"].pop("q_g"),
        "noise.glucose: -1 outside": lambda d: d["noise"].update(glucose=-1),
        "inputs.raman: unknown input": lambda d: d["inputs"].update(raman="1"),
        "inputs: lactate is required": lambda d: d["inputs"].pop("lactate"),
        "inputs.glucose: unit 'mg/dL', expected 'g/L'": (
            lambda d: d["inputs"].update(glucose="mg/dL")
        ),
    }
    for number, (message, change) in enumerate(cases.items()):
        path = edited(tmp_path, change)
        config = twin_config(tmp_path / str(number), model=str(path))
        result = patgw("check", str(config))
        assert result.returncode == 2, (message, result.stderr)
        assert message in result.stderr and "processors[1]" in result.stderr, result.stderr
    # Edited by hand without a new hash: a damaged or tampered file.
    tampered = edited(tmp_path, lambda d: d["parameters"].update(mu_max=0.05), rehash=False)
    result = patgw("check", str(twin_config(tmp_path / "tampered", model=str(tampered))))
    assert result.returncode == 2 and "content hash mismatch" in result.stderr
    # Non-finite numbers in the JSON text itself: NaN, or a number too large for a float.
    text = MODEL.read_text()
    for name, bad, message in (
        ("nan", '"kd": NaN', "NaN is not a finite number"),
        ("huge", '"kd": 1e999', "parameters.kd: inf is not a finite number"),
    ):
        (tmp_path / f"{name}.json").write_text(re.sub(r'"kd": [^,]+', bad, text, count=1))
        config = twin_config(tmp_path / name, model=str(tmp_path / f"{name}.json"))
        result = patgw("check", str(config))
        assert result.returncode == 2 and message in result.stderr, result.stderr
    # A model fitted without base_total, configured with one: another signal set.
    without = edited(tmp_path, lambda d: d["inputs"].pop("base_total"))
    result = patgw("check", str(twin_config(tmp_path / "set", model=str(without))))
    assert result.returncode == 2 and "was fitted without base_total" in result.stderr


def test_bind_refuses_a_spectrum_or_a_signal_in_an_unconvertible_unit(tmp_path: Path) -> None:
    options = TwinOptions(
        model=MODEL, feed_total="pump/total", glucose="ss/glucose", lactate="ss/lactate"
    )
    without_base = edited(tmp_path, lambda d: d["inputs"].pop("base_total"))
    twin = TwinProcessor(options.model_copy(update={"model": without_base}), context(tmp_path))
    good = {
        "pump/total": Signal("r/pump/total", "L"),  # converted to mL
        "ss/glucose": Signal("r/ss/glucose", "g/L"),
        "ss/lactate": Signal("r/ss/lactate", "mg/dL"),
    }
    twin.bind(good)
    with pytest.raises(ValueError, match="glucose: r/raman/s is a spectrum signal"):
        twin.bind(good | {"ss/glucose": Signal("r/raman/s", "1", SignalKind.SPECTRUM)})
    with pytest.raises(ValueError, match=r"feed_total: r/ph is in '\[pH\]', the twin needs 'mL'"):
        twin.bind(good | {"pump/total": Signal("r/ph", "[pH]")})
    with pytest.raises(ValueError, match="base_total: model cho-twin v1 was fitted with"):
        TwinProcessor(options, context(tmp_path))


def context(tmp_path: Path) -> PluginContext:
    return PluginContext(id="twin", data_dir=tmp_path)


class _Out:
    def __init__(self, sink: list[tuple[str, Any, Quality, str | None]], name: str) -> None:
        self.sink, self.name = sink, name

    def publish(
        self, value: Any, source_ts: int | None = None, quality: Quality = Quality.GOOD,
        reason: str | None = None,
    ) -> None:  # fmt: skip
        self.sink.append((self.name, value, quality, reason))


class _IO:
    processor_id = "twin"

    def __init__(self) -> None:
        self.published: list[tuple[str, Any, Quality, str | None]] = []

    def output(self, channel: str) -> _Out:
        return _Out(self.published, channel)

    def process_time_h(self, ts_ns: int) -> float:
        return ts_ns / HOUR_NS


def bound_twin(tmp_path: Path) -> TwinProcessor:
    """A twin on the shipped model, bound to a pump total, glucose, lactate and base total."""
    options = TwinOptions(
        model=MODEL,
        feed_total="pump/total",
        glucose="ss/glucose",
        lactate="ss/lactate",
        base_total="c/base",
    )
    twin = TwinProcessor(options, context(tmp_path))
    twin.bind(
        {
            "pump/total": Signal("r/pump/total", "mL"),
            "ss/glucose": Signal("r/ss/glucose", "g/L"),
            "ss/lactate": Signal("r/ss/lactate", "g/L"),
            "c/base": Signal("r/c/base", "mL"),
        }
    )
    return twin


def test_uncertain_and_bad_measurements_are_skipped_and_counted(tmp_path: Path) -> None:
    twin = bound_twin(tmp_path)
    io = _IO()

    def feed(signal: str, value: Any, hour: float, quality: Quality = Quality.GOOD) -> None:
        ts = round(hour * HOUR_NS)
        twin.process(Sample(signal, value, "", ts, ts, quality, 0), io)  # type: ignore[arg-type]

    feed("r/pump/total", 0.0, 0.0)
    feed("r/c/base", 3.0, 0.0)
    feed("r/ss/glucose", 9.0, 0.5, Quality.UNCERTAIN)
    feed("r/ss/glucose", None, 0.6, Quality.BAD)
    glucose = [p for p in io.published if p[0] == "glucose"]
    assert glucose and all(q is Quality.UNCERTAIN for _, _, q, _ in glucose)
    assert "no good glucose measurement yet" in str(glucose[-1][3])
    assert not [p for p in io.published if p[0] == "glucose_residual"]
    feed("r/ss/glucose", 6.1, 1.0)
    feed("r/ss/lactate", 0.3, 1.0)
    feed("r/pump/total", 5.0, 2.0)
    feed("r/c/base", 4.0, 2.0)
    feed("r/ss/glucose", 5.9, 2.0)
    status = twin.status()
    assert status["samples"]["glucose_uncertain"] == 1 and status["samples"]["glucose_bad"] == 1
    assert status["samples"]["glucose_used"] == 2 and status["samples"]["lactate_used"] == 1
    assert status["feed_mL_per_h"] == pytest.approx(2.5)  # 5 mL in 2 h
    names = {p[0] for p in io.published}
    for name in ("vcd", "titer", "glucose", "lactate", "glucose_residual", "base_residual"):
        assert {name, f"{name}_sd"} <= names, name
    last = {p[0]: p for p in io.published}
    assert last["glucose"][2] is Quality.GOOD
    assert last["base_residual"][1] == pytest.approx(1.0 - twin.estimator.expected_base_mL)
    # No depletion in sight at 2.5 mL/h of 400 g/L feed: the search horizon, uncertain.
    assert (
        last["time_to_depletion"][1] == 72.0 and last["time_to_depletion"][2] is Quality.UNCERTAIN
    )
    assert "no depletion within 72 h" in str(last["time_to_depletion"][3])


def test_the_twin_runs_in_the_real_runtime_beside_the_demo(tmp_path: Path) -> None:
    config = twin_config(tmp_path)
    result = patgw("run", str(config), "--for", "20", "--no-view", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = patgw("export", str(config), "--signal", "reactor1/twin/*")
    assert exported.returncode == 0, exported.stderr
    samples: dict[str, list[dict[str, Any]]] = {}
    for line in exported.stdout.splitlines():
        sample = json.loads(line)
        samples.setdefault(sample["signal"].rsplit("/", 1)[1], []).append(sample)
    expected_units = {
        "vcd": "10*6/mL",
        "titer": "g/L",
        "glucose": "g/L",
        "lactate": "g/L",
        "glucose_residual": "g/L",
        "lactate_residual": "g/L",
        "base_residual": "mL",
        "glucose_forecast": "g/L",
        "time_to_depletion": "h",
        "feed_efficiency": "1",
    }
    for name, unit in expected_units.items():
        for channel in (name, f"{name}_sd"):
            assert channel in samples, (channel, sorted(samples))
            assert {s["unit"] for s in samples[channel]} == {unit}, channel
    good = [s for s in samples["vcd"] if s["quality"] == "good"]
    assert good, samples["vcd"][-3:]
    # Minutes into the run: the cells are near the inoculum (0.5e6/mL).
    assert all(0.2 < s["value"] < 1.5 for s in good), good[-3:]
    assert all(s["quality"] == "good" for s in samples["glucose_residual"][-5:])
