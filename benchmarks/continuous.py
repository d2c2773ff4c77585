"""The continuous line through the real gateway for weeks of process time: steady-state control
and residence-time traceability against the emulators' truth.

``configs/demo-continuous.yaml`` split in two processes, as a plant has them: one ``patgw run``
serves the emulated line (the perfusion bioreactor, the capacitance and Raman probes, the
capture skid), a second ``patgw run`` is the gateway (drivers, soft sensor, the VCD and glucose
loops, the ``rtd_trace`` processor, the store), so its CPU time and peak memory are its own
(``os.wait4``). Time-scaled (``--time-scale``, 3600 = a process hour per wall second), free
ports, no sinks. The culture starts at ``--start-vcd`` (5e6 cells/mL); the medium's lot changes
on day 8; the culture is 2 °C warm for one process hour on day ``--deviation-day`` (20).

Figures (JSON on standard output):

- ``vcd``: the fraction of the time after start-up (from the first time the VCD is within
  ±10 % of the setpoint) that it stays within, for the true VCD (the controller's
  ``Emulation.ViableCellDensity``, read for validation only) and for the probe's reading that
  the loop holds; target ≥ 0.9.
- ``traceability``: from the capture skid's truth file (which harvest each fraction really
  holds) and the trace processor's genealogy (what the gateway recommends): the share of the
  deviation's material in fractions recommended for divert (target ≥ 0.99); unaffected material
  wrongly diverted, i.e. the mass of diverted fractions that truly hold at most ``divert_share``
  of it, in fractions (target ≤ 0.05); and, for the record, all unaffected material in diverted
  fractions (whole fractions are diverted: an eluate pool cannot be split).
- ``gateway``: CPU seconds, CPU share of one core, and peak RSS of the gateway process; the
  emulators' process alike, for comparison.

    .venv/bin/python benchmarks/continuous.py [--days 30] [--time-scale 3600]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.store import SampleStore

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo-continuous.yaml"
VCD_SETPOINT = 50.0
BAND = 0.10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _configs(
    folder: Path, time_scale: float, start_vcd: float, lot_day: float, deviation_day: float
) -> tuple[Path, Path, dict[str, Any]]:
    """The demo split into an emulator config and a gateway config in ``folder/configs``."""
    text = DEMO.read_text()
    for fixed in ("14841", "15023", "14851"):
        text = text.replace(fixed, str(_free_port()))
    text = text.replace("port: 9181", f"port: {_free_port()}")
    text = re.sub(r"time_scale: 600\b", f"time_scale: {time_scale:g}", text)
    config = yaml.safe_load(text)
    wall_s_per_h = 3600.0 / time_scale
    for emulator in config["emulators"]:
        if emulator["type"] == "bioreactor":
            emulator["options"]["vcd_e6_per_mL"] = start_vcd
            emulator["options"]["faults"] = [
                {"fault": "media_lot_change", "after_s": lot_day * 24 * wall_s_per_h},
                {
                    "fault": "temperature_excursion",
                    "after_s": deviation_day * 24 * wall_s_per_h,
                    "for_s": wall_s_per_h,
                    "delta_C": 2.0,
                },
            ]
    configs = folder / "configs"
    configs.mkdir(parents=True)
    (folder / "data" / "continuous").mkdir(parents=True)  # the Raman link and the truth file
    (configs / "models").symlink_to(REPO / "configs" / "models")
    emulators = {
        "version": 1,
        "site": config["site"],
        "area": "emulators",
        "data_dir": "../data/emulators",
        "store": {"path": "../data/emulators/emulators.sqlite"},
        "emulators": config["emulators"],
        "instruments": [],
    }
    gateway = {k: v for k, v in config.items() if k != "emulators"}
    gateway.pop("sinks", None)
    emulator_path = configs / "emulators.yaml"
    gateway_path = configs / "gateway.yaml"
    emulator_path.write_text(yaml.safe_dump(emulators, sort_keys=False))
    gateway_path.write_text(yaml.safe_dump(gateway, sort_keys=False))
    return emulator_path, gateway_path, config


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        time.sleep(0.5)
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def _usage(usage: Any, wall_s: float) -> dict[str, Any]:
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "cpu_s": round(cpu, 1),
        "cpu_share_of_one_core": round(cpu / wall_s, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


class Lab:
    """Every ``every_d`` process days an offline cell count (the emulator's true VCD, read from
    the gateway's store where the controller's ``Emulation`` node lands, with a count's 5 %
    error: the lab's measurement, not the gateway's) and the probe's mean reading over the same
    hour give a corrected cell factor, which an operator writes with ``patgw write`` through the
    gateway's controlled write path (audited). What a plant does with a capacitance probe whose
    cell size drifts; the loop itself only ever reads the probe."""

    def __init__(self, gateway_cfg: Path, area: str, every_d: float, time_scale: float) -> None:
        self.cfg, self.area, self.every_d, self.scale = gateway_cfg, area, every_d, time_scale
        self.store = gateway_cfg.parent.parent / "data" / "continuous" / "demo.sqlite"
        self.rng = random.Random(7)
        self.writes: list[dict[str, Any]] = []

    def due_s(self) -> float:
        return self.every_d * 24 * 3600 / self.scale

    def recalibrate(self) -> None:
        since = time.time_ns() - round(3.6e12 / self.scale)  # the last process hour
        store = SampleStore(self.store, read_only=True)
        try:
            values: dict[str, list[float]] = {
                "vcd_true": [],
                "viable_cell_density": [],
                "cell_factor": [],
            }
            for name, glob in (
                ("vcd_true", f"{self.area}/controller/vcd_true"),
                ("viable_cell_density", f"{self.area}/biomass_probe/viable_cell_density"),
                ("cell_factor", f"{self.area}/biomass_probe/cell_factor"),
            ):
                for sample in store.samples(glob, since):
                    if sample.quality.name == "GOOD" and sample.value is not None:
                        values[name].append(float(sample.value))
        finally:
            store.close()
        if not all(values.values()):
            self.writes.append({"skipped": "no samples in the last process hour"})
            return
        count = statistics.fmean(values["vcd_true"]) * (1 + self.rng.gauss(0, 0.05))
        probe = statistics.fmean(values["viable_cell_density"])
        factor = values["cell_factor"][-1] * count / probe
        done = subprocess.run(
            [
                sys.executable, "-m", "gateway", "write", str(self.cfg),
                f"{self.area}/biomass_probe/cell_factor", f"{factor:.6g}",
                "--user", "operator",
                "--reason", f"offline count {count:.1f}e6/mL, probe {probe:.1f}e6/mL",
            ],
            input="operator-password\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        self.writes.append(
            {"count": round(count, 2), "probe": round(probe, 2), "factor": round(factor, 5),
             "exit": done.returncode}
        )  # fmt: skip


def _run(
    emulator_cfg: Path, gateway_cfg: Path, run_s: float, logs: Path, lab: Lab | None
) -> dict[str, Any]:
    patgw = [sys.executable, "-m", "gateway", "run"]
    with (logs / "emulators.log").open("wb") as elog, (logs / "gateway.log").open("wb") as glog:
        emulators = subprocess.Popen(
            [*patgw, str(emulator_cfg), "--for", f"{run_s + 30:.0f}"], stdout=elog, stderr=elog
        )
        time.sleep(3.0)  # the emulators listen before the gateway's first connection
        if emulators.poll() is not None:
            raise SystemExit(f"the emulators did not start: see {logs / 'emulators.log'}")
        started = time.monotonic()
        gateway = subprocess.Popen(
            [*patgw, str(gateway_cfg), "--for", f"{run_s:.0f}"], stdout=glog, stderr=glog
        )
        if lab is not None:
            next_at = started + lab.due_s()
            while gateway.poll() is None and next_at < started + run_s - 5:
                time.sleep(max(0.0, min(1.0, next_at - time.monotonic())))
                if time.monotonic() >= next_at:
                    lab.recalibrate()
                    next_at += lab.due_s()
        rc, usage = _wait(gateway, run_s + 120)
        wall = time.monotonic() - started
        emulators.terminate()
        erc, eusage = _wait(emulators, 60)
    return {
        "gateway_exit": rc,
        "emulators_exit": erc,
        "wall_s": round(wall, 1),
        "gateway": _usage(usage, wall),
        "emulators": _usage(eusage, wall),
    }


def _series(store_path: Path, signals: set[str]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {s: [] for s in signals}
    store = SampleStore(store_path, read_only=True)
    try:
        for s in store.samples():
            if s.signal in signals and s.quality.name == "GOOD" and s.value is not None:
                out[s.signal].append((s.source_ts, float(s.value)))
    finally:
        store.close()
    return out


def _in_band(series: list[tuple[int, float]], time_scale: float) -> dict[str, Any]:
    """Time-weighted share within ±BAND of the setpoint after the first entry into the band."""
    h_per_ns = time_scale / 3.6e12
    if len(series) < 2:
        return {"samples": len(series)}
    t0 = series[0][0]
    inside = [abs(v - VCD_SETPOINT) <= BAND * VCD_SETPOINT for _, v in series]
    start = next((i for i, ok in enumerate(inside) if ok), None)
    if start is None:
        return {"start_up_h": None, "fraction_in_band_after_start_up": 0.0}
    span = series[-1][0] - series[start][0]
    good = sum(
        b - a
        for ((a, _), (b, _)), ok in zip(
            itertools.pairwise(series[start:]), inside[start:], strict=False
        )
        if ok
    )
    values = [v for _, v in series[start:]]
    return {
        "start_up_h": round((series[start][0] - t0) * h_per_ns, 1),
        "fraction_in_band_after_start_up": round(good / span, 4) if span else None,
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--time-scale", type=float, default=3600.0)
    parser.add_argument("--start-vcd", type=float, default=5.0)
    parser.add_argument("--lot-day", type=float, default=8.0)
    parser.add_argument("--deviation-day", type=float, default=20.0)
    parser.add_argument(
        "--recalibrate-every-d",
        type=float,
        default=0.0,
        help="process days between offline counts that correct the probe's cell factor (0: none)",
    )
    parser.add_argument("--work", type=Path, default=None, help="keep the run's files here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="patgw-continuous-") as tmp:
        folder = args.work or Path(tmp)
        emulator_cfg, gateway_cfg, config = _configs(
            folder, args.time_scale, args.start_vcd, args.lot_day, args.deviation_day
        )
        run_s = args.days * 24 * 3600 / args.time_scale
        figures: dict[str, Any] = {
            "days": args.days,
            "time_scale": args.time_scale,
            "command": " ".join(sys.argv),
        }
        lab = None
        if args.recalibrate_every_d > 0:
            lab = Lab(gateway_cfg, config["area"], args.recalibrate_every_d, args.time_scale)
        figures["run"] = _run(emulator_cfg, gateway_cfg, run_s, folder, lab)
        if lab is not None:
            figures["lab_recalibrations"] = lab.writes
        area = config["area"]
        store = folder / "data" / "continuous" / "demo.sqlite"
        series = _series(
            store,
            {f"{area}/controller/vcd_true", f"{area}/biomass_probe/viable_cell_density"},
        )
        figures["vcd"] = {
            "setpoint": VCD_SETPOINT,
            "true": _in_band(series[f"{area}/controller/vcd_true"], args.time_scale),
            "probe": _in_band(series[f"{area}/biomass_probe/viable_cell_density"], args.time_scale),
        }
        figures["traceability"] = _traceability(folder, config)
    print(json.dumps(figures))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _traceability(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The gateway's divert recommendations against the skid's truth, fraction by fraction."""
    trace = next(p for p in config["processors"] if p["type"] == "rtd_trace")
    threshold = float(trace["options"]["divert_share"])
    data = folder / "data" / "continuous"
    truth = {int(t["fraction"]): t for t in _jsonl(data / "capture-truth.jsonl")}
    records = [
        r
        for r in _jsonl(data / "traceability" / f"{trace['id']}.genealogy.jsonl")
        if r.get("type") == "fraction"
    ]
    traced = {int(r["fraction"]): r for r in records}
    deviation_total = sum(t["deviation_mass_g"] for t in truth.values())
    masses = [t["mass_g"] for t in truth.values()]
    mean_mass = sum(masses) / len(masses) if masses else 0.0
    captured = wrong = unaffected_diverted = 0.0
    startup_diverted = 0
    share_errors: list[float] = []
    lot_errors: list[float] = []
    missing = sorted(set(truth) - set(traced))
    for number, t in truth.items():
        r = traced.get(number)
        true_share = t["deviation_mass_g"] / t["mass_g"] if t["mass_g"] > 0 else 0.0
        if r is None:
            continue
        diverted = bool(r["recommendation"]["divert"])
        # Material in the line before the gateway started, or a column loading then: the
        # gateway cannot vouch for it (diverted as of unknown origin, counted apart).
        unknown = float(r.get("unknown_share") or 0.0) > threshold or not r["complete"]
        if not unknown:
            traced_share = float(sum(r.get("deviations", {}).values()))
            if true_share > 0 or traced_share > 0:
                share_errors.append(abs(traced_share - true_share))
            # Lots that entered after the start: the medium in the vessel at the start is of
            # unknown lot to the gateway (it says so), the emulator's lot 1.
            lots_true = {k: v / t["mass_g"] for k, v in t.get("lots", {}).items() if k != "1"}
            lots_traced = r.get("lots", {})
            lot_errors.extend(abs(float(lots_traced.get(k, 0.0)) - v) for k, v in lots_true.items())
        if not diverted:
            continue
        captured += t["deviation_mass_g"]
        if unknown:
            startup_diverted += 1
            continue
        unaffected_diverted += t["mass_g"] - t["deviation_mass_g"]
        if true_share <= threshold:
            wrong += t["mass_g"]
    return {
        "divert_share": threshold,
        "fractions_truth": len(truth),
        "fractions_traced": len(traced),
        "fractions_missing_from_genealogy": missing[:20],
        "fractions_diverted": sum(1 for r in records if r["recommendation"]["divert"]),
        "diverted_for_unknown_origin_at_start": startup_diverted,
        "deviation_mass_g": round(deviation_total, 6),
        "deviation_share_in_diverted_fractions": (
            round(captured / deviation_total, 5) if deviation_total > 0 else None
        ),
        "wrongly_diverted_in_fractions": round(wrong / mean_mass, 4) if mean_mass else None,
        "unaffected_in_diverted_fractions_in_fractions": (
            round(unaffected_diverted / mean_mass, 3) if mean_mass else None
        ),
        "deviation_share_max_abs_error": round(max(share_errors), 4) if share_errors else None,
        "new_lot_share_max_abs_error": round(max(lot_errors), 4) if lot_errors else None,
        "mean_fraction_mass_g": round(mean_mass, 4),
    }


if __name__ == "__main__":
    main()
