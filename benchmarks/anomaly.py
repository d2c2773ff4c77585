"""Anomaly detection benchmark: detection delay per fault, false alarms on clean runs.

Plays emulated fed-batch runs (the emulators' own process model and controller readings,
:mod:`anomaly_data`: glucose held at a level by a feed loop, as in normal operation) and feeds
every sample of the model's signals, as the gateway would publish them every 0.1 process hour,
through the ``anomaly`` processor itself (its per-sample ``process``, its alarms, its audit
notes) with the shipped model (``configs/models/reactor1-normal-pca.json``) and the default
persistence rule (3 of 5). Process time is the sample's time since the run's start, as the
processor's time base gives it from the batch age.

* **Clean runs**: ``--clean-runs`` runs of 240 h (plan seed ``--seed``), none used in training:
  ``false_alarms_per_100h`` = alarms raised / process hours x 100 (target ≤ 1).
* **Faults**, each from 72 h on, over ``--fault-runs`` runs: ``growth_upset`` (growth rate x
  0.5), ``ph_probe_drift`` (+0.005 pH/h: the probe reads high, the loop drives the true pH down,
  base use changes), ``tubing_wear`` (0.5 %/h of the delivery lost; the pump's own readings stay
  perfect). Per fault: ``detected`` runs, ``delay_h`` (median and max) after onset, and the
  fault's size at detection: VCD below the same run without the fault (%), the probe's offset
  (pH), the delivery lost (fraction; target < 0.10) — from the emulator's truth, which only
  the benchmark reads.

Why not the whole gateway: 300 clean process hours and four faults through the runtime need the
glucose loop and the twin running too (issue 14's other items), at time scales where the OPC UA
emulator's own clock sets the pace; the replay feeds the same processor code the samples the
runtime would give it, in a fraction of the time. ``tests/test_anomaly_processor.py`` covers
the runtime glue (alarms as signals, audit, the local API).

    python benchmarks/anomaly.py [--clean-runs 20] [--fault-runs 3] [--seed 100]

prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anomaly_data as data

from gateway import PluginContext, ProcessorIO, Quality, Sample, Signal
from plugins.anomaly.processor import AnomalyOptions, AnomalyProcessor

MODEL = Path(__file__).resolve().parent.parent / "configs" / "models" / "reactor1-normal-pca.json"
EVERY_H = 0.1
HOURS = 240.0
ONSET_H = 72.0
_NS_PER_H = 3_600_000_000_000
START_NS = data.FIRST_START_NS
#: Wall time between two samples of a signal in the replay (the poll interval), ns.
_POLL_NS = 500_000_000


class _Output:
    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[tuple[Any, int | None, Quality, str | None]] = []

    def publish(
        self,
        value: Any,
        source_ts: int | None = None,
        quality: Quality = Quality.GOOD,
        reason: str | None = None,
    ) -> None:
        self.values.append((value, source_ts, quality, reason))


class ReplayIO:
    """The processor's side of the runtime, for a replay: outputs kept, process time from the
    run's start, audit notes kept."""

    processor_id = "anomaly"

    def __init__(self) -> None:
        self.outputs: dict[str, _Output] = {}
        self.notes: list[tuple[str, Mapping[str, Any]]] = []

    def output(self, channel: str) -> _Output:
        return self.outputs.setdefault(channel, _Output())

    def process_time_h(self, ts_ns: int) -> float:
        return (ts_ns - START_NS) / _NS_PER_H

    def note(self, action: str, **fields: Any) -> None:
        self.notes.append((action, fields))


def replay(played: data.Played, folder: Path) -> tuple[list[float], ReplayIO]:
    """Feed ``played`` through a fresh processor; the process hours of each alarm raised."""
    options = AnomalyOptions.model_validate({"model": str(MODEL)})
    processor = AnomalyProcessor(options, PluginContext("anomaly", folder))
    signals = [(name, unit) for name, unit, _ in data.SIGNALS]
    processor.bind({name: Signal(name, unit) for name, unit in signals})
    io = ReplayIO()
    runtime = cast(ProcessorIO, io)
    # The pace signal (the model's first) last in each round: scored on fresh values.
    order = [*range(1, len(signals)), 0]
    for step, (hour, row) in enumerate(zip(played.hours, played.values, strict=True)):
        ts = START_NS + round(float(hour) * _NS_PER_H)
        wall = START_NS + step * _POLL_NS
        for k in order:
            name, unit = signals[k]
            processor.process(
                Sample(name, float(row[k]), unit, ts, wall, Quality.GOOD, step), runtime
            )
    # The first sample of each raise: value turns from 0 to the severity.
    series = io.output("mspc_alarm").values
    starts = [
        io.process_time_h(cast(int, series[i][1]))
        for i in range(len(series))
        if series[i][0] and (i == 0 or not series[i - 1][0])
    ]
    return starts, io


def clean(runs: int, seed: int, folder: Path) -> dict[str, Any]:
    alarms = 0
    hours = 0.0
    reasons: list[str] = []
    for run in data.plan_runs(runs, seed):
        played = data.play_run(run, HOURS, EVERY_H)
        starts, io = replay(played, folder)
        alarms += len(starts)
        hours += HOURS
        reasons += [str(f.get("why", ""))[:120] for a, f in io.notes if a == "alarm.raised"]
    return {
        "runs": runs,
        "process_hours": hours,
        "alarms": alarms,
        "false_alarms_per_100h": round(alarms / hours * 100, 3),
        "example_reasons": reasons[:3],
    }


FAULTS: dict[str, data.Faults] = {
    "growth_upset": data.Faults(growth_upset=(ONSET_H, 0.5)),
    "ph_probe_drift": data.Faults(ph_probe_drift=(ONSET_H, 0.005)),
    "tubing_wear": data.Faults(tubing_wear=(ONSET_H, 0.005)),
}


def fault(name: str, runs: int, seed: int, folder: Path) -> dict[str, Any]:
    delays: list[float] = []
    sizes: list[float] = []
    reasons: list[str] = []
    for run in data.plan_runs(runs, seed):
        faulty = data.play_run(run, HOURS, EVERY_H, FAULTS[name])
        starts, io = replay(faulty, folder)
        after = [h for h in starts if h >= ONSET_H]
        if not after:
            continue
        at = after[0]
        index = round(at / EVERY_H)
        delays.append(round(at - ONSET_H, 2))
        if name == "growth_upset":
            reference = data.play_run(run, HOURS, EVERY_H)
            sizes.append(round(100 * (1 - faulty.vcd[index] / reference.vcd[index]), 2))
        elif name == "ph_probe_drift":
            sizes.append(round(float(faulty.probe_offset[index]), 4))
        else:
            sizes.append(round(float(faulty.delivery_loss[index]), 4))
        raised = [f for a, f in io.notes if a == "alarm.raised"]
        reasons += [str(raised[-1].get("why", ""))[:160]] if raised else []
    unit = {
        "growth_upset": "vcd_below_clean_pct",
        "ph_probe_drift": "probe_offset_ph",
        "tubing_wear": "delivery_lost_fraction",
    }[name]
    return {
        "runs": runs,
        "detected": len(delays),
        "delay_h_median": statistics.median(delays) if delays else None,
        "delay_h_max": max(delays) if delays else None,
        f"{unit}_at_detection": sizes,
        "example_reason": reasons[0] if reasons else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean-runs", type=int, default=20, help="clean runs of 240 h")
    parser.add_argument("--fault-runs", type=int, default=3, help="runs per fault")
    parser.add_argument("--seed", type=int, default=100, help="plan seed (training used 1)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result: dict[str, Any] = {"model": str(MODEL.name), "onset_h": ONSET_H}
        result["clean"] = clean(args.clean_runs, args.seed, folder)
        result["faults"] = {
            name: fault(name, args.fault_runs, args.seed + 1, folder) for name in FAULTS
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
