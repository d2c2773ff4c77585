"""The emulated perfusion culture on its own (decision 0024): where constant rates settle, how
fast the bleed moves the cell density and the perfusion the glucose, and whether PI loops with
the tunings recommended for the continuous demo hold both. Prints JSON.

The model is driven directly in process time (no clock, no gateway): ``--days`` of culture take
about a second. The PI law is the gateway's ``pi_control`` law (positional PI, conditional
integration, output clamped), written out here and sampled every ``--sample-h`` process hours;
its measurements are the true values plus Gaussian noise (``--vcd-noise``, relative, and
``--glucose-noise``, g/L), as a capacitance probe and a soft sensor would give them.

    .venv/bin/python benchmarks/perfusion.py --days 30
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass

from firmware_stubs.bioreactor.model import (
    FedBatchModel,
    PerfusionParams,
    ProcessState,
    perfusion_process_params,
)

DAY = 24.0


@dataclass
class PI:
    """``u = kp * (sp - y) + I`` clamped to ``low..high``; ``I`` integrates ``kp / ti_h * e``
    per process hour only while the output is within its limits (no windup)."""

    kp: float
    ti_h: float
    setpoint: float
    low: float
    high: float
    integral: float

    def output(self, measured: float, dt_h: float) -> float:
        error = self.setpoint - measured
        u = self.kp * error + self.integral
        if u >= self.high:
            return self.high
        if u <= self.low:
            return self.low
        self.integral += self.kp / self.ti_h * error * dt_h
        return u


def summary(s: ProcessState) -> dict[str, float]:
    return {
        "vcd_e6_per_mL": round(s.vcd_e6_per_mL, 2),
        "viability_pct": round(s.viability_pct, 1),
        "glucose_g_L": round(s.glucose_g_L, 3),
        "glutamine_mM": round(s.glutamine_mM, 2),
        "lactate_g_L": round(s.lactate_g_L, 3),
        "titer_g_L": round(s.titer_g_L, 3),
        "harvest_titer_g_L": round(s.harvest_titer_g_L, 3),
        "hcp_g_L": round(s.hcp_g_L, 3),
        "harvest_hcp_g_L": round(s.harvest_hcp_g_L, 3),
        "perfusion_L_per_d": round(s.perfusion_L_per_d, 3),
        "bleed_L_per_d": round(s.bleed_L_per_d, 3),
        "harvest_L_per_d": round(s.harvest_L_per_d, 3),
        "tmp_mbar": round(s.tmp_mbar, 1),
        "do_pct": round(s.do_pct, 1),
    }


def open_loop(args: argparse.Namespace) -> dict[str, object]:
    """Constant rates from a low seed: the state at a few days, and when VCD settles."""
    model = FedBatchModel(
        perfusion_process_params(volume_L=args.volume),
        perfusion=PerfusionParams(perfusion_L_per_d=args.perfusion, bleed_L_per_d=args.bleed),
    )
    at: dict[str, object] = {}
    settled_day = None
    previous = model.state.vcd_e6_per_mL
    for day in range(1, args.days + 1):
        model.advance(DAY)
        s = model.state
        if settled_day is None and abs(s.vcd_e6_per_mL - previous) < 0.005 * previous:
            settled_day = day
        previous = s.vcd_e6_per_mL
        if day in (10, 20, args.days):
            at[f"day_{day}"] = summary(s)
    return {"settled_day (VCD within 0.5 %/day)": settled_day, **at}


def step_responses(args: argparse.Namespace) -> dict[str, object]:
    """From the settled culture: a bleed step and a perfusion step, each against a twin run
    left as it was; the difference at a few process hours after the step."""
    settle_h = 12 * DAY

    def settled() -> FedBatchModel:
        model = FedBatchModel(
            perfusion_process_params(volume_L=args.volume, vcd_e6_per_mL=50.0),
            perfusion=PerfusionParams(perfusion_L_per_d=args.perfusion, bleed_L_per_d=args.bleed),
        )
        model.advance(settle_h)
        return model

    def step(change: dict[str, float], field: str, hours: tuple[int, ...]) -> dict[str, float]:
        base, stepped = settled(), settled()
        stepped.set_setpoints(**change)
        differences = {}
        for h in hours:
            for model in (base, stepped):
                model.advance(settle_h + h - model.state.time_h)
            delta = getattr(stepped.state, field) - getattr(base.state, field)
            differences[f"{h}h"] = round(delta, 3)
        return differences

    return {
        "vcd_change_after_bleed_plus_0.1_L_per_d": step(
            {"bleed_L_per_d": args.bleed + 0.1}, "vcd_e6_per_mL", (24, 48, 96, 240)
        ),
        "glucose_change_after_perfusion_plus_0.4_L_per_d": step(
            {"perfusion_L_per_d": args.perfusion + 0.4}, "glucose_g_L", (3, 6, 12, 48)
        ),
    }


def closed_loop(args: argparse.Namespace) -> dict[str, object]:
    """Both loops from a seed of ``--seed-vcd``: VCD -> bleed, glucose -> perfusion."""
    model = FedBatchModel(
        perfusion_process_params(volume_L=args.volume, vcd_e6_per_mL=args.seed_vcd),
        perfusion=PerfusionParams(perfusion_L_per_d=args.perfusion, bleed_L_per_d=0.0),
    )
    v = args.volume
    vcd_loop = PI(args.vcd_kp, args.vcd_ti_h, args.vcd_sp, 0.0, v * 0.5, 0.0)
    glucose_loop = PI(
        args.glucose_kp, args.glucose_ti_h, args.glucose_sp, 0.5 * v, 2.5 * v, args.perfusion
    )
    rng = random.Random(args.noise_seed)
    dt = args.sample_h
    first_in_band_h = None
    held = counted = 0
    worst = 0.0
    for step in range(round(args.days * DAY / dt)):
        s = model.state
        in_band = abs(s.vcd_e6_per_mL - args.vcd_sp) <= 0.1 * args.vcd_sp
        if first_in_band_h is None and in_band:
            first_in_band_h = step * dt
        if first_in_band_h is not None:
            counted += 1
            held += in_band
            worst = max(worst, abs(s.glucose_g_L - args.glucose_sp))
        vcd = s.vcd_e6_per_mL * (1.0 + rng.gauss(0.0, args.vcd_noise))
        glucose = s.glucose_g_L + rng.gauss(0.0, args.glucose_noise)
        model.set_setpoints(
            bleed_L_per_d=vcd_loop.output(vcd, dt),
            perfusion_L_per_d=glucose_loop.output(glucose, dt),
        )
        model.advance(dt)
    s = model.state
    return {
        "first_in_band_h (VCD within 10 %)": first_in_band_h,
        "vcd_in_band_fraction_after": round(held / counted, 4) if counted else 0.0,
        "glucose_worst_error_after_g_L": round(worst, 3),
        "bleed_over_perfusion": round(s.bleed_L_per_d / s.perfusion_L_per_d, 3),
        "perfusion_vvd": round(s.perfusion_L_per_d / s.volume_L, 3),
        "final": summary(s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30, help="process days of each run")
    parser.add_argument("--volume", type=float, default=2.0, help="working volume, L")
    parser.add_argument("--perfusion", type=float, default=2.6, help="L per process day")
    parser.add_argument("--bleed", type=float, default=0.3, help="L per process day")
    parser.add_argument("--seed-vcd", type=float, default=20.0, help="closed loop: 1e6/mL")
    parser.add_argument("--vcd-sp", type=float, default=50.0)
    parser.add_argument("--vcd-kp", type=float, default=-0.04, help="L/d per 1e6 cells/mL")
    parser.add_argument("--vcd-ti-h", type=float, default=40.0)
    parser.add_argument("--glucose-sp", type=float, default=4.0)
    parser.add_argument("--glucose-kp", type=float, default=0.75, help="L/d per g/L")
    parser.add_argument("--glucose-ti-h", type=float, default=11.0)
    parser.add_argument("--sample-h", type=float, default=0.1, help="loop period, process h")
    parser.add_argument("--vcd-noise", type=float, default=0.02, help="relative, 1 sigma")
    parser.add_argument("--glucose-noise", type=float, default=0.1, help="g/L, 1 sigma")
    parser.add_argument("--noise-seed", type=int, default=1)
    args = parser.parse_args()
    if not (math.isfinite(args.sample_h) and args.sample_h > 0):
        parser.error("--sample-h must be > 0")
    started = time.perf_counter()
    figures = {
        "open_loop": open_loop(args),
        "step_responses": step_responses(args),
        "closed_loop": closed_loop(args),
    }
    figures["wall_s"] = round(time.perf_counter() - started, 2)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
