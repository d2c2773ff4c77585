"""The ``moving_average`` processor: its bind refuses what does not suit (no gateway needed),
and in a whole gateway each input sample gives one average, converted to the unit asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import RampPlugin
from plant_extras.moving_average import MovingAverage, MovingAverageOptions

from gateway import PluginContext, Quality, Signal, SignalKind


def average(**options: Any) -> MovingAverage:
    validated = MovingAverageOptions.model_validate({"input": "pump/flow", **options})
    return MovingAverage(validated, PluginContext("avg", Path(".")))


def test_bind_refuses_a_spectrum_and_an_incompatible_unit() -> None:
    processor = average(unit="L/h")
    with pytest.raises(ValueError, match="a scalar is needed"):
        processor.bind({"pump/flow": Signal("lab/pump/flow", "{counts}", SignalKind.SPECTRUM)})
    with pytest.raises(ValueError, match="lab/pump/flow: cannot convert"):
        processor.bind({"pump/flow": Signal("lab/pump/flow", "g")})
    processor.bind({"pump/flow": Signal("lab/pump/flow", "mL/min")})
    assert [(c.name, c.unit) for c in processor.channels()] == [("average", "L/h")]


async def test_each_input_gives_its_average_in_the_unit_asked_for(
    run_gateway: Any,
) -> None:
    config = {
        "instruments": [
            {"id": "pump", "driver": "ramp", "poll_interval_s": 0.02, "options": {"bad_from": 7}}
        ],
        "processors": [
            {
                "id": "avg",
                "type": "moving_average",
                "options": {"input": "pump/flow", "window": 3, "unit": "L/h"},
            }
        ],
    }
    async with run_gateway(config, plugins=[RampPlugin()]) as run:
        await run.wait_for_samples("test/avg/average", 8)
    inputs = run.samples("test/pump/flow")
    averages = run.samples("test/avg/average")[:8]
    assert [a.source_ts for a in averages] == [i.source_ts for i in inputs[:8]]
    # 1, 2, 3... mL/min is 0.06, 0.12, 0.18... L/h; the mean of the last three.
    expected = [0.06, 0.09, 0.12, 0.18, 0.24, 0.30]
    assert [a.value for a in averages[:6]] == pytest.approx(expected)
    assert [a.quality for a in averages[:6]] == [Quality.UNCERTAIN] * 2 + [Quality.GOOD] * 4
    assert averages[0].reason == "1 of 3 values so far"
    assert {a.unit for a in averages} == {"L/h"}
    # From 7 mL/min on the input is bad: so is the average, saying why.
    assert (averages[6].value, averages[6].quality) == (None, Quality.BAD)
    assert averages[6].reason == "input not good: sensor fault"
