"""gateway.testing, the kit for plugin authors: what it records is what the runtime does (its own
outputs and instrument runner), its gateway run commits to a real store, its emulators serve on
the port they bound. (The kit's fixtures come from the pytest11 entry point, as for a vendor.)"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import pump_instrument

from gateway import (
    Channel,
    ConfigError,
    InstrumentError,
    InstrumentIO,
    Quality,
    build_registry,
)
from gateway.testing import GatewayRun, RecordingIO, RunningEmulator


class Scripted:
    """A driver publishing what a test scripts, failing its first session if told."""

    def __init__(self, readings: Sequence[dict[str, Any]], fail_first: str | None = None) -> None:
        self.readings = readings
        self.fail_first = fail_first
        self.sessions = 0

    def channels(self) -> Sequence[Channel]:
        return [Channel("mass", "g")]

    async def run(self, io: InstrumentIO) -> None:
        self.sessions += 1
        if self.sessions == 1 and self.fail_first:
            raise InstrumentError(self.fail_first)
        io.connected()
        for reading in self.readings:
            io.output("mass").publish(**reading)
        await asyncio.Event().wait()  # until cancelled


@pytest.mark.asyncio
async def test_recording_io_checks_and_converts_as_the_runtime_does() -> None:
    readings = [
        {"value": 1.5},
        {"value": math.nan},
        {"value": 2.0, "source_ts": 1_700_000_000},  # seconds, not nanoseconds
        {"value": 3.0, "quality": "nonsense"},
        {"value": [1, 2]},
    ]
    driver = Scripted(readings)
    signals = [
        {"id": "mass", "unit": "mg"},
        {"id": "mass_kg", "channel": "mass", "unit": "kg"},
        {"id": "mass_g", "channel": "mass"},  # no conversion: the store refuses the list
    ]
    io = RecordingIO(driver, "scale", signals=signals)
    async with io.running():
        await io.wait_for_samples("mass", len(readings))
    mass = io.samples("test/scale/mass")
    assert [s.value for s in mass] == [1500.0, None, 2000.0, 3000.0, None]
    assert [s.quality for s in mass] == [Quality.GOOD] + [Quality.BAD] * 4
    assert [s.reason for s in mass] == [
        None,
        "non-finite value nan",
        "invalid source timestamp 1700000000",
        "invalid quality 'nonsense'",
        # Converted first (g -> mg), as the runtime's output does: its error is the reason.
        "cannot convert [1, 2]: can't multiply sequence by non-int of type 'float'",
    ]
    assert [s.seq for s in mass] == [0, 1, 2, 3, 4] and {s.unit for s in mass} == {"mg"}
    assert io.values("mass_kg")[0] == 0.0015
    assert io.samples("mass_g")[-1].reason == "unstorable value of type list: [1, 2]"
    assert len(io.samples("mass")) == 3 * len(readings)  # the channel feeds three signals
    assert io.events == [("connected", None)]


@pytest.mark.asyncio
async def test_recording_io_supervises_the_driver_as_the_runtime_does() -> None:
    driver = Scripted([{"value": 7.0}], fail_first="no answer from the scale")
    io = RecordingIO(driver, "scale")
    async with io.running():
        await io.wait_for_events("down", "connected")
        await io.wait_for_samples("mass", 2)
    assert io.events[:2] == [("down", "unreachable: no answer from the scale"), ("connected", None)]
    bad, good = io.samples("mass")[:2]
    assert (bad.value, bad.quality, bad.reason) == (
        None,
        Quality.BAD,
        "unreachable: no answer from the scale",
    )
    assert (good.value, good.quality, good.seq) == (7.0, Quality.GOOD, 1)
    assert io.connects == 1 and driver.sessions == 2


@pytest.mark.asyncio
async def test_an_emulator_by_type_on_the_port_it_bound_and_a_gateway_run(
    tmp_path: Path, start_emulator: Any, run_gateway: Any
) -> None:
    async with start_emulator("feed_pump", setpoint_rpm=60) as pump:
        assert isinstance(pump, RunningEmulator)
        assert pump.port and pump.endpoint == f"127.0.0.1:{pump.port}"
        config = {
            "instruments": [pump_instrument("feed_pump", pump.port)],
            "sinks": [
                {"id": "live", "type": "recording"},
                {"id": "stored", "type": "recording", "options": {"store_and_forward": True}},
            ],
        }
        run = run_gateway(config)
        assert isinstance(run, GatewayRun)
        async with run:
            await run.wait_for_samples("test/feed_pump/speed", 3)
    assert run.summary is not None and run.summary.committed >= 3
    committed = run.samples("test/feed_pump/speed")
    assert len(committed) >= 3 and committed[0].value == 60.0
    for sink in ("live", "stored"):
        delivered = run.sink(sink).of("test/feed_pump/speed")
        assert [s.seq for s in delivered] == [s.seq for s in committed], sink
    stored = run.sink("stored")
    assert stored.entered and stored.exited and not any(stored.historical)  # type: ignore[attr-defined]
    assert {s.id for s in run.sink("live").bound} >= {"test/feed_pump/speed"}


@pytest.mark.asyncio
async def test_an_unknown_emulator_or_a_bad_option_is_named(tmp_path: Path) -> None:
    registry = build_registry()
    with pytest.raises(ConfigError, match=r"unknown emulator 'nope' \(known: .*feed_pump"):
        async with RunningEmulator("nope", registry=registry):
            pass
    with pytest.raises(ConfigError, match=r"setpoint_rpm: Input should be less than or equal"):
        async with RunningEmulator("feed_pump", {"setpoint_rpm": 999}, registry=registry):
            pass
