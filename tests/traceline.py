"""A scripted perfusion line for the traceability tests: what the bioreactor controller and the
capture skid would publish at process hour ``t`` (no emulator: the values follow a script)."""

from __future__ import annotations

import math
from typing import Any

from scipy.special import gammainc

REACTOR_ML = 2000.0
PERFUSION_ML_H = 2000.0 / 24  # 1 vessel volume a day
CYCLE_H = 2.0  # each column is primary for one cycle, then eluted
BREAKTHROUGH = 0.1
FEED_UV = 500.0
LOT_CHANGE_H = 10.0
SURGE = {"n_tanks": 2, "volume_mL": 100.0, "dead_volume_mL": 20.0}
EXCURSION_H = (20.0, 21.0)
PADDING_H = 0.5

SIGNALS: dict[str, str] = {
    "volume": "L",
    "perfusion": "L/d",
    "harvest": "L/d",
    "media_lot": "1",
    "temperature": "Cel",
    "vcd": "10*6/mL",
    "feed_flow": "mL/min",
    "feed_uv": "mAU",
    "col1_state": "1",
    "col2_state": "1",
    "col3_state": "1",
    "col1_uv": "mAU",
    "col2_uv": "mAU",
    "col3_uv": "mAU",
    "fraction": "1",
    "fraction_column": "1",
}


def values_at(t: float) -> dict[str, float]:
    """Every scripted signal at process hour ``t`` (in the units of :data:`SIGNALS`)."""
    cycle = int(t // CYCLE_H)
    primary = cycle % 3  # 0-based column
    secondary = (cycle + 1) % 3
    eluting = (cycle - 1) % 3 if cycle >= 1 else None
    out: dict[str, float] = {
        "volume": REACTOR_ML / 1000,
        "perfusion": PERFUSION_ML_H * 24 / 1000,
        "harvest": PERFUSION_ML_H * 24 / 1000,
        "media_lot": 1.0 if t < LOT_CHANGE_H else 2.0,
        "temperature": 38.2 if EXCURSION_H[0] <= t < EXCURSION_H[1] else 37.0,
        "vcd": t,  # so a fraction's summary tells which harvest hours it saw
        "feed_flow": PERFUSION_ML_H / 60,
        "feed_uv": FEED_UV,
        "fraction": float(cycle),  # one elution starts per cycle after the first
        "fraction_column": float(eluting + 1) if eluting is not None else 0.0,
    }
    for k in range(3):
        state = 1 if k == primary else 2 if k == secondary else 4 if k == eluting else 0
        out[f"col{k + 1}_state"] = float(state)
        out[f"col{k + 1}_uv"] = FEED_UV * BREAKTHROUGH if k == primary else 0.0
    return out


def options(model: str, **extra: Any) -> dict[str, Any]:
    """``rtd_trace`` options for the scripted line (signals of instrument ``line``)."""
    doc: dict[str, Any] = {
        "bioreactor": {
            "volume": "line/volume",
            "perfusion": "line/perfusion",
            "harvest": "line/harvest",
            "media_lot": "line/media_lot",
        },
        "line": [{"name": "surge_tank", "model": model, "flow": "line/feed_flow"}],
        "capture": {
            "columns": [
                {"state": f"line/col{k}_state", "uv280": f"line/col{k}_uv"} for k in (1, 2, 3)
            ],
            "feed_uv280": "line/feed_uv",
            "fraction": "line/fraction",
            "fraction_column": "line/fraction_column",
        },
        "deviations": [
            {
                "name": "temperature",
                "signal": "line/temperature",
                "low": 36.5,
                "high": 37.5,
                "at": "harvest",
                "padding_h": PADDING_H,
            }
        ],
        "summary": {"vcd": "line/vcd"},
    }
    doc.update(extra)
    return doc


def surge_cdf(age_h: float) -> float:
    """Share of what entered the surge tank that has left it ``age_h`` hours later."""
    volume = age_h * PERFUSION_ML_H - SURGE["dead_volume_mL"]
    if volume <= 0:
        return 0.0
    n = SURGE["n_tanks"]
    return float(gammainc(n, volume * n / SURGE["volume_mL"]))


def expected_share(
    column_loads: list[tuple[float, float, float]], window: tuple[float, float]
) -> float:
    """Share of a column's protein that left the reactor within ``window`` (process h), from
    the surge tank's analytic RTD: ``column_loads`` is [(start_h, end_h, share of the feed)]."""
    steps = 400
    taken = hit = 0.0
    for start, end, part in column_loads:
        for i in range(steps):
            tau = start + (i + 0.5) * (end - start) / steps
            # Material at the column at tau left the reactor between tau - a and tau - b.
            inside = surge_cdf(tau - window[0]) - surge_cdf(tau - window[1])
            hit += part * inside
            taken += part
    return hit / taken if taken else math.nan
