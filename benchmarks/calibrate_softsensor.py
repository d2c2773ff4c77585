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

    python benchmarks/calibrate_softsensor.py \\
        [--output configs/models/raman-glucose-lactate.json] [--runs 16] [--seed 1] \\
        [--validation-runs 2] [--validation-seed 1001] [--work DIR] [--model-version 1]

Each step runs the real ``patgw`` command (printed on standard error as it runs); the last line
on standard output is one JSON object: the fit report, the check report and the model's hash.
The demo's model, ``configs/models/raman-glucose-lactate.json``, was made with the defaults.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# A script's own folder is first on sys.path: the dataset writer beside this file.
import softsensor_data

from firmware_stubs.raman.campaign import design_runs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUTPUT = REPO / "configs" / "models" / "raman-glucose-lactate.json"


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
    integration_s = args.integration_ms / 1000
    print(f"calibration campaign: {args.runs} runs, design seed {args.seed}", file=sys.stderr)
    calibration = softsensor_data.write_dataset(
        work / "calibration",
        design_runs(args.runs, args.seed),
        integration_s=integration_s,
        noise_seed=args.seed,
    )
    print(
        f"validation: {args.validation_runs} runs, design seed {args.validation_seed}",
        file=sys.stderr,
    )
    validation = softsensor_data.write_dataset(
        work / "validation",
        design_runs(args.validation_runs, args.validation_seed),
        integration_s=integration_s,
        noise_seed=args.validation_seed,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    output = args.output.resolve()
    fit = patgw(
        "model",
        "fit",
        "--spectra",
        "calibration/spectra.jsonl",
        "--reference",
        "calibration/reference.csv",
        "--output",
        str(output),
        "--id",
        args.model_id,
        "--model-version",
        args.model_version,
        "--description",
        f"Glucose and lactate from in-line Raman (785 nm, {args.integration_ms:g} ms), fitted"
        f" on {args.runs} emulated fed-batch runs (design seed {args.seed}) by"
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
        "calibration_data": calibration,
        "validation_data": validation,
        "fit": fit,
        "check": check,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="model file")
    parser.add_argument("--runs", type=int, default=16, help="calibration runs (16)")
    parser.add_argument("--seed", type=int, default=1, help="calibration design seed (1)")
    parser.add_argument("--validation-runs", type=int, default=2, help="validation runs (2)")
    parser.add_argument(
        "--validation-seed", type=int, default=1001, help="validation design seed (1001)"
    )
    parser.add_argument("--integration-ms", type=float, default=500.0, help="as the demo (500)")
    parser.add_argument("--model-id", default="raman-glucose-lactate", help="model id")
    parser.add_argument("--model-version", default="1", help="model version (1)")
    parser.add_argument("--work", type=Path, help="keep the data files here (default: a temp dir)")
    args = parser.parse_args()
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
