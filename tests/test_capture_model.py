"""The capture skid's physics without a server (``firmware_stubs/capture/model.py``): the surge
tank's residence-time distribution, the 3C-PCC schedule, capacity fade, and the ledgers of where
every gram of product went, checked by balances that close whatever the harvest does.

Driven by direct stepping with a harvest given by the test (the perfusion bioreactor is another
helper's; a fed-batch state must move nothing), so each test runs in well under a second.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import patgw, write_config
from pydantic import ValidationError

from firmware_stubs.bioreactor import FedBatchModel
from firmware_stubs.capture import (
    BIN_H,
    CaptureSkid,
    Fraction,
    Harvest,
    Phase,
    SkidParams,
    load_step_h,
)
from firmware_stubs.capture.model import Material
from firmware_stubs.capture.plugin import CaptureSkidOptions
from gateway import build_registry, load_plan, validation_context

#: 2.5 L/d of harvest at 0.5 g/L, in process hours: the reference case of the brief.
NOMINAL = Harvest(flow_L_per_h=2.5 / 24, titer_g_L=0.5, hcp_g_L=0.3)


def run(
    skid: CaptureSkid, until_h: float, harvest: Harvest | Any, *, every_h: float = 0.25
) -> None:
    """Advance ``skid`` to ``until_h`` in calls ``every_h`` apart; ``harvest`` may be a function
    of the process hour (the harvest read at each call, as the emulator does)."""
    t = skid.time_h
    while t < until_h - 1e-12:
        t = min(until_h, t + every_h)
        skid.advance_to(t, harvest(t) if callable(harvest) else harvest)


def recorder() -> tuple[list[Fraction], Any]:
    done: list[Fraction] = []
    return done, done.append


def whereabouts(skid: CaptureSkid, done: list[Fraction]) -> list[Material]:
    """Every place product can be: finished fractions, the one being collected, the columns,
    the surge tank, waste."""
    places = [f.material for f in done]
    if skid.collecting:
        places.append(skid.eluate)
    places += [c.bound for c in skid.columns]
    places += [skid.in_tank(), skid.waste]
    return places


# --------------------------------------------------------------------------- balances


def test_every_gram_is_somewhere_by_bin_lot_and_deviation() -> None:
    done, on_fraction = recorder()
    skid = CaptureSkid(SkidParams(), start_h=10.0, on_fraction=on_fraction)
    harvested_dev = 0.0
    harvested_lots = {1: 0.0, 2: 0.0}
    rng = random.Random(7)

    def harvest(t: float) -> Harvest:
        # A titer that rises, a flow that wanders, media lot 2 replacing lot 1, a deviation.
        share2 = min(1.0, max(0.0, (t - 20.0) / 20.0))
        return Harvest(
            flow_L_per_h=(2.0 + rng.random()) / 24,
            titer_g_L=0.3 + 0.02 * (t - 10.0),
            hcp_g_L=0.3,
            lot_shares={1: 1.0 - share2, 2: share2},
            deviation=30.0 <= t < 33.0,
        )

    t = skid.time_h
    while t < 70.0:
        t += 0.05
        h = harvest(t)
        before = skid.harvested_g
        skid.advance_to(t, h)
        grams = skid.harvested_g - before
        harvested_dev += grams if h.deviation else 0.0
        total = sum(h.lot_shares.values())
        for lot, share in h.lot_shares.items():
            harvested_lots[lot] += grams * share / total

    assert len(done) >= 8, "a dozen load steps in 60 h"
    places = whereabouts(skid, done)
    total = skid.harvested_g
    assert sum(m.product_g for m in places) == pytest.approx(total, rel=1e-12)
    assert skid.eluted_g == pytest.approx(
        sum(f.material.product_g for f in done) + (skid.eluate.product_g if skid.collecting else 0)
    )
    assert sum(m.dev_g for m in places) == pytest.approx(harvested_dev, rel=1e-9)
    assert harvested_dev > 0.05
    for lot in (1, 2):
        there = sum(m.lots.get(lot, 0.0) for m in places)
        assert there == pytest.approx(harvested_lots[lot], rel=1e-9)
    # Each fraction's truth record adds up, by bin and by lot, to its mass.
    for fraction in done:
        record = fraction.truth()
        assert sum(g for _, _, g in record["bins"]) == pytest.approx(record["mass_g"], rel=1e-12)  # type: ignore[attr-defined]
        assert sum(record["lots"].values()) == pytest.approx(record["mass_g"], rel=1e-9)  # type: ignore[attr-defined]
        for start, end, _ in record["bins"]:  # type: ignore[attr-defined]
            assert end - start == pytest.approx(BIN_H)
            assert end <= fraction.start_h  # harvested before its elution began
    # The deviation went with the material harvested during it: in each fraction, its mass is
    # that of the fraction's bins from those hours (the harvest read at hour t flows over the
    # steps up to t, so the flagged bins are those starting at 29.95 h to 32.90 h).
    with_deviation = 0
    for fraction in done:
        flagged = sum(
            g
            for start, _, g in fraction.truth()["bins"]  # type: ignore[attr-defined]
            if 29.95 - 1e-9 <= start < 32.95 - 1e-9
        )
        assert fraction.material.dev_g == pytest.approx(flagged, abs=1e-9)
        with_deviation += fraction.material.dev_g > 0.01 * fraction.material.product_g
    assert 1 <= with_deviation <= 4


def test_how_time_is_split_changes_nothing() -> None:
    results = []
    for every_h in (0.01, 0.37, 5.0):
        done, on_fraction = recorder()
        skid = CaptureSkid(SkidParams(), start_h=3.3, on_fraction=on_fraction)
        run(skid, 30.0, NOMINAL, every_h=every_h)
        results.append((skid.time_h, skid.signals(), [f.truth() for f in done], skid.harvested_g))
    assert results[0] == results[1] == results[2]


def test_a_fed_batch_state_has_no_harvest_so_nothing_moves() -> None:
    model = FedBatchModel()
    model.advance(5.0)
    harvest = Harvest.of(model.state)
    assert harvest.flow_L_per_h == 0.0
    skid = CaptureSkid(SkidParams(), start_h=5.0)
    before = skid.signals()
    skid.advance_to(50.0, harvest)
    after = skid.signals()
    assert skid.harvested_g == 0.0
    assert after["Column1.State"] == 1 and after["Eluate.Fraction"] == 0
    assert after["Feed.Flow"] == 0.0
    assert after["Feed.Conductivity"] == before["Feed.Conductivity"]


def test_the_harvest_is_read_from_a_perfusion_state() -> None:
    state = dataclasses.make_dataclass(
        "PerfusionState",
        [
            ("harvest_L_per_d", float),
            ("harvest_titer_g_L", float),
            ("harvest_hcp_g_L", float),
            ("media_lot", int),
            ("lot_shares", dict),
            ("deviation", bool),
        ],
    )(2.4, 0.8, 0.25, 3, {2: 0.25, 3: 0.75}, True)
    harvest = Harvest.of(state)
    assert harvest.flow_L_per_h == pytest.approx(0.1)
    assert (harvest.titer_g_L, harvest.hcp_g_L, harvest.deviation) == (0.8, 0.25, True)
    assert harvest.lot_shares == {2: 0.25, 3: 0.75}
    m = Material.harvested(0, 2.0, harvest, 0.0, 0.0)
    assert m.lots == {2: 0.5, 3: 1.5} and m.dev_g == 2.0
    # A lot id that is a string is kept as it is; a number that is not finite counts as none.
    odd = Harvest.of(SimpleNamespace(harvest_L_per_d=float("nan"), media_lot="M-17"))
    assert odd.flow_L_per_h == 0.0 and odd.lot_shares == {"M-17": 1.0}


# --------------------------------------------------------------------------- the PCC schedule


def load_steps(titer_g_L: float, hours: float = 60.0) -> list[float]:
    """Durations of the load steps of a run at this titer, from the second on (the first
    primary starts fresh, not preloaded as secondary)."""
    skid = CaptureSkid(SkidParams())
    harvest = dataclasses.replace(NOMINAL, titer_g_L=titer_g_L)
    switches: list[float] = []
    t = 0.0
    while t < hours:
        t += 0.01
        skid.advance_to(t, harvest)
        if skid.load_started_h != (switches[-1] if switches else skid.start_h):
            switches.append(skid.load_started_h)
    steps = [b - a for a, b in itertools.pairwise(switches)]
    # What an operator reads: the skid reports the last one.
    assert skid.signals()["Skid.LastLoadStep"] == pytest.approx(steps[-1])
    return steps


def test_the_cycle_time_follows_the_titer() -> None:
    at_half = load_steps(0.5)
    at_one = load_steps(1.0)
    assert at_half and at_one
    # Twice the titer, half the load step (the capacity is the same), and the closed form agrees.
    assert at_one[-1] == pytest.approx(at_half[-1] / 2, rel=0.05)
    assert at_half[-1] == pytest.approx(load_step_h(SkidParams(), 2.5, 0.5), rel=0.05)
    # The brief's window: primary for 2-6 process hours at 0.3-1 g/L of a 2 L perfusion.
    assert 2.0 <= at_half[-1] <= 6.0


def test_capacity_fades_and_pressure_rises_with_cycles() -> None:
    params = SkidParams(capacity_fade=0.01, fouling=0.02)
    done, on_fraction = recorder()
    skid = CaptureSkid(params, on_fraction=on_fraction)
    fresh = skid.capacity_g(skid.columns[0])
    run(skid, 120.0, dataclasses.replace(NOMINAL, titer_g_L=1.0))
    column = skid.columns[0]
    assert column.cycles >= 10
    assert skid.capacity_g(column) == pytest.approx(fresh * 0.99**column.cycles)
    masses = [f.material.product_g for f in done if f.column == 1]
    # A worn column binds less before its breakthrough reaches the switching point.
    assert masses[-1] < masses[1] * (1 - 0.005 * (len(masses) - 2))
    primary = next(c for c in skid.columns if c.phase is Phase.PRIMARY)
    flow = skid.column_flow_mL_min(primary)
    assert skid.column_pressure_bar(primary) == pytest.approx(
        params.resistance_bar_per_mL_min * flow * (1 + 0.02 * primary.cycles)
    )


def test_a_schedule_that_does_not_fit_makes_the_skid_wait_and_say_so() -> None:
    slow = SkidParams(regenerate_h=3.0)
    done, on_fraction = recorder()
    skid = CaptureSkid(slow, on_fraction=on_fraction)
    waited = lost_while_waiting = 0.0
    t = 0.0
    while t < 40.0:
        t += 0.01
        lost = skid.lost_g
        skid.advance_to(t, dataclasses.replace(NOMINAL, titer_g_L=1.0))
        if skid.signals()["Skid.Waiting"]:
            waited += 0.01
            lost_while_waiting += skid.lost_g - lost
    assert waited > 1.0
    assert lost_while_waiting > 0.0  # the secondary breaks through while the primary overloads
    assert sum(m.product_g for m in whereabouts(skid, done)) == pytest.approx(skid.harvested_g)
    # The fitting schedule loses next to nothing.
    fit = CaptureSkid(SkidParams())
    run(fit, 40.0, dataclasses.replace(NOMINAL, titer_g_L=1.0))
    assert fit.lost_g < 1e-3 * fit.harvested_g < skid.lost_g


def test_elution_collects_exactly_what_the_column_bound() -> None:
    done, on_fraction = recorder()
    skid = CaptureSkid(SkidParams(), on_fraction=on_fraction)
    peak = 0.0
    seen_low_ph = False
    t = 0.0
    while not done:
        t += 0.01
        skid.advance_to(t, NOMINAL)
        s = skid.signals()
        if s["Eluate.Collecting"]:
            peak = max(peak, s["Eluate.UV280"])
            seen_low_ph |= s["Eluate.pH"] == 3.5 and s["Column1.State"] == 4
    (fraction,) = done
    assert fraction.column == 1 and fraction.number == 1
    # Washed for wash_h from the switch, then eluted for elute_h, to the step.
    assert fraction.start_h == pytest.approx(skid.load_started_h + 0.3)
    assert fraction.end_h - fraction.start_h == pytest.approx(0.3)
    assert skid.columns[0].bound.product_g == 0.0
    assert skid.signals()["Column1.State"] == 5  # regenerating
    assert seen_low_ph and peak > 1000.0
    # The truth nodes describe that fraction as its record does.
    record, s = fraction.truth(), skid.signals()
    assert s["Emulation.Fraction.Mass"] == pytest.approx(record["mass_g"])
    centre = sum((a + b) / 2 * g for a, b, g in record["bins"]) / record["mass_g"]  # type: ignore[attr-defined,operator]
    assert s["Emulation.Fraction.MeanHarvestTime"] == pytest.approx(centre)
    assert 1.0 < centre < fraction.start_h


# --------------------------------------------------------------------------- the surge tank


@pytest.mark.parametrize(("tanks", "dead_mL"), [(1, 0.0), (3, 0.0), (4, 20.0)])
def test_a_tracer_step_shows_the_tanks_in_series(tanks: int, dead_mL: float) -> None:
    params = SkidParams(
        tanks=tanks,
        dead_volume_mL=dead_mL,
        tank_mL=120.0,
        step_h=0.001,
        buffer_conductivity_mS_cm=14.0,
    )
    skid = CaptureSkid(params, start_h=0.0)
    run(skid, 2.0, NOMINAL)
    base = skid.signals()["Feed.Conductivity"]
    skid.tracer_mS_cm = 5.0
    start = skid.time_h
    q_mL_h = NOMINAL.flow_L_per_h * 1000.0
    delay = dead_mL / q_mL_h
    tau = params.tank_mL / tanks / q_mL_h
    for after_h in (0.1, 0.3, 0.6, 1.0, 2.0, 3.0):
        skid.advance_to(start + after_h, NOMINAL)
        assert skid.signals()["Harvest.Conductivity"] == pytest.approx(14.0 + 5.0)
        seen = (skid.signals()["Feed.Conductivity"] - base) / 5.0
        x = max(0.0, after_h - delay) / tau
        expected = 1.0 - math.exp(-x) * sum(x**k / math.factorial(k) for k in range(tanks))
        assert seen == pytest.approx(expected, abs=0.01), after_h


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "process"),
        ({"process": "reactor", "wash_h": 1.0, "regenerate_h": 1.0}, "cannot be met"),
        ({"process": "reactor", "tank_mL": 0}, "tank_mL"),
        ({"process": "reactor", "column_mL": -5}, "column_mL"),
        ({"process": "reactor", "switch_breakthrough": 1.2}, "switch_breakthrough"),
        ({"process": "reactor", "faults": [{"fault": "tracer_step", "after_s": 1}]}, "delta"),
        (
            {"process": "reactor", "faults": [{"fault": "frozen", "after_s": 1, "delta_mS_cm": 2}]},
            "delta",
        ),
        ({"process": "reactor", "colour": "blue"}, "colour"),
    ],
)
def test_bad_options_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CaptureSkidOptions.model_validate(raw)


def test_check_refuses_a_schedule_that_cannot_be_met(tmp_path: Path) -> None:
    config = {
        "version": 1,
        "area": "r1",
        "store": {"path": "store.sqlite"},
        "emulators": [
            {"id": "reactor", "type": "bioreactor"},
            {
                "id": "capture",
                "type": "capture_skid",
                "options": {"process": "reactor", "column_mL": 2.0},
            },
        ],
    }
    path = write_config(tmp_path / "gateway.yaml", config)
    result = patgw("check", str(path))
    assert result.returncode == 2
    assert "emulators[1].options" in result.stderr and "cannot be met" in result.stderr
    # The same skid with the default columns is fine (checked in process, like check does).
    config["emulators"][1]["options"] = {"process": "reactor", "truth_file": "t/truth.jsonl"}  # type: ignore[index]
    plan = load_plan(write_config(path, config), build_registry())
    assert plan.emulators[1].config.type == "capture_skid"


def test_the_truth_file_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    options = CaptureSkidOptions.model_validate(
        {"process": "reactor", "truth_file": "data/truth.jsonl"},
        context=validation_context(tmp_path),
    )
    assert options.truth_file == tmp_path / "data" / "truth.jsonl"
