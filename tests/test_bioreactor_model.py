"""Tests for the emulated fed-batch process: balances, determinism, dynamics, controllers, clock.

The model is pure, so every test drives it directly in process time; the runs that need days
use the default 10 s step (one process day is a few tens of milliseconds), the property tests a
coarser one to keep many examples cheap.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_stubs.bioreactor import FedBatchModel, ProcessClock, ProcessParams, ProcessState

#: Concentrations and amounts that can never be negative.
NON_NEGATIVE = (
    "volume_L",
    "vcd_e6_per_mL",
    "viability_pct",
    "glucose_g_L",
    "lactate_g_L",
    "glutamine_mM",
    "titer_g_L",
    "do_pct",
    "fed_volume_L",
    "glucose_fed_g",
    "glucose_consumed_g",
    "base_added_mL",
    "heater_pct",
    "kla_per_h",
)

#: A coarse step (1 min, the stable limit) for property tests, so that examples stay cheap.
COARSE = ProcessParams(step_h=1 / 60)


def glucose_imbalance(model: FedBatchModel) -> float:
    """(glucose in the vessel - at inoculation) - (fed - consumed), in g: zero when balanced."""
    s = model.state
    change = s.glucose_g_L * s.volume_L - model.initial_glucose_g
    return change - (s.glucose_fed_g - s.glucose_consumed_g)


def assert_balanced(model: FedBatchModel) -> None:
    s = model.state
    scale = model.initial_glucose_g + s.glucose_fed_g + s.glucose_consumed_g
    # Relative to the glucose that moved, plus a femtogram for runs that hardly move any.
    assert abs(glucose_imbalance(model)) <= 1e-12 * scale + 1e-15
    base_L = s.base_added_mL / 1000
    assert s.volume_L == pytest.approx(model.params.volume_L + s.fed_volume_L + base_L, abs=1e-12)
    assert s.glucose_fed_g == pytest.approx(s.fed_volume_L * model.params.feed_glucose_g_L)


def assert_non_negative(state: ProcessState) -> None:
    for name in NON_NEGATIVE:
        value = getattr(state, name)
        assert math.isfinite(value) and value >= 0.0, f"{name} = {value}"
    assert state.viability_pct <= 100.0 and state.do_pct <= 100.0


def top_up_glucose(model: FedBatchModel, target_g_L: float = 6.0) -> float:
    """Feed a bolus bringing glucose back to ``target_g_L``, as an operator would; the volume."""
    s = model.state
    volume = max(0.0, (target_g_L - s.glucose_g_L) * s.volume_L / model.params.feed_glucose_g_L)
    model.add_feed(volume)
    return volume


# --------------------------------------------------------------------------- balances


def test_glucose_balance_holds_over_ten_days_of_feeds() -> None:
    model = FedBatchModel(seed=7)
    fed = 0.0
    for _ in range(20):
        model.advance(12.0)
        fed += top_up_glucose(model)
        assert_balanced(model)
    s = model.state
    assert s.time_h == 240.0
    assert s.fed_volume_L == pytest.approx(fed, rel=1e-12)
    # The run did real work: cells grew, ate most of the fed glucose and made product.
    assert s.glucose_fed_g > 10 and s.glucose_consumed_g > 0.9 * s.glucose_fed_g
    assert s.titer_g_L > 1.0 and s.base_added_mL > 0


def test_feed_medium_dilutes_everything_but_glucose_and_glutamine() -> None:
    params = ProcessParams(feed_glutamine_mM=100.0)
    model = FedBatchModel(params)
    before = model.state
    model.add_feed(0.5)
    after = model.state
    assert after.volume_L == 2.5 and after.fed_volume_L == 0.5
    assert after.vcd_e6_per_mL == pytest.approx(before.vcd_e6_per_mL * 2.0 / 2.5)
    assert after.lactate_g_L == pytest.approx(before.lactate_g_L * 2.0 / 2.5)
    assert after.glucose_g_L == pytest.approx((6.0 * 2.0 + 400.0 * 0.5) / 2.5)
    assert after.glutamine_mM == pytest.approx((4.0 * 2.0 + 100.0 * 0.5) / 2.5)
    assert after.glucose_fed_g == 200.0 and after.time_h == 0.0


# --------------------------------------------------------------------------- determinism


def run(seed: int, splits: list[float], feeds_after: frozenset[int] = frozenset()) -> ProcessState:
    model = FedBatchModel(seed=seed)
    for i, dt in enumerate(splits):
        model.advance(dt)
        if i in feeds_after:
            model.add_feed(0.01)
    return model.state


def test_same_seed_and_inputs_give_identical_states() -> None:
    splits = [6.0] * 4
    feeds = frozenset({0, 2})
    assert run(3, splits, feeds) == run(3, splits, feeds)


def test_how_time_is_split_does_not_change_the_result() -> None:
    whole = run(5, [24.0])
    assert run(5, [12.0, 12.0]) == whole
    assert run(5, [1 / 3] * 72) == whole
    assert run(5, [0.1] * 240) == whole
    # Uneven pieces that are no multiple of the step: remainders carry across calls.
    assert run(5, [0.001, 17.0 / 7, 21.0 - 17.0 / 7, 2.999]) == whole


def test_a_remainder_shorter_than_a_step_is_carried() -> None:
    model = FedBatchModel()
    step = model.params.step_h
    model.advance(step * 0.6)
    assert model.state.time_h == 0.0
    model.advance(step * 0.6)
    assert model.state.time_h == pytest.approx(step)
    model.advance(step * 0.8)
    assert model.state.time_h == pytest.approx(2 * step)


def test_a_different_seed_gives_a_different_run() -> None:
    a, b = run(1, [24.0]), run(2, [24.0])
    assert a.temperature_C != b.temperature_C and a.ph != b.ph and a.do_pct != b.do_pct
    # Noise is small: the biology is the same to well within a percent.
    assert a.vcd_e6_per_mL == pytest.approx(b.vcd_e6_per_mL, rel=0.01)


@settings(max_examples=25, deadline=None)
@given(pieces=st.lists(st.floats(0.0, 6.0), min_size=1, max_size=12), seed=st.integers(0, 2**32))
def test_any_split_of_the_same_total_time_is_bit_identical(pieces: list[float], seed: int) -> None:
    split = FedBatchModel(COARSE, seed=seed)
    for dt in pieces:
        split.advance(dt)
    whole = FedBatchModel(COARSE, seed=seed)
    whole.advance(sum(pieces))
    assert split.state == whole.state


# --------------------------------------------------------------------------- dynamics


def test_glucose_rises_after_a_bolus_and_falls_without_feed() -> None:
    model = FedBatchModel(seed=11)
    model.advance(48.0)
    before = model.state.glucose_g_L
    model.add_feed(0.02)
    after_bolus = model.state.glucose_g_L
    assert after_bolus > before + 3.0
    model.advance(12.0)
    later = model.state.glucose_g_L
    assert later < after_bolus
    model.advance(12.0)
    assert model.state.glucose_g_L < later


def test_cells_grow_exponentially_at_first() -> None:
    model = FedBatchModel(seed=2)
    densities = []
    for _ in range(4):
        model.advance(24.0)
        densities.append(model.state.vcd_e6_per_mL)
    rates = [math.log(b / a) / 24.0 for a, b in itertools.pairwise(densities)]
    # Net rate close to mu_max (0.04 /h) minus a little death while nutrients are in excess.
    assert all(0.025 < r < 0.04 for r in rates), rates
    assert densities[-1] > 10.0
    assert model.state.viability_pct > 95.0


def test_a_starving_culture_dies_but_nothing_goes_negative() -> None:
    model = FedBatchModel(seed=4)
    states = []
    for _ in range(10 * 2):
        model.advance(12.0)
        states.append(model.state)
        assert_non_negative(states[-1])
        assert_balanced(model)
    last = states[-1]
    assert last.glucose_g_L < 1e-6 and last.glutamine_mM < 1e-6
    assert last.viability_pct < 5.0
    peak = max(s.vcd_e6_per_mL for s in states)
    assert last.vcd_e6_per_mL < 0.05 * peak
    # The lactate shift: once glucose is gone, cells eat lactate.
    peak_lactate = max(s.lactate_g_L for s in states)
    assert last.lactate_g_L < 0.8 * peak_lactate


def test_uptake_is_clamped_to_what_is_there_and_booked_as_clamped() -> None:
    # Cells so greedy that one step would take more than the vessel holds.
    greedy = ProcessParams(q_glucose_pg_per_cell_h=1e7, q_glutamine_pmol_per_cell_h=1e4)
    model = FedBatchModel(greedy)
    model.advance(greedy.step_h)
    s = model.state
    assert s.glucose_g_L == 0.0 and s.glutamine_mM == 0.0
    assert s.glucose_consumed_g == model.initial_glucose_g
    model.add_feed(0.01)
    model.advance(1.0)
    assert model.state.glucose_g_L == 0.0
    assert model.state.glucose_consumed_g == model.initial_glucose_g + 4.0
    assert_balanced(model)
    assert_non_negative(model.state)


def test_controllers_hold_temperature_ph_and_do_during_a_fed_run() -> None:
    model = FedBatchModel(seed=9)
    worst = {"T": 0.0, "pH": 0.0, "DO": 0.0}
    for hour in range(1, 7 * 24 + 1):
        model.advance(1.0)
        if hour % 12 == 0:
            top_up_glucose(model)
        s = model.state
        worst["T"] = max(worst["T"], abs(s.temperature_C - 36.8))
        worst["pH"] = max(worst["pH"], abs(s.ph - 7.0))
        worst["DO"] = max(worst["DO"], abs(s.do_pct - 40.0))
    assert worst["T"] < 0.2 and worst["pH"] < 0.05 and worst["DO"] < 5.0, worst
    # The pH controller fought the lactate with base; the DO controller raised kLa with the cells.
    assert model.state.base_added_mL > 10.0
    assert model.state.kla_per_h > 5.0
    assert 0.0 < model.state.heater_pct < 100.0


def test_a_new_setpoint_is_reached() -> None:
    model = FedBatchModel(seed=1)
    model.advance(24.0)
    model.set_setpoints(temperature_C=33.0, do_pct=30.0)
    model.advance(6.0)
    s = model.state
    assert s.temperature_C == pytest.approx(33.0, abs=0.2)
    assert s.do_pct == pytest.approx(30.0, abs=3.0)
    assert (s.temperature_sp_C, s.ph_sp, s.do_sp_pct) == (33.0, 7.0, 30.0)


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("advance"), st.floats(0.0, 12.0)),
            st.tuples(st.just("feed"), st.floats(0.0, 0.05)),
        ),
        max_size=10,
    ),
    glucose=st.floats(0.0, 10.0),
    seed=st.integers(0, 2**32),
)
def test_any_sequence_of_advances_and_feeds_keeps_balances_and_signs(
    ops: list[tuple[str, float]], glucose: float, seed: int
) -> None:
    model = FedBatchModel(dataclasses.replace(COARSE, glucose_g_L=glucose), seed=seed)
    for op, amount in ops:
        if op == "advance":
            model.advance(amount)
        else:
            model.add_feed(amount)
        assert_non_negative(model.state)
        assert_balanced(model)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("bad", [-1e-9, math.nan, math.inf, -math.inf])
def test_bad_time_and_feed_are_refused(bad: float) -> None:
    model = FedBatchModel()
    with pytest.raises(ValueError, match="dt_h"):
        model.advance(bad)
    with pytest.raises(ValueError, match="feed volume"):
        model.add_feed(bad)
    assert model.state == FedBatchModel().state


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"volume_L": 0.0}, "volume_L"),
        ({"glucose_g_L": -1.0}, "glucose_g_L"),
        ({"mu_max_per_h": math.nan}, "mu_max_per_h"),
        ({"viability_pct": 101.0}, "viability_pct"),
        ({"kla_min_per_h": 70.0}, "kla_min_per_h"),
        ({"step_h": 2.0}, "step_h"),
        ({"step_h": 1e-9}, "step_h"),
        ({"heater_gain_C_per_h": 0.0}, "heater_gain"),
    ],
)
def test_impossible_parameters_are_refused(change: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProcessParams(**change)


def test_impossible_setpoints_are_refused() -> None:
    model = FedBatchModel()
    with pytest.raises(ValueError, match="ph"):
        model.set_setpoints(ph=15.0)
    with pytest.raises(ValueError, match="do_pct"):
        model.set_setpoints(do_pct=math.nan)
    assert model.state.ph_sp == 7.0 and model.state.do_sp_pct == 40.0


def test_one_process_day_is_cheap() -> None:
    # Guards against per-step allocations (numpy arrays, dataclasses) creeping into the loop;
    # typically ~25 ms, the bound leaves room for a loaded CI machine.
    best = math.inf
    for _ in range(3):
        model = FedBatchModel()
        start = time.perf_counter()
        model.advance(24.0)
        best = min(best, time.perf_counter() - start)
    assert best < 0.1


# --------------------------------------------------------------------------- clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_process_clock_maps_wall_time_with_its_time_scale() -> None:
    wall = FakeClock()
    clock = ProcessClock(FedBatchModel(), time_scale=60.0, clock=wall)
    assert clock.snapshot().time_h == 0.0
    wall.now += 60.0  # one real minute = one process hour
    assert clock.snapshot().time_h == 1.0
    wall.now += 30.0
    clock.advance()
    assert clock.model.state.time_h == 1.5
    # A fake clock stepped backwards adds no time and takes none away.
    wall.now -= 100.0
    assert clock.snapshot().time_h == 1.5

    fast = ProcessClock(FedBatchModel(), time_scale=3600.0, clock=wall)
    wall.now += 24.0
    assert fast.snapshot().time_h == 24.0


def test_process_clock_feeds_millilitres_after_advancing() -> None:
    wall = FakeClock()
    clock = ProcessClock(FedBatchModel(), time_scale=3600.0, clock=wall)
    wall.now += 12.0
    clock.feed(20.0)
    s = clock.model.state
    assert s.time_h == 12.0 and s.fed_volume_L == pytest.approx(0.020)
    # Same as advancing a bare model by the same time, then feeding.
    reference = FedBatchModel()
    reference.advance(12.0)
    reference.add_feed(0.020)
    assert s == reference.state
    with pytest.raises(ValueError, match="mL"):
        clock.feed(-1.0)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_process_clock_refuses_a_bad_time_scale(scale: float) -> None:
    with pytest.raises(ValueError, match="time_scale"):
        ProcessClock(FedBatchModel(), time_scale=scale)
