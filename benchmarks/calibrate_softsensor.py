"""The calibration recipe of the demo's soft sensor: emulated runs in, a checked model file out.

What a process-analytics team does with a real bioreactor, done here with the emulators:

1. **Calibration campaign.** ``--runs`` fed-batch runs of varied conditions (the process model of
   ``firmware_stubs``; glucose 0-8 g/L, lactate uncorrelated with it, with time and with the
   cells), a spectrum every 1-3 process hours from the emulated spectrometer, turned into what
   the gateway's Raman driver publishes, written as ``patgw export`` writes it
   (``calibration/spectra.jsonl``) with the true concentrations as the reference table a
   laboratory would send (``calibration/reference.csv``). See ``softsensor_data.py``.
2. **Fit.** ``patgw model fit`` — cross-validated by leaving one run out, components chosen by
   RMSECV — writes the model file.
3. **Independent validation.** Runs of another design seed and other noise
   (``validation/``) that the fit never saw; ``patgw model check`` reports the RMSEP.

    python benchmarks/calibrate_softsensor.py [--kind fed-batch|perfusion] \\
        [--output configs/models/raman-glucose-lactate.json] [--runs 16] [--seed 1] \\
        [--validation-runs 2] [--validation-seed 1001] [--work DIR] [--model-version 1]

``--kind perfusion`` runs the same recipe on a campaign of perfusion runs
(:func:`~firmware_stubs.raman.campaign.design_perfusion_runs`: 0.3-60e6 cells/mL, glucose held
at 0.5-12 g/L by the perfusion rate, lactate independent of it), validates on 4 runs, fits
without the water-band normalisation (:data:`PERFUSION_PREPROCESSING` says why) and writes
``configs/models/raman-perfusion-glucose-lactate.json`` (id ``raman-perfusion-glucose-lactate``)
unless told otherwise: a fed-batch model meets up to ten times its training's cell protein and
fluorescence there, its Q often over its limit and its glucose up to 0.6 g/L off.

Each step runs the real ``patgw`` command (printed on standard error as it runs); the last line
on standard output is one JSON object: the fit report, the check report and the model's hash,
and ``within_limits``: per target, the share of validation spectra whose T² and Q are both
within the model's limits (a soft-sensor value over either is ``uncertain``, and a control loop
on it holds). The demo's model, ``configs/models/raman-glucose-lactate.json``, was made with the
defaults; the perfusion model with ``--kind perfusion`` and its defaults.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A script's own folder is first on sys.path: the dataset writer beside this file.
import softsensor_data

from firmware_stubs.raman.campaign import CampaignRun, design_perfusion_runs, design_runs
from plugins.softsensor.data import read_spectra_jsonl
from plugins.softsensor.model import load_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = REPO / "configs" / "models"


@dataclass(frozen=True)
class Kind:
    """A kind of calibration campaign: how its runs are planned, and its model's defaults."""

    design: Callable[[int, int], list[CampaignRun]]
    output: Path
    model_id: str
    runs: str
    """What the runs are, for the model's description: "fed-batch" or "perfusion"."""
    validation_runs: int
    preprocess: tuple[dict[str, Any], ...] | None
    """``patgw model fit --preprocess`` steps; ``None``: its default."""


#: The perfusion model's preprocessing: ``patgw model fit``'s default without the normalisation
#: to the water band. The fluorescence's shot noise makes that weak band's mean vary by 7 % from
#: spectrum to spectrum at 50e6 cells/mL (3.7 % at 10e6), and dividing by it multiplies every
#: prediction by that noise: fitted on the default perfusion campaign, the RMSEP of glucose on
#: other perfusion runs (the emulator's default culture, 4 runs of design seed 2026, the 2 of
#: seed 1001) was 0.29-0.39 g/L per run with it (0.33-0.68 above 45e6 cells/mL) and 0.11-0.18
#: without (0.16-0.20). The price: predictions follow the laser's power, which normalisation
#: would cancel (5 % less power: glucose 4.01 -> 3.82 g/L, Q under its limit).
PERFUSION_PREPROCESSING: tuple[dict[str, Any], ...] = (
    {"step": "crop", "low": 400.0, "high": 1800.0},
    {"step": "baseline", "degree": 2},
    {"step": "savgol", "window": 15, "polyorder": 2, "deriv": 0},
)

KINDS = {
    "fed-batch": Kind(
        design_runs,
        MODELS / "raman-glucose-lactate.json",
        "raman-glucose-lactate",
        "fed-batch",
        validation_runs=2,
        preprocess=None,
    ),
    "perfusion": Kind(
        design_perfusion_runs,
        MODELS / "raman-perfusion-glucose-lactate.json",
        "raman-perfusion-glucose-lactate",
        "perfusion",
        validation_runs=4,
        preprocess=PERFUSION_PREPROCESSING,
    ),
}


def patgw(*args: str, cwd: Path) -> dict[str, Any]:
    """Run ``patgw ARGS --json`` in ``cwd`` as a user would; its JSON report, or exit with its
    error. (Data paths relative to ``cwd``: the model's training record names its files as
    given, and a temporary folder's name says nothing.)"""
    command = [sys.executable, "-m", "gateway", *args, "--json"]
    print(f"{cwd}$ patgw " + shlex.join(command[3:]), file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"patgw {args[0]} {args[1]} failed ({result.returncode}): {result.stderr}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def calibrate(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The recipe; returns what ``main`` prints."""
    kind = KINDS[args.kind]
    integration_s = args.integration_ms / 1000
    print(
        f"calibration campaign: {args.runs} {kind.runs} runs, design seed {args.seed}",
        file=sys.stderr,
    )
    calibration = softsensor_data.write_dataset(
        work / "calibration",
        kind.design(args.runs, args.seed),
        integration_s=integration_s,
        noise_seed=args.seed,
    )
    print(
        f"validation: {args.validation_runs} runs, design seed {args.validation_seed}",
        file=sys.stderr,
    )
    validation = softsensor_data.write_dataset(
        work / "validation",
        kind.design(args.validation_runs, args.validation_seed),
        integration_s=integration_s,
        noise_seed=args.validation_seed,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    output = args.output.resolve()
    preprocess = () if kind.preprocess is None else ("--preprocess", json.dumps(kind.preprocess))
    fit = patgw(
        "model",
        "fit",
        "--spectra",
        "calibration/spectra.jsonl",
        "--reference",
        "calibration/reference.csv",
        *preprocess,
        "--output",
        str(output),
        "--id",
        args.model_id,
        "--model-version",
        args.model_version,
        "--description",
        f"Glucose and lactate from in-line Raman (785 nm, {args.integration_ms:g} ms), fitted"
        f" on {args.runs} emulated {kind.runs} runs (design seed {args.seed}) by"
        " benchmarks/calibrate_softsensor.py",
        cwd=work,
    )
    check = patgw(
        "model",
        "check",
        str(output),
        "--data",
        "validation/spectra.jsonl",
        "--reference",
        "validation/reference.csv",
        cwd=work,
    )
    return {
        "model": str(args.output),
        "kind": args.kind,
        "calibration_data": calibration,
        "validation_data": validation,
        "fit": fit,
        "check": check,
        "within_limits": within_limits(output, work / "validation" / "spectra.jsonl"),
    }


def within_limits(model_path: Path, spectra_path: Path) -> dict[str, float]:
    """Per target of the model: the share of the spectra (every good one in the file) whose T²
    and Q are both within the model's limits, as the ``pls`` processor judges them."""
    model = load_model(model_path)
    spectra = read_spectra_jsonl(spectra_path)
    prediction = model.predict(spectra.values)
    shares: dict[str, float] = {}
    for k, target in enumerate(model.targets):
        inside = (prediction.t2[:, k] <= target.t2_limit) & (prediction.q[:, k] <= target.q_limit)
        shares[target.name] = round(float(inside.mean()), 4)
    return shares


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="fed-batch",
        help="the campaign's runs, and the model's default file and id (fed-batch)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="model file (configs/models/raman-[perfusion-]glucose-lactate.json)",
    )
    parser.add_argument("--runs", type=int, default=16, help="calibration runs (16)")
    parser.add_argument("--seed", type=int, default=1, help="calibration design seed (1)")
    parser.add_argument(
        "--validation-runs", type=int, help="validation runs (2 fed-batch, 4 perfusion)"
    )
    parser.add_argument(
        "--validation-seed", type=int, default=1001, help="validation design seed (1001)"
    )
    parser.add_argument("--integration-ms", type=float, default=500.0, help="as the demo (500)")
    parser.add_argument(
        "--model-id", help="model id (raman-glucose-lactate, raman-perfusion-glucose-lactate)"
    )
    parser.add_argument("--model-version", default="1", help="model version (1)")
    parser.add_argument("--work", type=Path, help="keep the data files here (default: a temp dir)")
    args = parser.parse_args()
    kind = KINDS[args.kind]
    args.output = kind.output if args.output is None else args.output
    args.model_id = kind.model_id if args.model_id is None else args.model_id
    if args.validation_runs is None:
        args.validation_runs = kind.validation_runs
    if args.validation_seed == args.seed:
        parser.error("--validation-seed must differ from --seed: validation must be independent")
    if args.work is not None:
        result = calibrate(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="patgw-calibration-") as work:
            result = calibrate(args, Path(work))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
