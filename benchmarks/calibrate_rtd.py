"""The tracer step test of the continuous demo's surge tank: emulated line in, a checked RTD
model file out.

What a process team does on a real continuous line before it relies on residence-time
traceability (ICH Q13): a step of a tracer (salt) at the unit's inlet, its inlet and outlet
conductivity and the flow recorded, a residence-time model fitted on them.

1. **Step test.** ``configs/demo-continuous.yaml``'s perfusion bioreactor and capture skid on
   free ports, time-scaled (``--time-scale``), with the skid's ``tracer_step`` fault (``delta``
   mS/cm at the surge tank's inlet from ``--step-after-h`` process hours on); the real gateway
   reads ``Harvest.Conductivity``, ``Feed.Conductivity``, ``Feed.Flow`` and the batch age.
2. **Export.** ``patgw export --format jsonl``.
3. **Fit.** ``patgw model fit rtd`` (tanks in series in volume coordinates) for unit
   ``surge_tank``, writing ``--output``.

    python benchmarks/calibrate_rtd.py [--output configs/models/surge-tank-rtd.json]
        [--time-scale 600] [--hours 18] [--step-after-h 6] [--work DIR]

Each ``patgw`` step runs as a user would run it (printed on standard error); the last line on
standard output is the fit's JSON report. The demo's model was made with the defaults.
"""

from __future__ import annotations

import argparse
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo-continuous.yaml"
NODES = {
    "harvest_conductivity": "Harvest.Conductivity",
    "feed_conductivity": "Feed.Conductivity",
    "feed_flow": "Feed.Flow",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _patgw(*args: str) -> str:
    command = [sys.executable, "-m", "gateway", *args]
    print("$ patgw " + shlex.join(args), file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"patgw {args[0]} failed (exit {done.returncode})")
    return done.stdout


def _config(folder: Path, time_scale: float, step_after_h: float) -> Path:
    """The demo's bioreactor and capture skid with a tracer step, and a gateway reading it."""
    demo = yaml.safe_load(DEMO.read_text())
    reactor = next(e for e in demo["emulators"] if e["type"] == "bioreactor")
    skid = next(e for e in demo["emulators"] if e["type"] == "capture_skid")
    reactor_port, skid_port = _free_port(), _free_port()
    reactor["options"].update(time_scale=time_scale, port=reactor_port, faults=[])
    wall_s = step_after_h * 3600 / time_scale
    skid["options"] = {
        "process": reactor["id"],
        "port": skid_port,
        "faults": [
            {"fault": "tracer_step", "after_s": wall_s, "for_s": 0, "delta_mS_cm": 10.0},
        ],
    }
    nodes: list[dict[str, Any]] = [
        {"name": name, "node": f"cap:CaptureSkid.{node}"} for name, node in NODES.items()
    ]
    nodes[0]["unit"] = nodes[1]["unit"] = "mS/cm"
    nodes[2]["unit"] = "mL/min"
    config = {
        "version": 1,
        "site": demo["site"],
        "area": "tracer",
        "data_dir": "data",
        "store": {"path": "data/tracer.sqlite"},
        "emulators": [reactor, skid],
        "instruments": [
            {
                "id": "controller",
                "driver": "opcua",
                "options": {
                    "url": f"opc.tcp://127.0.0.1:{reactor_port}",
                    "namespaces": {"ctl": "urn:pat-gateway:emulator:bioreactor-controller"},
                    "sampling_interval_ms": 100,
                    "publishing_interval_ms": 100,
                    "nodes": [
                        {
                            "name": "batch_age",
                            "node": "ctl:BioreactorController.Batch.Age",
                            "unit": "h",
                        },
                    ],
                },
            },
            {
                "id": "capture",
                "driver": "opcua",
                "options": {
                    "url": f"opc.tcp://127.0.0.1:{skid_port}",
                    "namespaces": {"cap": "urn:pat-gateway:emulator:capture-skid"},
                    "sampling_interval_ms": 100,
                    "publishing_interval_ms": 100,
                    "nodes": nodes,
                },
            },
        ],
    }
    path = folder / "tracer.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "configs/models/surge-tank-rtd.json")
    parser.add_argument("--time-scale", type=float, default=600.0)
    parser.add_argument("--hours", type=float, default=18.0, help="process hours recorded")
    parser.add_argument(
        "--step-after-h",
        type=float,
        default=6.0,
        help="process hours before the step: the tank settles from its start-up fill first",
    )
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--work", type=Path, default=None, help="keep the test's files here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="patgw-tracer-") as tmp:
        folder = args.work or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        config = _config(folder, args.time_scale, args.step_after_h)
        run_s = args.hours * 3600 / args.time_scale
        _patgw("run", str(config), "--for", f"{run_s:.1f}")
        data = folder / "step.jsonl"
        data.write_text(_patgw("export", str(config), "--format", "jsonl"))
        report = _patgw(
            "model", "fit", "rtd",
            "--data", str(data),
            "--inlet", "*/harvest_conductivity",
            "--outlet", "*/feed_conductivity",
            "--flow", "*/feed_flow",
            "--age", "*/batch_age",
            "--time-scale", f"{args.time_scale:g}",
            "--unit", "surge_tank",
            "--id", "surge-tank",
            "--model-version", args.model_version,
            "--description", "Surge tank of the continuous demo's capture skid (tracer step)",
            "--output", str(args.output),
            "--json",
        )  # fmt: skip
    print(report.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
