"""The soft sensor's accuracy on an independent emulated run, and its cost per prediction.

    python benchmarks/softsensor.py [--model configs/models/raman-glucose-lactate.json]
        [--runs 2] [--seed 2026] [--predictions 5000]

prints one JSON object:

* ``rmsep_glucose_g_per_l``, ``rmsep_lactate_g_per_l`` (and bias, R², n, how many spectra were
  over the model's T² or Q limit): the model file applied by ``patgw model check`` to ``--runs``
  fed-batch runs of design seed ``--seed`` — an emulated campaign the calibration
  (``benchmarks/calibrate_softsensor.py``: design seed 1, validation 1001) never saw, with the
  emulator's default noise (500 ms exposures). ``glucose_range_g_per_l`` is what the run
  covered. The target: glucose RMSEP ≤ 0.3 g/L over 0-8 g/L.
* ``predictions_per_s``: spectra per second through the ``pls`` processor's ``process`` — the
  whole per-spectrum path of the running gateway: preprocessing, both targets' predictions, T²
  and Q, the quality checks and six published samples on the runtime's real outputs — for the
  demo's 2032-point spectra (2048 pixels less 16 masked ones), and
  ``predictions_per_s_2048_points`` for a model of the same recipe fitted on all 2048 pixels.
  ``process_us_p50``/``p99``: single calls. The target: ≥ 1000 per second for 2048 points.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# A script's own folder is first on sys.path: the dataset writer beside this file.
import softsensor_data

from firmware_stubs.raman.campaign import acquire, design_runs
from gateway import PluginContext, Quality, Sample, Signal, SignalKind, Spectrum
from gateway.cli import main as patgw
from gateway.runtime.interpreter import configure_interpreter
from gateway.runtime.outputs import SignalOutput
from gateway.units import Conversion
from plugins.ocean_obp.spectrum import dark_corrected
from plugins.softsensor.fit import fit_model
from plugins.softsensor.model import save_model
from plugins.softsensor.processor import PlsOptions, PlsProcessor

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE.parent / "configs" / "models" / "raman-glucose-lactate.json"
#: Design seeds the shipped model's recipe used: calibration and validation.
RECIPE_SEEDS = (1, 1001)


def accuracy(model: Path, runs: int, seed: int, work: Path) -> dict[str, Any]:
    """``patgw model check`` of ``model`` on a fresh, independent emulated campaign."""
    summary = softsensor_data.write_dataset(
        work, design_runs(runs, seed), integration_s=0.5, noise_seed=seed
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = patgw(
            [
                "model",
                "check",
                str(model),
                "--data",
                str(work / "spectra.jsonl"),
                "--reference",
                str(work / "reference.csv"),
                "--json",
            ]
        )
    if code != 0:
        sys.exit(f"patgw model check failed with exit code {code}")
    report: dict[str, Any] = json.loads(out.getvalue())
    result: dict[str, Any] = {
        "independent_runs": runs,
        "independent_design_seed": seed,
        "independent_spectra": summary["spectra"],
        "glucose_range_g_per_l": summary["glucose_range"],
        "lactate_range_g_per_l": summary["lactate_range"],
        "model_sha256": report["model"]["sha256"],
    }
    for name, figures in report["targets"].items():
        result[f"rmsep_{name}_g_per_l"] = round(figures["rmsep"], 4)
        result[f"bias_{name}_g_per_l"] = round(figures["bias"], 4)
        result[f"r2_{name}"] = round(figures["r2"], 4)
        result[f"over_limit_{name}"] = {
            "t2": figures["t2_over_limit"],
            "q": figures["q_over_limit"],
        }
    return result


def _spectra(dark_pixels: int, count: int, seed: int) -> tuple[list[Spectrum], np.ndarray]:
    """``count`` spectra as the driver publishes them with ``dark_pixels`` masked pixels
    (0: all 2048 pixels, no dark subtraction), and their true glucose and lactate."""
    runs = design_runs(2, seed)
    acquisitions = [acquire(run, noise_seed=seed + k) for k, run in enumerate(runs)]
    axis = softsensor_data.driver_axis(acquisitions[0], dark_pixels)
    spectra: list[Spectrum] = []
    truth: list[tuple[float, float]] = []
    for a in acquisitions:
        for row, glucose, lactate in zip(a.counts, a.glucose_g_L, a.lactate_g_L, strict=True):
            spectra.append(Spectrum(dark_corrected(row, dark_pixels), axis))
            truth.append((float(glucose), float(lactate)))
    return spectra[:count], np.asarray(truth[:count])


def _model_for_2048_points(work: Path) -> Path:
    """The recipe's model fitted on spectra of all 2048 pixels (for the cost at that size)."""
    spectra, truth = _spectra(0, 400, 7)
    x = np.stack([s.values for s in spectra]).astype(np.float64)
    model, _ = fit_model(
        x,
        spectra[0].axis,
        truth,
        [("glucose", "g/L"), ("lactate", "g/L")],
        components=3,
        model_id="bench-2048",
        version="1",
        spectrum_unit="{counts}",
    )
    path = work / "model-2048.json"
    save_model(model, path)
    return path


def throughput(model: Path, spectra: list[Spectrum], predictions: int) -> dict[str, float]:
    """Spectra per second through ``PlsProcessor.process`` onto the runtime's real outputs."""
    processor = PlsProcessor(
        PlsOptions(model=model, spectrum="raman/spectrum"), PluginContext("softsensor", HERE)
    )
    rows: list[Any] = []
    outputs = {
        channel.name: SignalOutput(
            Signal(f"r/softsensor/{channel.name}", channel.unit, SignalKind.SCALAR),
            Conversion(),
            k,
            0,
            rows.append,
        )
        for k, channel in enumerate(processor.channels())
    }

    class _IO:
        processor_id = "softsensor"

        def output(self, channel: str) -> SignalOutput:
            return outputs[channel]

    target = _IO()
    now = time.time_ns()
    samples = [
        Sample("r/raman/spectrum", s, "{counts}", now + i, now + i, Quality.GOOD, i)
        for i, s in enumerate(spectra)
    ]
    process = processor.process
    for sample in samples[:50]:  # warm-up: compiled preprocessing, caches
        process(sample, target)
    single: list[float] = []
    started = time.perf_counter()
    for i in range(predictions):
        t = time.perf_counter()
        process(samples[i % len(samples)], target)
        single.append(time.perf_counter() - t)
        if len(rows) > 60_000:
            rows.clear()
    elapsed = time.perf_counter() - started
    bad = sum(1 for row in rows if row[4] == Quality.BAD)
    if bad:
        sys.exit(f"{bad} bad outputs while timing: the model refused the spectra")
    return {
        "predictions_per_s": round(predictions / elapsed),
        "process_us_p50": round(float(np.percentile(single, 50)) * 1e6, 1),
        "process_us_p99": round(float(np.percentile(single, 99)) * 1e6, 1),
        "spectrum_points": len(spectra[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model file")
    parser.add_argument("--runs", type=int, default=2, help="independent runs (2)")
    parser.add_argument("--seed", type=int, default=2026, help="their design seed (2026)")
    parser.add_argument("--predictions", type=int, default=5000, help="timed predictions")
    args = parser.parse_args()
    if args.seed in RECIPE_SEEDS:
        parser.error(f"--seed {args.seed} is one the model's recipe used: not independent")
    configure_interpreter()
    with tempfile.TemporaryDirectory(prefix="patgw-softsensor-") as folder:
        work = Path(folder)
        result = accuracy(args.model, args.runs, args.seed, work / "independent")
        demo_spectra, _ = _spectra(16, 300, args.seed + 1)
        speed = throughput(args.model, demo_spectra, args.predictions)
        wide = throughput(_model_for_2048_points(work), _spectra(0, 300, args.seed + 2)[0], 2000)
    result |= speed
    result["predictions_per_s_2048_points"] = wide["predictions_per_s"]
    result["process_us_p50_2048_points"] = wide["process_us_p50"]
    result["python"] = platform.python_version()
    result["numpy"] = np.__version__
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
