"""Training data for the anomaly processor's PCA model: normal emulated runs, as the gateway
exports them.

Plays ``--runs`` normal fed-batch runs of the emulated bioreactor (the emulator's own process
model, :class:`~firmware_stubs.bioreactor.model.FedBatchModel`, and its controller's readings,
:func:`firmware_stubs.bioreactor.dcu.readings`: the values the gateway's OPC UA driver reads) and
writes ``normal.jsonl`` in the gateway's export format (:func:`gateway.sample_to_json`): one line
per sample of the scalar process signals :data:`SIGNALS` (the demo's ``controller`` instrument),
every ``--every-h`` process hours. Run ``k`` (from 0) starts on 2026-01-01 plus ``30 k`` days,
so runs never overlap and a gap of days separates them (``patgw model fit pca`` splits runs
there).

"Normal" here is a fed-batch whose glucose is held near a level as a working glucose loop
holds it: every half hour the feed rate is set from the glucose then (an operator with a
perfect analyser: the emulator's truth is fine for making training data, never at run time).
Each run differs in its noise seed, its glucose level (1.5-4.5 g/L), inoculum (0.35-0.65 1e6
cells/mL) and feed concentration (350-450 g/L).

    python benchmarks/anomaly_data.py --out DIR [--runs 10] [--hours 240] [--seed 1]

prints one JSON object: ``runs``, ``samples``, ``hours`` and ``seconds`` (wall time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_stubs.bioreactor.dcu import AgitationDrive, readings
from firmware_stubs.bioreactor.model import FedBatchModel, ProcessParams
from gateway import Quality, Sample, parse_iso_ns, sample_to_json

#: (signal id, unit, controller variable) of every exported signal, as configs/demo.yaml names
#: them.
SIGNALS = (
    ("reactor1/controller/ph", "[pH]", "pH.PV"),
    ("reactor1/controller/dissolved_oxygen", "%", "DissolvedOxygen.PV"),
    ("reactor1/controller/temperature", "Cel", "Temperature.PV"),
    ("reactor1/controller/o2_flow", "L/min", "GasFlows.O2"),
    ("reactor1/controller/base_total", "mL", "Pumps.BaseTotal"),
)
FIRST_START_NS = parse_iso_ns("2026-01-01T00:00:00Z")
RUN_SPACING_NS = 30 * 86_400 * 1_000_000_000
_NS_PER_H = 3_600 * 1_000_000_000
#: How often the emulated loop adjusts the feed, process hours.
FEED_EVERY_H = 0.5


@dataclass(frozen=True, slots=True)
class NormalRun:
    """One planned normal run."""

    name: str
    seed: int
    glucose_level_g_L: float
    vcd_e6_per_mL: float
    feed_glucose_g_L: float
    #: A constant feed instead of the glucose loop (a fixed pump speed), mL per process hour.
    constant_feed_mL_per_h: float | None = None


def plan_runs(count: int, seed: int) -> list[NormalRun]:
    """``count`` normal runs drawn from ``seed`` (module docstring)."""
    rng = np.random.default_rng(seed)
    return [
        NormalRun(
            name=f"normal-{seed}-{k}",
            seed=int(rng.integers(0, 2**31)),
            glucose_level_g_L=float(rng.uniform(1.5, 4.5)),
            vcd_e6_per_mL=float(rng.uniform(0.35, 0.65)),
            feed_glucose_g_L=float(rng.uniform(350.0, 450.0)),
        )
        for k in range(count)
    ]


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults to play into a run (for the anomaly benchmark), each from its onset, in process
    hours; ``None``: not played. They act as the emulators' faults do: ``tubing_wear`` on the
    delivery (the pump's reported volume stays what it was asked for), ``ph_probe_drift`` on the
    probe the pH loop controls on, ``growth_upset`` on the growth rate."""

    tubing_wear: tuple[float, float] | None = None  # (onset h, fraction lost per h)
    ph_probe_drift: tuple[float, float] | None = None  # (onset h, pH per h)
    growth_upset: tuple[float, float] | None = None  # (onset h, growth factor)


@dataclass(frozen=True, slots=True)
class Played:
    """A played run: sample times (process h), values (one column per :data:`SIGNALS`), and
    the truth behind them for validation: the fraction of the reported feed delivered lost to
    wear, the pH probe's offset, the viable cell density."""

    hours: np.ndarray
    values: np.ndarray
    delivery_loss: np.ndarray
    probe_offset: np.ndarray
    vcd: np.ndarray
    #: The feed pump's own total (what it was asked to deliver), mL: a gateway signal.
    feed_reported_mL: np.ndarray
    #: True glucose and lactate, g/L (a soft sensor's target).
    glucose: np.ndarray
    lactate: np.ndarray


def play(
    run: NormalRun, hours: float, every_h: float, faults: Faults | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The run's sample times (process hours) and values (one column per :data:`SIGNALS`)."""
    played = play_run(run, hours, every_h, faults)
    return played.hours, played.values


def play_run(run: NormalRun, hours: float, every_h: float, faults: Faults | None = None) -> Played:
    """Play ``run`` for ``hours`` with ``faults`` (module docstring, :class:`Faults`)."""
    faults = faults or Faults()
    params = ProcessParams(vcd_e6_per_mL=run.vcd_e6_per_mL, feed_glucose_g_L=run.feed_glucose_g_L)
    model = FedBatchModel(params, seed=run.seed)
    agitation = AgitationDrive(seed=run.seed)
    rows: list[list[float]] = []
    loss: list[float] = []
    offset: list[float] = []
    vcd: list[float] = []
    reported: list[float] = []
    glucose: list[float] = []
    lactate: list[float] = []
    reported_mL = 0.0
    rate_L_per_h = 0.0
    last_uptake: list[tuple[float, float]] = []
    steps = round(hours / every_h)
    feed_each = max(1, round(FEED_EVERY_H / every_h))
    for step in range(steps + 1):
        hour = step * every_h
        state = model.state
        if faults.ph_probe_drift is not None and hour == _onset(faults.ph_probe_drift, every_h):
            model.set_ph_probe_drift(faults.ph_probe_drift[1])
        if faults.growth_upset is not None and hour == _onset(faults.growth_upset, every_h):
            model.set_growth_factor(faults.growth_upset[1])
        wear = 0.0
        if faults.tubing_wear is not None and hour > faults.tubing_wear[0]:
            wear = min(0.5, (hour - faults.tubing_wear[0]) * faults.tubing_wear[1])
        if run.constant_feed_mL_per_h is not None:
            rate_L_per_h = run.constant_feed_mL_per_h / 1000.0
        elif step % feed_each == 0:
            # Replace what the cells will take up until the next adjustment, plus a share of
            # the gap to the level: a proportional loop on top of a feed-forward. It sets the
            # pump's rate; a worn tube delivers less of it.
            uptake_g_per_h = max(0.0, _uptake(model, last_uptake) * state.volume_L)
            gap_g = (run.glucose_level_g_L - state.glucose_g_L) * state.volume_L
            rate_g = max(0.0, uptake_g_per_h + 0.5 * gap_g / FEED_EVERY_H)
            rate_L_per_h = rate_g / params.feed_glucose_g_L
        values = readings(state, params, agitation)
        rows.append([float(values[variable]) for _, _, variable in SIGNALS])
        loss.append(wear)
        offset.append(float(state.ph_probe - state.ph))
        vcd.append(state.vcd_e6_per_mL)
        reported.append(reported_mL)
        glucose.append(state.glucose_g_L)
        lactate.append(state.lactate_g_L)
        reported_mL += rate_L_per_h * every_h * 1000.0
        model.add_feed(rate_L_per_h * every_h * (1.0 - wear))
        model.advance(every_h)
    times = np.arange(steps + 1) * every_h
    return Played(
        times,
        np.asarray(rows),
        np.asarray(loss),
        np.asarray(offset),
        np.asarray(vcd),
        np.asarray(reported),
        np.asarray(glucose),
        np.asarray(lactate),
    )


def _onset(fault: tuple[float, float], every_h: float) -> float:
    return round(fault[0] / every_h) * every_h


def _uptake(model: FedBatchModel, last: list[tuple[float, float]]) -> float:
    """Glucose uptake now, g/L/h, since the previous call (the loop's estimate); ``last`` keeps
    (time, glucose consumed) between calls."""
    state = model.state
    previous = last[0] if last else None
    last[:] = [(state.time_h, state.glucose_consumed_g)]
    if previous is None or state.time_h <= previous[0]:
        return 0.0
    return (state.glucose_consumed_g - previous[1]) / (state.time_h - previous[0]) / state.volume_L


def write_runs(out: Path, runs: list[NormalRun], *, hours: float, every_h: float) -> dict[str, int]:
    """Write ``out/normal.jsonl`` for ``runs``; return counts."""
    out.mkdir(parents=True, exist_ok=True)
    samples = 0
    seq = 0
    with (out / "normal.jsonl").open("w", encoding="utf-8") as lines:
        for index, run in enumerate(runs):
            start = FIRST_START_NS + index * RUN_SPACING_NS
            times, rows = play(run, hours, every_h)
            for hour, row in zip(times, rows, strict=True):
                ts = start + round(float(hour) * _NS_PER_H)
                for (signal, unit, _), value in zip(SIGNALS, row, strict=True):
                    sample = Sample(signal, float(value), unit, ts, ts, Quality.GOOD, seq)
                    lines.write(sample_to_json(sample) + "\n")
                    samples += 1
                seq += 1
    return {"runs": len(runs), "samples": samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write normal.jsonl in")
    parser.add_argument("--runs", type=int, default=10, help="normal runs (default 10)")
    parser.add_argument("--hours", type=float, default=240.0, help="process hours per run")
    parser.add_argument("--every-h", type=float, default=0.1, help="sample period, process h")
    parser.add_argument("--seed", type=int, default=1, help="seed of the run plan")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    counts = write_runs(
        args.out, plan_runs(args.runs, args.seed), hours=args.hours, every_h=args.every_h
    )
    summary = {**counts, "hours": args.hours, "seconds": round(time.perf_counter() - started, 2)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
