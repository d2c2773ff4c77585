"""The Modbus driver against the emulated feed pump, over loopback TCP, inside a real runtime."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from conftest import plan_for, pump_instrument, running, wait_for

from firmware_stubs.feed_pump import Fault, FeedPumpEmulator, PumpModel
from gateway import ConfigError, Quality, WriteRefusedError
from gateway.runtime import Gateway
from gateway.store import SampleStore


def latest(gateway: Gateway, signal_id: str) -> tuple | None:
    for output in gateway.outputs:
        if output.signal.id == signal_id:
            return output.latest
    raise KeyError(signal_id)


def quality_of(gateway: Gateway, signal_id: str) -> Quality | None:
    row = latest(gateway, signal_id)
    return None if row is None else Quality(row[4])


def stored(tmp_path: Path, glob: str | None = None) -> list:
    store = SampleStore(tmp_path / "store.sqlite")
    try:
        return list(store.samples(glob))
    finally:
        store.close()


def assert_contiguous(samples: list) -> None:
    by_signal: dict[str, list[int]] = {}
    for s in samples:
        by_signal.setdefault(s.signal, []).append(s.seq)
    for signal, seqs in by_signal.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap in {signal}"


@pytest.mark.asyncio
async def test_reads_pump_with_units_and_conversion(tmp_path: Path) -> None:
    model = PumpModel(setpoint_rpm=75.0, actual_rpm=75.0, ml_per_rev=0.8)
    async with FeedPumpEmulator(model=model) as pump:
        signals = [
            {"id": "flow", "unit": "mL/min"},
            {"id": "flow_lph", "channel": "flow", "unit": "L/h"},
            {"id": "total_volume"},
            {"id": "running"},
        ]
        plan = plan_for(
            tmp_path, instruments=[pump_instrument("feed_pump", pump.port, signals=signals)]
        )
        async with running(plan) as (gateway, _):
            await wait_for(lambda: gateway.stats.committed >= 40, what="40 committed samples")
            flow = latest(gateway, "reactor1/feed_pump/flow")
            flow_lph = latest(gateway, "reactor1/feed_pump/flow_lph")
    assert flow is not None and flow_lph is not None
    assert flow[5] == pytest.approx(60.0, rel=1e-6)  # 75 rpm * 0.8 mL/rev
    assert flow_lph[5] == pytest.approx(3.6, rel=1e-6)  # 60 mL/min = 3.6 L/h
    samples = stored(tmp_path)
    units = {s.signal: s.unit for s in samples}
    assert units == {
        "reactor1/feed_pump/flow": "mL/min",
        "reactor1/feed_pump/flow_lph": "L/h",
        "reactor1/feed_pump/total_volume": "mL",
        "reactor1/feed_pump/running": "1",
    }
    assert all(s.quality is Quality.GOOD for s in samples)
    assert {s.value for s in samples if s.signal.endswith("/running")} == {1}
    volumes = [s.value for s in samples if s.signal.endswith("/total_volume")]
    assert volumes == sorted(volumes) and volumes[-1] > volumes[0]
    assert_contiguous(samples)
    # One poll reads all registers in one request, so a poll's samples share one source time.
    by_seq = {}
    for s in samples:
        by_seq.setdefault(s.seq, set()).add(s.source_ts)
    assert all(len(ts) == 1 for ts in by_seq.values())


@pytest.mark.asyncio
async def test_emulator_killed_and_restarted_other_instrument_unaffected(tmp_path: Path) -> None:
    flaky, steady = FeedPumpEmulator(), FeedPumpEmulator()
    await flaky.start()
    await steady.start()
    try:
        plan = plan_for(
            tmp_path,
            instruments=[
                pump_instrument("flaky", flaky.port, signals=[{"id": "flow"}]),
                pump_instrument("steady", steady.port, signals=[{"id": "flow"}]),
            ],
        )
        async with running(plan) as (gateway, _):
            flaky_runner = next(r for r in gateway.runners if r.instrument_id == "flaky")
            await wait_for(lambda: quality_of(gateway, "reactor1/flaky/flow") is Quality.GOOD)
            await flaky.stop()
            outage_started = time.monotonic()
            await wait_for(
                lambda: quality_of(gateway, "reactor1/flaky/flow") is Quality.BAD,
                what="flaky flow bad",
            )
            steady_seq_at_outage = latest(gateway, "reactor1/steady/flow")[1]
            await wait_for(
                lambda: latest(gateway, "reactor1/steady/flow")[1] >= steady_seq_at_outage + 10,
                what="steady keeps publishing during the outage",
            )
            assert quality_of(gateway, "reactor1/steady/flow") is Quality.GOOD
            assert quality_of(gateway, "reactor1/flaky/flow") is Quality.BAD
            outage = time.monotonic() - outage_started
            await flaky.start()
            await wait_for(
                lambda: quality_of(gateway, "reactor1/flaky/flow") is Quality.GOOD,
                what="flaky flow good again",
            )
            assert flaky_runner.sessions == 2
            # One reconnect loop with backoff (initial 0.05 s, max 0.2 s, jitter 0.5): delays
            # of at least 0.025, 0.05, 0.1 s and then 0.1 s each bound the attempts — no storm.
            assert 1 <= flaky_runner.failures <= 4 + outage / 0.1
    finally:
        await flaky.stop()
        await steady.stop()
    samples = stored(tmp_path)
    flaky_samples = [s for s in samples if s.signal == "reactor1/flaky/flow"]
    bad = [s for s in flaky_samples if s.quality is Quality.BAD]
    assert bad and all(s.value is None and s.reason.startswith("unreachable:") for s in bad)
    # good → bad → good, in that order
    qualities = [s.quality for s in flaky_samples]
    first_bad = qualities.index(Quality.BAD)
    assert Quality.GOOD in qualities[:first_bad] and Quality.GOOD in qualities[first_bad:]
    steady_samples = [s for s in samples if s.signal == "reactor1/steady/flow"]
    assert all(s.quality is Quality.GOOD for s in steady_samples)
    assert_contiguous(samples)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault.EXCEPTION_RESPONSES, "exception 4 (device failure)"),
        (Fault.STALL, "unreachable:"),
        (Fault.DROP_CONNECTIONS, None),
    ],
)
async def test_faults_go_bad_and_recover(tmp_path: Path, fault: Fault, reason: str | None) -> None:
    async with FeedPumpEmulator() as pump:
        plan = plan_for(
            tmp_path, instruments=[pump_instrument("p", pump.port, signals=[{"id": "flow"}])]
        )
        async with running(plan) as (gateway, _):
            runner = gateway.runners[0]
            await wait_for(lambda: quality_of(gateway, "reactor1/p/flow") is Quality.GOOD)
            pump.inject(fault)
            if fault is Fault.DROP_CONNECTIONS:
                # A dropped connection is a fault of the moment: the driver notices, reconnects.
                await wait_for(lambda: runner.sessions >= 2, what="a second session")
            else:
                await wait_for(lambda: quality_of(gateway, "reactor1/p/flow") is Quality.BAD)
                row = latest(gateway, "reactor1/p/flow")
                assert row[6].startswith(reason)
                pump.clear_faults()
            await wait_for(
                lambda: quality_of(gateway, "reactor1/p/flow") is Quality.GOOD, what="recovery"
            )
    assert_contiguous(stored(tmp_path))


@pytest.mark.asyncio
async def test_pump_fault_code_and_setpoint_write(tmp_path: Path) -> None:
    async with FeedPumpEmulator() as pump:
        plan = plan_for(tmp_path, instruments=[pump_instrument("p", pump.port)])
        async with running(plan) as (gateway, _):
            driver = plan.instruments[0].driver
            await wait_for(lambda: quality_of(gateway, "reactor1/p/flow") is Quality.GOOD)
            await driver.write("speed_setpoint", 120.0)
            assert pump.model.setpoint_rpm == pytest.approx(120.0)
            await wait_for(
                lambda: math.isclose(latest(gateway, "reactor1/p/speed")[5], 120.0, rel_tol=1e-6),
                what="speed ramps to the new setpoint",
            )
            with pytest.raises(WriteRefusedError):
                await driver.write("flow", 1.0)
            assert pump.model.setpoint_rpm == pytest.approx(120.0)
            pump.inject(Fault.PUMP_FAULT)
            await wait_for(lambda: latest(gateway, "reactor1/p/fault_code")[5] == 1)
            await wait_for(lambda: latest(gateway, "reactor1/p/flow")[5] == 0.0, what="pump stops")


@pytest.mark.asyncio
async def test_sequence_continues_across_gateway_restarts(tmp_path: Path) -> None:
    async with FeedPumpEmulator() as pump:
        plan = plan_for(
            tmp_path, instruments=[pump_instrument("p", pump.port, signals=[{"id": "flow"}])]
        )
        for _ in range(3):
            async with running(plan) as (gateway, _):
                before = gateway.outputs[0].seq
                await wait_for(lambda b=before: gateway.outputs[0].seq >= b + 5)
    samples = stored(tmp_path)
    assert [s.seq for s in samples] == list(range(len(samples)))
    assert len(samples) >= 15


@pytest.mark.asyncio
async def test_rtu_over_pyserial_socket_url(tmp_path: Path) -> None:
    """The RTU transport, through pyserial's socket:// URL to an RTU-framed emulator."""
    model = PumpModel(setpoint_rpm=100.0, actual_rpm=100.0, ml_per_rev=0.5)
    async with FeedPumpEmulator(model=model, framing="rtu") as pump:
        instrument = pump_instrument("rtu_pump", pump.port, signals=[{"id": "flow"}])
        instrument["options"] = {
            "transport": "rtu",
            "serial_port": f"socket://127.0.0.1:{pump.port}",
            "baudrate": 19200,
            "profile": "feed_pump",
            "timeout_s": 0.5,
        }
        plan = plan_for(tmp_path, instruments=[instrument])
        async with running(plan) as (gateway, _):
            await wait_for(lambda: quality_of(gateway, "reactor1/rtu_pump/flow") is Quality.GOOD)
            assert latest(gateway, "reactor1/rtu_pump/flow")[5] == pytest.approx(50.0)


@pytest.mark.asyncio
async def test_status_register_drives_quality(tmp_path: Path) -> None:
    """An inline register map: flow's quality follows the pump's fault-code register bits."""
    registers = [
        {
            "name": "flow",
            "address": 4,
            "type": "float32",
            "unit": "mL/min",
            "status": {"status_register": "fault", "bad_mask": 1},
        },
        {"name": "fault", "address": 11, "type": "uint16"},
    ]
    async with FeedPumpEmulator() as pump:
        instrument = pump_instrument("p", pump.port, signals=[{"id": "flow"}])
        instrument["options"] = {"port": pump.port, "registers": registers, "timeout_s": 0.3}
        plan = plan_for(tmp_path, instruments=[instrument])
        async with running(plan) as (gateway, _):
            await wait_for(lambda: quality_of(gateway, "reactor1/p/flow") is Quality.GOOD)
            pump.inject(Fault.PUMP_FAULT)
            await wait_for(lambda: quality_of(gateway, "reactor1/p/flow") is Quality.BAD)
            assert latest(gateway, "reactor1/p/flow")[6] == "status 0x01"


def test_misspelt_status_register_is_a_config_error(tmp_path: Path) -> None:
    registers = [
        {"name": "flow", "address": 4, "type": "float32", "status": {"status_register": "flt"}},
        {"name": "fault", "address": 11},
    ]
    instrument = pump_instrument("p", 502)
    instrument["options"] = {"registers": registers}
    with pytest.raises(ConfigError) as caught:
        plan_for(tmp_path, instruments=[instrument])
    assert caught.value.problems == (
        "instruments[0].options: register 'flow': status_register 'flt' is not a register of"
        " this map",
    )
