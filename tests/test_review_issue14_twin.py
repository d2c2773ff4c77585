"""Issue 14's review of the digital twin: a base counter that restarts, and a sample stamped
in the future (both failed before the fix in plugins/twin/processor.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from test_twin import _IO, HOUR_NS, bound_twin

from gateway import Quality, Sample


def test_a_base_counter_restart_does_not_make_the_base_residual_jump(tmp_path: Path) -> None:
    twin = bound_twin(tmp_path)
    io = _IO()

    def feed(signal: str, value: Any, hour: float) -> None:
        ts = round(hour * HOUR_NS)
        twin.process(Sample(signal, value, "", ts, ts, Quality.GOOD, 0), io)

    feed("r/pump/total", 0.0, 0.0)
    feed("r/c/base", 30.0, 0.0)
    feed("r/ss/glucose", 6.0, 0.5)
    feed("r/c/base", 40.0, 1.0)  # 10 mL of base used since the twin started
    feed("r/c/base", 0.0, 1.5)  # the controller restarted: its counter counts from 0 again
    feed("r/c/base", 2.0, 2.0)  # 2 mL more: 12 mL in all
    feed("r/ss/glucose", 5.9, 2.0)
    last = {p[0]: p for p in io.published}
    assert last["base_residual"][1] == pytest.approx(12.0 - twin.estimator.expected_base_mL)


class _ScaledIO(_IO):
    """Process time at 1440x from a start, as the demo's time base gives it."""

    def __init__(self, start_ns: int) -> None:
        super().__init__()
        self.start_ns = start_ns

    def process_time_h(self, ts_ns: int) -> float:
        return (ts_ns - self.start_ns) * 1440 / HOUR_NS


def test_a_sample_from_the_future_does_not_freeze_the_twin(tmp_path: Path) -> None:
    twin = bound_twin(tmp_path)
    now = time.time_ns()
    io = _ScaledIO(now)

    def feed(signal: str, value: Any, ts: int) -> None:
        twin.process(Sample(signal, value, "", ts, time.time_ns(), Quality.GOOD, 0), io)

    feed("r/pump/total", 0.0, now)
    feed("r/ss/glucose", 6.0, now)
    feed("r/ss/glucose", 6.0, now + HOUR_NS)  # stamped an hour (1440 process hours) ahead
    feed("r/ss/glucose", 5.9, time.time_ns())
    assert twin.estimator.time_h < 24.0, twin.estimator.time_h
