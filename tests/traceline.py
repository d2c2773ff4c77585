"""A scripted perfusion line for the traceability tests: what the bioreactor controller and the
capture skid would publish at process hour ``t`` (no emulator: the values follow a script)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from scipy.special import gammainc

from gateway import Channel, InstrumentIO, PluginContext, Registry, hookimpl

REACTOR_ML = 2000.0
PERFUSION_ML_H = 2000.0 / 24  # 1 vessel volume a day
CYCLE_H = 2.0  # each column is primary for one cycle, then eluted
BREAKTHROUGH = 0.2  # the primary's, at the end of its load (from 0 at its start)
PASSING = 0.1  # of that, what the secondary lets through (lost)
FEED_UV = 500.0
NONBINDING = 0.3  # share of the feed's UV280 that never binds (media, HCP)
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
    "feed_uv": "{mAU}",
    "col1_state": "1",
    "col2_state": "1",
    "col3_state": "1",
    "col1_uv": "{mAU}",
    "col2_uv": "{mAU}",
    "col3_uv": "{mAU}",
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
    through = breakthrough(t)
    product = FEED_UV * (1 - NONBINDING)
    for k in range(3):
        state = 1 if k == primary else 2 if k == secondary else 4 if k == eluting else 0
        out[f"col{k + 1}_state"] = float(state)
        uv = 0.0
        if k == primary:
            uv = FEED_UV * NONBINDING + product * through
        elif k == secondary:
            uv = FEED_UV * NONBINDING + product * through * PASSING
        out[f"col{k + 1}_uv"] = uv
    return out


def breakthrough(t: float) -> float:
    """The primary's breakthrough share at process hour ``t``: grows through its load."""
    return BREAKTHROUGH * (t % CYCLE_H) / CYCLE_H


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


def surge_cdf(age_h: float, rtd: dict[str, Any] = SURGE) -> float:
    """Share of what entered the surge tank (``rtd``: tanks in series) that has left it
    ``age_h`` hours later."""
    volume = age_h * PERFUSION_ML_H - rtd["dead_volume_mL"]
    if volume <= 0:
        return 0.0
    n = rtd["n_tanks"]
    return float(gammainc(n, volume * n / rtd["volume_mL"]))


def expected_share(number: int, window: tuple[float, float], rtd: dict[str, Any] = SURGE) -> float:
    """Share of fraction ``number``'s protein that left the reactor within ``window``
    (process h), from the script and the surge tank's analytic RTD: its column was secondary
    in cycle ``number - 2`` (caught the breakthrough, less what passed it) and primary in
    cycle ``number - 1``."""
    steps = 400
    taken = hit = 0.0
    for cycle, primary in ((number - 2, False), (number - 1, True)):
        start = cycle * CYCLE_H
        for i in range(steps):
            tau = start + (i + 0.5) * CYCLE_H / steps
            b = breakthrough(tau)
            part = 1 - b if primary else b * (1 - PASSING)
            # Material at the column at tau left the reactor between tau - a and tau - b.
            inside = surge_cdf(tau - window[0], rtd) - surge_cdf(tau - window[1], rtd)
            hit += part * inside
            taken += part
    return hit / taken if taken else math.nan


# --- the scripted line as an instrument (for a gateway run and for `patgw` subprocesses) --------


class ScriptOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    time_scale: float = Field(default=36000.0, gt=0, description="Process s per wall s.")
    every_s: float = Field(default=0.01, gt=0, description="Publishing period, wall s.")


class ScriptedLine:
    """Publishes :func:`values_at` of its own process time (from its start, scaled)."""

    def __init__(self, options: ScriptOptions, context: PluginContext) -> None:
        self.options = options

    def channels(self) -> Sequence[Channel]:
        return [Channel(name, unit) for name, unit in SIGNALS.items()]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        start = time.monotonic()
        outputs = {name: io.output(name) for name in SIGNALS}
        while True:
            t = (time.monotonic() - start) * self.options.time_scale / 3600
            for name, value in values_at(t).items():
                outputs[name].publish(value)
            await asyncio.sleep(self.options.every_s)


@hookimpl
def pat_gateway_register_drivers(registry: Registry) -> None:
    registry.add_driver("scripted_line", ScriptedLine, ScriptOptions)
