"""The ``pi_control`` law against a simulated glucose plant, without the runtime."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from plugins.feed_control.loop import FeedProfile, Mode, PiLoop, PiTuning, State

#: The simulated plant: glucose (g/L) rises by GAIN g/L per process hour per unit of output and
#: falls by the culture's uptake (g/L/h); one measurement every DT_S wall seconds = DT_H hours.
GAIN = 0.05
DT_S = 2.0
DT_H = 0.05


def tuning(**changes: object) -> PiTuning:
    base: dict[str, object] = {
        "setpoint": 4.0,
        "kp": 4.0,
        "ti_h": 4.0,
        "out_min": 0.0,
        "out_max": 20.0,
        "fallback": FeedProfile(((0.0, 2.0), (10.0, 6.0))),
        "max_step": 2.0,
        "max_rate_per_s": 1.0,
        "stale_after_s": 10.0,
        "fallback_after_s": 20.0,
    }
    base.update(changes)
    return PiTuning(**base)  # type: ignore[arg-type]


class Plant:
    def __init__(self, glucose: float, uptake: float) -> None:
        self.glucose = glucose
        self.uptake = uptake

    def step(self, output: float) -> None:
        self.glucose = max(self.glucose + (GAIN * output - self.uptake) * DT_H, 0.0)


def run(loop: PiLoop, plant: Plant, steps: int, start: int = 0) -> list[tuple[float, float]]:
    """Closed loop for ``steps`` measurements; (glucose, output) after each."""
    trace = []
    for i in range(start, start + steps):
        wall, t_h = i * DT_S, i * DT_H
        move = loop.measure(plant.glucose, True, t_h, wall)
        if move.output is not None:
            loop.written(move.output, wall)
        plant.step(loop.output)
        trace.append((plant.glucose, loop.output))
    return trace


def test_step_response_settles_at_the_setpoint_within_the_limits() -> None:
    loop = PiLoop(tuning(), output=0.0, wall_s=0.0)
    loop.auto(0.0)
    plant = Plant(glucose=2.0, uptake=0.3)  # needs an output of 6 at steady state
    trace = run(loop, plant, 2000)  # 100 process hours
    glucose = [g for g, _ in trace]
    outputs = [u for _, u in trace]
    assert abs(glucose[-1] - 4.0) < 0.01
    assert abs(outputs[-1] - 0.3 / GAIN) < 0.05
    assert max(glucose) < 4.0 + 0.5  # overshoot bounded
    assert all(0.0 <= u <= 20.0 for u in outputs)
    # No write ever broke the step or rate limit.
    steps = [abs(b - a) for (_, a), (_, b) in itertools.pairwise(trace)]
    assert max(steps) <= 2.0 and max(steps) <= 1.0 * DT_S


def test_anti_windup_leaves_the_limit_as_soon_as_the_error_turns() -> None:
    """Uptake beyond what the maximum output can feed holds the output at its limit for hours;
    when uptake falls, the output comes off the limit as soon as glucose crosses the setpoint (no
    integral to unwind), and glucose overshoots far less than without anti-windup."""
    t = tuning(out_max=8.0)
    loop = PiLoop(t, output=0.0, wall_s=0.0)
    loop.auto(0.0)
    plant = Plant(glucose=4.0, uptake=0.6)  # 0.6 > 8 * GAIN: starving at full output
    trace = run(loop, plant, 400)
    assert trace[-1][1] == 8.0 and trace[-1][0] < 2.0
    assert loop.integral <= 8.0 + 1e-9  # tracked, not wound up
    plant.uptake = 0.2
    after = run(loop, plant, 2000, start=400)
    crossed = next(i for i, (g, _) in enumerate(after) if g >= 4.0)
    assert after[crossed + 1][1] < 8.0  # off the limit right after the crossing
    overshoot = max(g for g, _ in after) - 4.0

    # The same run with a law that integrates regardless of the limit (windup) overshoots more.
    wound = _windup_overshoot(t)
    assert overshoot < 0.5 * wound, (overshoot, wound)


def _windup_overshoot(t: PiTuning) -> float:
    plant = Plant(glucose=4.0, uptake=0.6)
    integral, u, peak = 0.0, 0.0, 0.0
    for i in range(2400):
        if i == 400:
            plant.uptake = 0.2
        e = t.setpoint - plant.glucose
        integral += t.kp / t.ti_h * e * DT_H
        u = min(max(t.kp * e + integral, t.out_min), t.out_max)
        plant.step(u)
        if i > 400:
            peak = max(peak, plant.glucose - t.setpoint)
    return peak


def test_manual_to_auto_is_bumpless() -> None:
    loop = PiLoop(tuning(), output=0.0, wall_s=0.0)
    assert loop.mode is Mode.MANUAL
    assert loop.manual(7.0) == 7.0
    loop.adopt(7.0)
    plant = Plant(glucose=3.0, uptake=0.3)  # 1 g/L below the setpoint: kp * e = 4
    loop.measure(plant.glucose, True, 0.0, 0.0)
    loop.auto(0.0)
    trace = run(loop, plant, 3, start=1)
    # The first auto outputs move off 7 by the integral action only, not by the kp * e jump.
    assert abs(trace[0][1] - 7.0) < 0.1
    assert abs(trace[2][1] - 7.0) < 0.3


def test_auto_to_manual_keeps_or_sets_the_output() -> None:
    loop = PiLoop(tuning(), output=5.0, wall_s=0.0)
    loop.auto(0.0)
    assert loop.manual() == 5.0
    assert loop.state is State.MANUAL
    with pytest.raises(ValueError, match="outside the loop's limits"):
        loop.manual(25.0)
    # In manual, measurements move nothing.
    assert loop.measure(0.5, True, 1.0, 10.0).output is None
    assert loop.tick(1.0, 1000.0).output is None


def test_uncertain_measurements_hold_then_fall_back_then_recover() -> None:
    loop = PiLoop(tuning(fallback=FeedProfile(((0.0, 2.0), (20.0, 6.0)))), 0.0, wall_s=0.0)
    loop.auto(0.0)
    plant = Plant(glucose=4.0, uptake=0.3)
    run(loop, plant, 200)
    held = loop.output
    wall0, t0 = 200 * DT_S, 200 * DT_H
    events = []
    # Uncertain (or bad) measurements far from the setpoint: the output must not move.
    for k in range(45):
        wall, t_h = wall0 + k, t0 + k * DT_H / DT_S
        assert loop.measure(0.1, False, t_h, wall).output is None
        move = loop.tick(t_h, wall)
        events += move.events
        if loop.state is not State.FALLBACK:
            assert move.output is None
            assert loop.output == held
        elif move.output is not None:
            loop.written(move.output, wall)
    assert [e.action for e in events] == ["hold.enter", "fallback.enter"]
    assert loop.state is State.FALLBACK
    assert loop.output == 2.0  # the profile's value before 20 h, reached within the rate limit
    # Later in process time, the fallback profile's next step.
    move = loop.tick(20.5, wall0 + 100)
    assert move.output == 4.0  # step-limited towards 6
    loop.written(4.0, wall0 + 100)
    move = loop.tick(20.6, wall0 + 110)
    assert move.output == 6.0
    loop.written(6.0, wall0 + 110)
    # A good measurement: back to control, bumplessly from the fallback output.
    move = loop.measure(4.0, True, 20.7, wall0 + 112)
    assert loop.state is State.NORMAL
    assert [e.action for e in move.events] == ["fallback.exit"]
    move = loop.measure(4.0, True, 20.75, wall0 + 114)
    assert move.output is None or abs(move.output - 6.0) < 1e-9


def test_a_refused_write_holds_at_the_real_output() -> None:
    loop = PiLoop(tuning(), output=3.0, wall_s=0.0)
    loop.auto(0.0)
    move = loop.measure(2.0, True, 0.0, 10.0)
    assert move.output is not None and move.output > 3.0
    event = loop.refused("rate: too fast", 10.0)
    assert event.action == "write.refused"
    assert loop.output == 3.0 and loop.state is State.HOLD
    assert "write refused" in loop.reason
    # The next good measurement resumes control from 3.0, not from the refused value.
    loop.measure(2.0, True, 0.05, 12.0)
    assert loop.state is State.NORMAL
    move = loop.measure(2.0, True, 0.1, 14.0)
    assert move.output is not None and abs(move.output - 3.0) < 0.2


def test_bad_tuning_is_refused() -> None:
    with pytest.raises(ValueError, match="ti_h"):
        tuning(ti_h=0.0)
    with pytest.raises(ValueError, match="fallback output 30"):
        tuning(fallback=FeedProfile(((0.0, 30.0),)))
    with pytest.raises(ValueError, match="increase"):
        FeedProfile(((1.0, 1.0), (1.0, 2.0)))
    with pytest.raises(ValueError, match="finite"):
        tuning(kp=math.nan)


def test_analyser_noise_at_a_limit_does_not_become_a_feed() -> None:
    """Little demand (the output's steady state is near its 0 limit) and a noisy analyser
    (0.22 g/L, the soft sensor's RMSECV): the output must not rectify the noise into a net
    feed that drives glucose above the setpoint."""
    rng = random.Random(7)
    loop = PiLoop(tuning(kp=10.0, ti_h=8.0, filter_h=1.5), output=0.0, wall_s=0.0)
    loop.auto(0.0)
    plant = Plant(glucose=4.0, uptake=0.01)  # needs 0.2 on average
    glucose = []
    for i in range(4000):  # 200 process hours
        wall, t_h = i * DT_S, i * DT_H
        move = loop.measure(plant.glucose + rng.gauss(0.0, 0.22), True, t_h, wall)
        if move.output is not None:
            loop.written(move.output, wall)
        plant.step(loop.output)
        glucose.append(plant.glucose)
    late = glucose[1000:]
    assert abs(sum(late) / len(late) - 4.0) < 0.15
    assert max(late) < 4.5


def test_a_write_cut_short_does_not_block_the_loop() -> None:
    """A move asked for but never written (a mode change, the task stopped) must not leave the
    loop waiting for its outcome forever."""
    for cut in ("mode", "abandon"):
        loop = PiLoop(tuning(), output=3.0, wall_s=0.0)
        loop.auto(0.0)
        assert loop.measure(2.0, True, 0.0, 10.0).output is not None
        if cut == "mode":
            loop.manual()
            loop.auto(20.0)
        else:
            loop.abandon()
        moves = [loop.measure(2.0, True, 0.1 * k, 20.0 + 2 * k) for k in (1, 2)]
        assert any(m.output is not None for m in moves), cut
