"""Per-signal checks and the alarm state machine of the ``anomaly`` plugin, on synthetic series."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.anomaly.checks import Alarm, AlarmState, Drift, Frozen, Level, Relative, Spike


def _first_over(detector: Frozen | Spike | Drift | Level, series: np.ndarray) -> int | None:
    for index, value in enumerate(series.tolist()):
        if detector.update(value) > 1.0:
            return index
    return None


def test_frozen_flags_a_stuck_value_and_not_a_live_one() -> None:
    rng = np.random.default_rng(1)
    live = 7.0 + rng.normal(0, 0.01, 500)
    assert _first_over(Frozen(points=10, tolerance=1e-4), live) is None
    stuck = np.r_[live[:100], np.full(50, live[99])]
    # The value held from index 99: the 10th equal value (index 108) is the first over.
    assert _first_over(Frozen(points=10, tolerance=1e-4), stuck) == 108


def test_spike_hampel_flags_one_outlier_and_is_not_widened_by_it() -> None:
    rng = np.random.default_rng(2)
    series = 40.0 + rng.normal(0, 0.5, 300)
    assert _first_over(Spike(window=15, n_sigmas=5.0), series) is None
    series[150] += 10.0
    series[152] += 10.0
    spike = Spike(window=15, n_sigmas=5.0)
    over = [i for i, v in enumerate(series.tolist()) if spike.update(v) > 1.0]
    assert over == [150, 152]
    assert "spike" in spike.describe(float(series[152]))


def test_drift_cusum_sees_a_slow_ramp_while_it_is_under_one_sd() -> None:
    rng = np.random.default_rng(3)
    hours = np.arange(0, 200, 0.1)
    noise = rng.normal(0, 1.0, len(hours))
    assert _first_over(Drift(0.0, 1.0, k=0.5, h=10.0), noise) is None
    ramp = np.where(hours > 50, (hours - 50) * 0.02, 0.0)  # 1 sd after 50 h of drift
    detected = _first_over(Drift(0.0, 1.0, k=0.5, h=10.0, direction="low"), noise - ramp)
    assert detected is not None
    # Seen after the onset while the drift is still under 1 sd, where a 3-sigma point limit
    # would be crossed only by chance.
    assert 50 < hours[detected] < 100
    assert ramp[detected] < 1.0
    # The one-sided CUSUM ignores the other direction.
    assert _first_over(Drift(0.0, 1.0, k=0.5, h=10.0, direction="high"), noise - ramp) is None


def test_level_ratio_is_one_at_the_limit() -> None:
    level = Level(low=0.9)
    assert level.update(0.95) < 1.0
    assert level.update(0.89) > 1.0
    with pytest.raises(ValueError, match="low, high or both"):
        Level()


def test_alarm_needs_k_of_n_points_over() -> None:
    alarm = Alarm("a", severity=2, k=3, n=5)
    # Two isolated points over in every window of five: never raised.
    for ratio in [1.5, 0.5, 0.5, 1.5, 0.5, 0.5, 0.5, 1.5, 0.5, 0.5] * 5:
        assert alarm.update(ratio, 0) is None
    transitions = [alarm.update(r, 1, "cause") for r in (1.5, 0.5, 1.5, 0.5, 1.2)]
    assert [t.action if t else None for t in transitions] == [None, None, None, None, "raised"]
    assert alarm.active and alarm.value == 2 and alarm.reason == "cause"


def test_alarm_clears_with_hysteresis_only() -> None:
    alarm = Alarm("a", severity=3, k=2, n=3, clear_ratio=0.8, clear_points=4)
    alarm.update(2.0, 0, "x")
    assert alarm.update(2.0, 0, "x") is not None
    # Hovering just under the limit (above the clear ratio) never clears it.
    for _ in range(50):
        assert alarm.update(0.95, 0) is None
    assert alarm.active
    # Three points under the clear level, then one above it: the count restarts.
    for ratio in (0.5, 0.5, 0.5, 0.9, 0.5, 0.5, 0.5):
        assert alarm.update(ratio, 0) is None
    cleared = alarm.update(0.5, 0)
    assert cleared is not None and cleared.action == "cleared"
    assert alarm.value == 0
    assert alarm.state is AlarmState.CLEARED_UNACKED


def test_alarm_acknowledgement() -> None:
    alarm = Alarm("pump", severity=2, k=1, n=1, clear_points=1)
    with pytest.raises(ValueError, match="nothing to acknowledge"):
        alarm.acknowledge("op")
    alarm.update(2.0, 0, "feed_pump: worn")
    ack = alarm.acknowledge("op")
    assert ack.action == "acknowledged" and "op" in ack.reason and "feed_pump" in ack.reason
    assert alarm.active and alarm.status() == "active, acknowledged"
    with pytest.raises(ValueError, match="nothing to acknowledge"):
        alarm.acknowledge("op")
    # Cleared after acknowledgement: back to normal, nothing left to acknowledge.
    assert alarm.update(0.1, 0) is not None
    assert alarm.state is AlarmState.NORMAL
    # Raised again, cleared before anyone acknowledged: it waits for an acknowledgement.
    alarm.update(2.0, 0, "again")
    alarm.update(0.1, 0)
    assert alarm.state is AlarmState.CLEARED_UNACKED
    alarm.acknowledge("op")
    assert alarm.state is AlarmState.NORMAL


def test_relative_learns_its_start_then_flags_a_slow_fall_of_the_smoothed_value() -> None:
    """Noisy values (3.5 % per point, as a Raman reference band at 500 ms) every 0.1 h; from
    20 h they fall by 0.5 %/h. The start is the mean of the first 2 h; the smoothed value
    crosses 6 % below it a little after the loss does, never before."""
    rng = np.random.default_rng(3)
    check = Relative(0.06, baseline_h=2.0, smoothing_h=1.0)
    first = None
    for step in range(2000):
        hours = step * 0.1
        loss = max(0.0, 0.005 * (hours - 20.0))
        ratio = check.update_at(80.0 * (1 - loss) * (1 + rng.normal(0, 0.035)), hours)
        if hours < 2.0:
            assert ratio == 0.0 and check.reference is None
        if ratio > 1.0:
            first = hours
            break
    assert first is not None and check.reference == pytest.approx(80.0, rel=0.03)
    loss_at = 0.005 * (first - 20.0)
    assert 0.05 <= loss_at <= 0.09
    assert "below its start" in check.describe(0.0)


def test_relative_stays_quiet_on_noise_and_restarts_with_a_new_batch() -> None:
    rng = np.random.default_rng(4)
    check = Relative(0.06)
    ratios = [check.update_at(80.0 * (1 + rng.normal(0, 0.035)), s * 0.1) for s in range(2400)]
    assert max(ratios) < 0.5
    # A new batch (process time back to 0) at a tenth of the intensity: a new start, no alarm.
    assert check.update_at(8.0, 0.0) == 0.0 and check.reference is None
    ratios = [check.update_at(8.0 * (1 + rng.normal(0, 0.035)), s * 0.1) for s in range(1, 100)]
    assert max(ratios) < 0.5 and check.reference == pytest.approx(8.0, rel=0.03)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_drop": 0.0}, "max_drop"),
        ({"max_drop": 1.0}, "max_drop"),
        ({"max_drop": 0.1, "baseline_h": 0.0}, "baseline_h"),
        ({"max_drop": 0.1, "smoothing_h": -1.0}, "smoothing_h"),
        ({"max_drop": 0.1, "baseline_points": 0}, "baseline_points"),
    ],
)
def test_relative_refuses_nonsense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Relative(**kwargs)  # type: ignore[arg-type]
