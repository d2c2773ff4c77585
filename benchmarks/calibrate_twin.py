"""The recipe of the demo's twin model: emulated runs in, a checked twin model file out.

1. **Training runs**: fed-batch runs of the emulated process fed at different constant rates
   (``twin_data.py``), exported as the gateway would, with the emulator's true VCD, glucose,
   lactate and titer as the reference CSV (offline truth, as laboratory values would be).
2. **Fit**: ``patgw model fit twin``.
3. **Independent check**: a run of another seed and feed rate, ``patgw model check`` (open-loop
   errors of the model alone, before any estimator correction).

    python benchmarks/calibrate_twin.py [--output configs/models/cho-twin.json] [--work DIR]

Each step runs the real ``patgw`` command (printed on standard error); the last line on
standard output is one JSON object: the fit report and the check report. The demo's model,
``configs/models/cho-twin.json``, was made with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import twin_data
from calibrate_softsensor import patgw

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUTPUT = REPO / "configs" / "models" / "cho-twin.json"
#: (seed, feed mL per process hour, feed start h) of the training runs.
TRAINING = ((1, 0.6, 48.0), (2, 0.9, 24.0), (3, 0.4, 48.0), (4, 0.75, 0.0))
VALIDATION = (11, 0.7, 36.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--work", type=Path, help="keep the data here (default: a temp folder)")
    parser.add_argument("--model-version", default="1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        fit = ["model", "fit", "twin", "--output", str(args.output.resolve())]
        fit += ["--id", "cho-twin", "--model-version", args.model_version]
        fit += ["--description", "Fed-batch CHO twin fitted on emulated runs (emulator only)"]
        for seed, rate, start in TRAINING:
            name = f"train-{seed}"
            twin_data.write_run(work, name, seed=seed, feed_mL_per_h=rate, start_h=start)
            fit += ["--data", f"{name}.jsonl", "--reference", f"{name}.csv"]
        fitted = patgw(*fit, cwd=work)
        seed, rate, start = VALIDATION
        twin_data.write_run(work, "check", seed=seed, feed_mL_per_h=rate, start_h=start)
        check = ["model", "check", str(args.output.resolve()), "--data", "check.jsonl"]
        checked = patgw(*check, "--reference", "check.csv", cwd=work)
    print(json.dumps({"fit": fitted, "check": checked}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
