"""Capture skid emulator figures: load-step (cycle) time against the harvest, losses, fractions,
and what the model costs per process hour. Prints JSON.

Runs the pure model (:mod:`firmware_stubs.capture.model`, default options) on a constant
harvest for ``--hours`` process hours per case. ``load_step_h`` is the median duration of the
load steps after the first (whose primary starts fresh); ``closed_form_h`` is the estimate
``patgw check`` uses for the schedule; ``column_cycle_h`` a column's whole cycle (three load
steps: secondary, primary, then recovery and waiting); ``fraction_g`` the median eluate
fraction; ``lost_pct`` the product lost to the secondary's breakthrough, % of harvested;
``wall_ms_per_process_h`` the model's own cost (the emulator adds the OPC UA server's refreshes)::

    .venv/bin/python benchmarks/capture_skid.py
    .venv/bin/python benchmarks/capture_skid.py --flow 2.5 --titers 0.3 0.5 1.0 --hours 120
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

from firmware_stubs.capture import CaptureSkid, Fraction, Harvest, SkidParams, load_step_h


def case(flow_L_per_d: float, titer_g_L: float, hours: float) -> dict[str, float]:
    params = SkidParams()
    fractions: list[Fraction] = []
    skid = CaptureSkid(params, on_fraction=fractions.append)
    harvest = Harvest(flow_L_per_h=flow_L_per_d / 24, titer_g_L=titer_g_L, hcp_g_L=0.3)
    switches: list[float] = []
    started = time.perf_counter()
    t = 0.0
    while t < hours:
        t += 0.05
        skid.advance_to(t, harvest)
        if skid.load_started_h != (switches[-1] if switches else 0.0):
            switches.append(skid.load_started_h)
    wall = time.perf_counter() - started
    steps = [b - a for a, b in itertools.pairwise(switches)]
    return {
        "flow_L_per_d": flow_L_per_d,
        "titer_g_L": titer_g_L,
        "load_step_h": round(statistics.median(steps), 3) if steps else float("nan"),
        "closed_form_h": round(load_step_h(params, flow_L_per_d, titer_g_L), 3),
        "recovery_h": round(params.recovery_h, 3),
        "column_cycle_h": round(3 * statistics.median(steps), 3) if steps else float("nan"),
        "fractions": len(fractions),
        "fraction_g": round(statistics.median(f.material.product_g for f in fractions), 4)
        if fractions
        else float("nan"),
        "lost_pct": round(100 * skid.lost_g / skid.harvested_g, 5),
        "waited": skid.waiting,
        "wall_ms_per_process_h": round(1000 * wall / hours, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flow", type=float, default=2.5, help="harvest, L/d")
    parser.add_argument("--titers", type=float, nargs="+", default=[0.3, 0.5, 1.0])
    parser.add_argument("--hours", type=float, default=120.0, help="process hours per case")
    args = parser.parse_args()
    print(json.dumps([case(args.flow, titer, args.hours) for titer in args.titers], indent=1))


if __name__ == "__main__":
    main()
