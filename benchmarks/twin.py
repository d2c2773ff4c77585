"""The digital twin against the emulator's truth, through the real gateway.

    python benchmarks/twin.py [--days 10] [--time-scale 1440] [--rpm 15] [--seed 7]
        [--model configs/models/cho-twin.json]

Runs ``patgw run`` on the demo's wiring (bioreactor controller on OPC UA, feed pump on Modbus,
Raman on a pseudo-terminal, the ``pls`` soft sensor) time-scaled, with the ``twin`` processor
beside it, for ``--days`` process days (``--days * 24 * 3600 / --time-scale`` wall seconds:
10 min for the defaults). The pump runs at ``--rpm`` throughout (0.8 mL/rev: 15 rpm at 1440x
is 0.5 mL of 400 g/L feed per process hour). The controller's ``Emulation.*`` nodes (the true
VCD, titer and glucose, which no real controller has) are read *by this benchmark only*, as
extra signals of its configuration; the twin never sees them. Prints one JSON object:

* ``vcd_rmse_pct_range``: RMSE of the twin's VCD against the true VCD (nearest in time), over
  the samples after the first 24 process hours, as % of the true VCD's range there (target
  ≤ 15 %); ``titer_rmse_pct_range`` likewise (target ≤ 25 %); each also in absolute units;
* ``glucose_forecast_rmse_g_per_l``: the +6 h forecast against the true glucose 6 process
  hours later (target: report);
* counts, the final feed efficiency, the wall time.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from gateway import Quality
from gateway.store import SampleStore

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOUR_NS = 3_600_000_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def configuration(folder: Path, args: argparse.Namespace) -> Path:
    doc = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    doc["data_dir"] = "data"
    doc["store"] = {"path": "data/twin.sqlite"}
    doc.pop("http", None)
    doc["sinks"] = []
    pump_port, opc_port = free_port(), free_port()
    reactor, pump, raman = doc["emulators"]
    reactor["options"] |= {"seed": args.seed, "time_scale": args.time_scale, "port": opc_port}
    pump["options"] |= {"port": pump_port, "setpoint_rpm": args.rpm}
    raman["options"]["link"] = "data/raman.tty"
    for instrument in doc["instruments"]:
        if instrument["id"] == "feed_pump":
            instrument["options"]["port"] = pump_port
        elif instrument["id"] == "raman":
            instrument["options"]["port"] = "data/raman.tty"
        elif instrument["id"] == "controller":
            instrument["options"]["url"] = f"opc.tcp://127.0.0.1:{opc_port}"
            nodes = instrument["options"]["nodes"]
            nodes += [
                {"name": "vcd_true", "node": "ctl:BioreactorController.Emulation.ViableCellDensity",
                 "unit": "10*6/mL"},
                {"name": "titer_true", "node": "ctl:BioreactorController.Emulation.Titer",
                 "unit": "g/L"},
            ]  # fmt: skip
    doc["processors"].append(
        {
            "id": "twin",
            "type": "twin",
            "time_base": {"time_scale": args.time_scale},
            "options": {
                "model": str(args.model.resolve()),
                "feed_total": "feed_pump/total_volume",
                "glucose": "softsensor/glucose",
                "lactate": "softsensor/lactate",
                "base_total": "controller/base_total",
            },
        }
    )
    (folder / "data").mkdir()
    (folder / "models").symlink_to(REPO / "configs" / "models")
    path = folder / "twin.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def series(store: SampleStore, signal: str, good_only: bool = True) -> list[tuple[int, float]]:
    out = []
    for sample in store.samples(signal):
        if sample.value is None or (good_only and sample.quality != Quality.GOOD):
            continue
        out.append((sample.source_ts, float(sample.value)))
    out.sort()
    return out


def nearest(points: list[tuple[int, float]], times: list[int], ts: int) -> float | None:
    i = bisect.bisect_left(times, ts)
    best = None
    for j in (i - 1, i):
        if 0 <= j < len(points) and (best is None or abs(points[j][0] - ts) < abs(best[0] - ts)):
            best = points[j]
    if best is None or abs(best[0] - ts) > 5_000_000_000:
        return None
    return best[1]


def compare(
    estimate: list[tuple[int, float]], truth: list[tuple[int, float]], after_ns: int, shift_ns: int
) -> dict[str, Any]:
    times = [t for t, _ in truth]
    errors, values = [], []
    for ts, value in estimate:
        if ts < after_ns:
            continue
        true = nearest(truth, times, ts + shift_ns)
        if true is None:
            continue
        errors.append(value - true)
        values.append(true)
    if not errors:
        return {"n": 0}
    rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
    span = max(values) - min(values)
    return {
        "n": len(errors),
        "rmse": rmse,
        "rmse_pct_range": 100 * rmse / span if span > 0 else None,
        "range": [min(values), max(values)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=10.0)
    parser.add_argument("--time-scale", type=float, default=1440.0)
    parser.add_argument("--rpm", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", type=Path, default=REPO / "configs" / "models" / "cho-twin.json")
    args = parser.parse_args()
    wall_s = args.days * 24 * 3600 / args.time_scale
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        config = configuration(folder, args)
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "gateway", "run", str(config), "--for", f"{wall_s:g}",
             "--no-view", "--log-level", "error"],
            cwd=folder, capture_output=True, text=True, timeout=wall_s + 300, check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        if run.returncode != 0:
            sys.exit(f"patgw run failed ({run.returncode}): {run.stderr[-3000:]}")
        store = SampleStore(folder / "data" / "twin.sqlite", read_only=True)
        try:
            vcd = series(store, "reactor1/twin/vcd", good_only=False)
            titer = series(store, "reactor1/twin/titer", good_only=False)
            forecast = series(store, "reactor1/twin/glucose_forecast", good_only=False)
            vcd_true = series(store, "reactor1/controller/vcd_true")
            titer_true = series(store, "reactor1/controller/titer_true")
            glucose_true = series(store, "reactor1/controller/glucose_true")
            efficiency = series(store, "reactor1/twin/feed_efficiency", good_only=False)
            measured = series(store, "reactor1/softsensor/glucose")
        finally:
            store.close()
    if not vcd_true or not vcd:
        sys.exit("no twin or truth samples: see the gateway's log")
    start = vcd_true[0][0]
    after = start + round(24 * HOUR_NS / args.time_scale)
    shift = round(6 * HOUR_NS / args.time_scale)
    v = compare(vcd, vcd_true, after, 0)
    t = compare(titer, titer_true, after, 0)
    f = compare(forecast, glucose_true, after, shift)
    print(
        json.dumps(
            {
                "process_days": args.days,
                "time_scale": args.time_scale,
                "feed_rpm": args.rpm,
                "seed": args.seed,
                "vcd_rmse_pct_range": v.get("rmse_pct_range"),
                "vcd_rmse_1e6_per_ml": v.get("rmse"),
                "vcd_true_range": v.get("range"),
                "titer_rmse_pct_range": t.get("rmse_pct_range"),
                "titer_rmse_g_per_l": t.get("rmse"),
                "titer_true_range": t.get("range"),
                "glucose_forecast_rmse_g_per_l": f.get("rmse"),
                "glucose_true_range": f.get("range"),
                "samples_compared": {"vcd": v["n"], "titer": t["n"], "forecast": f["n"]},
                "soft_sensor_glucose_samples": len(measured),
                "final_feed_efficiency": efficiency[-1][1] if efficiency else None,
                "wall_s": round(elapsed, 1),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
