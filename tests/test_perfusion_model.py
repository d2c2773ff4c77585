"""Tests for the perfusion mode of the emulated process (issue 15, decision 0024).

The model is pure: every test drives it directly in process time, weeks of culture in a second
(one process day is a few tens of milliseconds at the default 10 s step).
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_stubs.bioreactor.model import (
    FedBatchModel,
    PerfusionParams,
    ProcessParams,
    ProcessState,
    max_net_growth_per_d,
    perfusion_process_params,
    steady_state_problem,
)

DAY = 24.0
REPO = Path(__file__).resolve().parents[1]


def perfusion_run(vcd: float = 0.5, **rates: float) -> FedBatchModel:
    """A 2 L perfusion run with the default kinetics, inoculated at ``vcd`` 1e6 cells/mL."""
    return FedBatchModel(
        perfusion_process_params(vcd_e6_per_mL=vcd), perfusion=PerfusionParams(**rates)
    )


def days(model: FedBatchModel, n: float, every: float = 1.0) -> list[ProcessState]:
    """The states after each ``every`` days for ``n`` days."""
    out = []
    for _ in range(round(n / every)):
        model.advance(every * DAY)
        out.append(model.state)
    return out


# --------------------------------------------------------------------------- steady state


def test_constant_rates_settle_into_a_steady_state_with_glucose_to_spare() -> None:
    model = perfusion_run()
    states = days(model, 30)
    late = states[19:]  # days 20..30
    vcds = [s.vcd_e6_per_mL for s in late]
    # A perfusion density, and steady: the last ten days within 1 % of each other.
    assert min(vcds) > 40.0 and max(vcds) < 60.0
    assert max(vcds) - min(vcds) < 0.01 * min(vcds)
    for s in late:
        assert s.glucose_g_L > 2.0 and s.glutamine_mM > 1.0  # nothing runs out
        assert abs(s.glucose_g_L - late[0].glucose_g_L) < 0.05
        assert s.viability_pct > 90.0
        assert s.volume_L == 2.0
        # Level control: the harvest is what the medium and the base bring, less the bleed.
        assert s.perfusion_L_per_d == 2.6 and s.bleed_L_per_d == 0.3
        assert 2.3 <= s.harvest_L_per_d < 2.3 + 0.1
        assert s.harvest_titer_g_L == pytest.approx(s.titer_g_L * s.product_sieving)
        assert 0.3 < s.harvest_titer_g_L < 1.5
    # The DO loop keeps up with the oxygen demand of a perfusion density.
    assert 35.0 < late[-1].do_pct < 45.0


def test_balances_hold_for_glucose_product_and_hcp() -> None:
    model = perfusion_run(vcd=5.0)
    model.advance(3 * DAY)
    model.add_feed(0.01)  # a bolus on top: the harvest takes the extra volume out
    model.change_media_lot()
    model.set_filter_fouling(0.01, 0.5)
    model.advance(5 * DAY)
    s = model.state
    v = s.volume_L
    assert v == 2.0
    glucose = s.glucose_g_L * v - model.initial_glucose_g
    assert glucose == pytest.approx(
        s.glucose_fed_g - s.glucose_consumed_g - s.glucose_removed_g, abs=1e-9
    )
    assert s.titer_g_L * v == pytest.approx(
        s.product_made_g - s.product_harvested_g - s.product_bled_g, abs=1e-9
    )
    assert s.hcp_g_L * v == pytest.approx(s.hcp_made_g - s.hcp_harvested_g - s.hcp_bled_g)
    assert s.harvest_total_L > 8 * 2.0 and s.bleed_total_L == pytest.approx(8 * 0.3)


def test_the_bleed_moves_the_cell_density_within_a_day_or_two() -> None:
    settled = perfusion_run(vcd=50.0)
    settled.advance(10 * DAY)
    before = settled.state
    bled = perfusion_run(vcd=50.0)
    bled.advance(10 * DAY)
    bled.set_setpoints(bleed_L_per_d=0.45)
    settled.advance(1 * DAY)
    bled.advance(1 * DAY)
    # Half as much bleed again: about 4 % fewer cells after one process day, more after two.
    one_day = bled.state.vcd_e6_per_mL / settled.state.vcd_e6_per_mL
    assert one_day < 0.97
    settled.advance(1 * DAY)
    bled.advance(1 * DAY)
    assert bled.state.vcd_e6_per_mL / settled.state.vcd_e6_per_mL < one_day - 0.01
    assert before.vcd_e6_per_mL == pytest.approx(settled.state.vcd_e6_per_mL, rel=0.01)


def test_the_perfusion_rate_moves_glucose_within_hours() -> None:
    model = perfusion_run(vcd=50.0)
    model.advance(10 * DAY)
    before = model.state.glucose_g_L
    model.set_setpoints(perfusion_L_per_d=3.0)
    model.advance(3.0)
    after_3h = model.state.glucose_g_L
    assert after_3h > before + 0.1
    model.set_setpoints(perfusion_L_per_d=2.2)
    model.advance(6.0)
    assert model.state.glucose_g_L < after_3h - 0.3


def test_both_loops_hold_the_culture_with_the_recommended_tunings() -> None:
    # benchmarks/perfusion.py closes VCD -> bleed (kp < 0: more cells, more bleed) and glucose
    # -> perfusion with the PI law of pi_control and the tunings recommended for the demo, from
    # a seed of 20e6 cells/mL, on noisy measurements.
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "perfusion.py"), "--days", "12"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(result.stdout)
    loop = figures["closed_loop"]
    assert loop["first_in_band_h (VCD within 10 %)"] < 4 * DAY
    assert loop["vcd_in_band_fraction_after"] == 1.0
    assert loop["glucose_worst_error_after_g_L"] < 0.5
    assert 0.05 < loop["bleed_over_perfusion"] < 0.15  # bleed ~ 5-15 % of perfusion
    assert 1.0 < loop["perfusion_vvd"] < 2.0  # 1-2 vessel volumes a day
    steps = figures["step_responses"]
    # The bleed moves VCD within a day or two, the perfusion glucose within hours.
    assert steps["vcd_change_after_bleed_plus_0.1_L_per_d"]["24h"] < -1.0
    assert steps["glucose_change_after_perfusion_plus_0.4_L_per_d"]["3h"] > 0.1


# --------------------------------------------------------------------------- weeks of culture


def test_specific_productivity_declines_over_weeks() -> None:
    model = perfusion_run(vcd=50.0)
    q0 = model.state.qp_pg_per_cell_day
    states = days(model, 30)
    assert q0 == ProcessParams().q_product_pg_per_cell_day
    assert states[-1].qp_pg_per_cell_day == pytest.approx(q0 * math.exp(-0.01 * 30))
    # At a steady cell density the harvest titer falls with it: by exp(-0.01 * 15) in the
    # last fifteen days.
    ratio = states[-1].harvest_titer_g_L / states[14].harvest_titer_g_L
    assert ratio == pytest.approx(math.exp(-0.15), abs=0.01)


def test_no_decline_without_a_decline_rate() -> None:
    model = perfusion_run(vcd=50.0, qp_decline_per_d=0.0)
    days(model, 5)
    assert model.state.qp_pg_per_cell_day == ProcessParams().q_product_pg_per_cell_day


def test_hcp_accumulates_from_secretion_and_lysis() -> None:
    model = perfusion_run()
    states = days(model, 12)
    hcp = [s.hcp_g_L for s in states]
    assert all(b > a for a, b in itertools.pairwise(hcp))
    assert states[-1].harvest_hcp_g_L == pytest.approx(0.9 * hcp[-1])
    # Lysed cells add to what viable cells secrete: more than secretion alone.
    no_lysis = FedBatchModel(
        perfusion_process_params(), perfusion=PerfusionParams(hcp_per_lysed_cell_pg=0.0)
    )
    no_lysis.advance(12 * DAY)
    assert no_lysis.state.hcp_made_g < 0.8 * states[-1].hcp_made_g


def test_filter_fouling_raises_tmp_and_lowers_sieving() -> None:
    model = perfusion_run(vcd=50.0)
    model.advance(10 * DAY)
    clean = model.state
    assert clean.product_sieving == 0.95 and clean.filter_fouling == 0.0
    # 25 mbar per vessel volume a day of harvest through the clean filter.
    assert clean.tmp_mbar == pytest.approx(25.0 * clean.harvest_L_per_d / 2.0)
    model.set_filter_fouling(0.02, 0.6)
    model.advance(10.0)
    partly = model.state
    assert partly.filter_fouling == pytest.approx(0.2)
    assert partly.product_sieving == pytest.approx(0.95 * 0.8)
    assert partly.hcp_sieving == pytest.approx(0.9 * 0.8)
    assert partly.tmp_mbar == pytest.approx(25.0 * partly.harvest_L_per_d / 2.0 / 0.8)
    model.advance(2 * DAY)
    fouled = model.state
    assert fouled.filter_fouling == 0.6  # capped
    assert fouled.tmp_mbar > 2.4 * clean.tmp_mbar
    # Product and HCP held back accumulate in the reactor; less product leaves per litre.
    assert fouled.titer_g_L > 1.5 * clean.titer_g_L
    assert fouled.hcp_g_L > 1.5 * clean.hcp_g_L
    assert fouled.harvest_titer_g_L < clean.harvest_titer_g_L
    model.replace_filter()
    model.advance(1.0)
    assert model.state.filter_fouling == 0.0 and model.state.product_sieving == 0.95


# --------------------------------------------------------------------------- media lots


def test_lot_shares_follow_ideal_mixing() -> None:
    model = perfusion_run(vcd=50.0, bleed_L_per_d=0.3, perfusion_L_per_d=2.6)
    model.advance(5 * DAY)
    assert model.state.media_lot == 1 and model.state.lot_shares == {1: 1.0}
    assert model.change_media_lot() == 2
    assert model.state.lot_shares == {1: 1.0, 2: 0.0}
    residence_h = 2.0 / 2.6 * DAY  # V / Q
    # Ideal mixing: 1 - exp(-t / residence time) of the new lot, to within what the base the pH
    # loop adds (about 1 % of the outflow) washes out on top of the medium.
    model.advance(residence_h)
    shares = model.state.lot_shares
    assert shares[2] == pytest.approx(1.0 - math.exp(-1.0), abs=0.005)
    assert sum(shares.values()) == pytest.approx(1.0)
    model.advance(residence_h)
    assert model.state.lot_shares[2] == pytest.approx(1.0 - math.exp(-2.0), abs=0.005)
    assert model.change_media_lot() == 3
    model.advance(residence_h)
    shares = model.state.lot_shares
    assert shares[3] == pytest.approx(1.0 - math.exp(-1.0), abs=0.005)
    assert shares[1] == pytest.approx(math.exp(-3.0), abs=0.005)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert model.state.media_lot == 3


def test_a_perfusion_run_is_the_same_however_time_is_split() -> None:
    def run(splits: list[float]) -> ProcessState:
        model = perfusion_run(vcd=5.0)
        for i, dt in enumerate(splits):
            model.advance(dt)
            if i == 2:
                model.change_media_lot()
                model.set_filter_fouling(0.05)
        return model.state

    one = run([10.0, 20.0, 30.0, 40.0])
    assert one == run([10.0, 20.0, 30.0] + [1 / 3] * 120)


# --------------------------------------------------------------------------- deviation


def test_a_temperature_excursion_is_a_flagged_step_in_the_culture_temperature() -> None:
    model = perfusion_run(vcd=20.0)
    model.advance(2.0)
    calm = model.state
    assert not calm.deviation
    model.start_temperature_excursion(3.0)
    during = model.state
    assert during.deviation and during.temperature_C == calm.temperature_C + 3.0
    model.advance(1.0)
    assert model.state.deviation
    assert abs(model.state.temperature_C - model.state.temperature_sp_C - 3.0) < 0.5
    model.end_temperature_excursion()
    after = model.state
    assert not after.deviation
    assert abs(after.temperature_C - after.temperature_sp_C) < 0.5
    for bad in (0.0, math.nan, 25.0):
        with pytest.raises(ValueError, match="excursion"):
            model.start_temperature_excursion(bad)


def test_a_fed_batch_can_have_a_deviation_but_no_perfusion() -> None:
    model = FedBatchModel()
    model.start_temperature_excursion(-2.0)
    assert model.state.deviation
    with pytest.raises(ValueError, match="no perfusion or bleed pump"):
        model.set_setpoints(bleed_L_per_d=0.1)
    with pytest.raises(ValueError, match="no perfusion medium"):
        model.change_media_lot()
    with pytest.raises(ValueError, match="retention filter"):
        model.set_filter_fouling(0.1)
    s = model.state
    assert (s.perfusion_L_per_d, s.harvest_L_per_d, s.media_lot, s.lot_shares) == (
        0.0,
        0.0,
        1,
        {1: 1.0},
    )


# --------------------------------------------------------------------------- limits


def test_a_bleed_above_the_medium_stops_at_the_low_level_interlock() -> None:
    model = perfusion_run(vcd=20.0, perfusion_L_per_d=0.5, bleed_L_per_d=1.5)
    model.advance(0.5)
    assert model.state.harvest_L_per_d == 0.0 and model.state.volume_L < 2.0
    model.advance(3 * DAY)
    s = model.state
    # Half the working volume: the bleed pump stops, the medium refills the vessel.
    assert 0.99 <= s.volume_L <= 1.01
    model.set_setpoints(bleed_L_per_d=0.0)
    model.advance(3 * DAY)
    assert model.state.volume_L == 2.0 and model.state.harvest_L_per_d > 0.0


@pytest.mark.parametrize(
    ("rates", "problem"),
    [
        ({"perfusion_L_per_d": 2.0, "bleed_L_per_d": 2.0}, "must be below perfusion_L_per_d"),
        ({"perfusion_L_per_d": 1.0, "bleed_L_per_d": 1.5}, "harvest"),
        ({"perfusion_L_per_d": 9.0, "bleed_L_per_d": 2.0}, "wash out"),
        ({"medium_glucose_g_L": 0.0}, "grow at most 0 /day"),
        ({"medium_glutamine_mM": 0.0}, "wash out"),
    ],
)
def test_rates_that_cannot_settle_are_named(rates: dict[str, float], problem: str) -> None:
    found = steady_state_problem(perfusion_process_params(), PerfusionParams(**rates))
    assert found is not None and problem in found


def test_rates_that_can_settle_pass() -> None:
    params = perfusion_process_params()
    assert steady_state_problem(params, PerfusionParams()) is None
    # A batch start: the pumps start later, by setpoint.
    batch = PerfusionParams(perfusion_L_per_d=0.0, bleed_L_per_d=0.0)
    assert steady_state_problem(params, batch) is None
    # Just below the fastest net growth in this medium (per day, per vessel volume).
    growth = max_net_growth_per_d(params, PerfusionParams())
    assert 0.8 < growth < 0.96
    near = PerfusionParams(perfusion_L_per_d=9.0, bleed_L_per_d=0.99 * growth * 2.0)
    assert steady_state_problem(params, near) is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"product_sieving": 1.2}, "product_sieving"),
        ({"hcp_sieving": -0.1}, "hcp_sieving"),
        ({"density_inhibition_e6_per_mL": 0.0}, "density_inhibition_e6_per_mL"),
        ({"bleed_L_per_d": math.inf}, "bleed_L_per_d"),
    ],
)
def test_impossible_perfusion_parameters_are_refused(change: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PerfusionParams(**change)


def test_bad_pump_rates_and_fouling_are_refused() -> None:
    model = perfusion_run()
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="perfusion_L_per_d"):
            model.set_setpoints(perfusion_L_per_d=bad)
    with pytest.raises(ValueError, match="limit"):
        model.set_filter_fouling(0.1, 1.0)
    with pytest.raises(ValueError, match="rate"):
        model.set_filter_fouling(0.0)
    assert model.state.perfusion_L_per_d == 2.6 and model.state.filter_fouling == 0.0
