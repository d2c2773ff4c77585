"""Gradual faults of the emulators (issue 14) and the controller's batch clock, over the real
transports: the pump on Modbus TCP, the controller on OPC UA, the spectrometer on a
pseudo-terminal; loopback only.

Each fault is checked where it shows: what the instrument *reports* stays as it was, while the
truth (the volume the culture received, the true pH, the band intensity) parts from it at the
stated rate, counted in process hours.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Client, ua
from conftest import running, wait_for, write_config
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient

# empty_hub (autouse): each test starts with no process registered and leaves none behind.
from test_bioreactor_controller import (
    connected,
    empty_hub,  # noqa: F401
    emulator,
    node,
)
from test_feed_pump_emulator import f32, f64, make_client, poll_registers, read_all
from test_opcua_driver_emulator import instrument as opcua_instrument
from test_processor_acting import Plugin as ActingPlugin
from test_raman_emulator import GET_SPECTRUM, open_port, request
from test_raman_emulator import Client as ObpClient

from firmware_stubs.bioreactor import FedBatchModel, ProcessParams
from firmware_stubs.bioreactor.plugin import BioreactorEmulator, BioreactorOptions
from firmware_stubs.feed_pump import Fault as PumpFault
from firmware_stubs.feed_pump import FeedPumpEmulator, PumpModel
from firmware_stubs.feed_pump.plugin import FeedPumpOptions, _build
from firmware_stubs.raman import Composition, RamanEmulator
from firmware_stubs.raman import Fault as RamanFault
from firmware_stubs.raman.plugin import RamanOptions, factory
from firmware_stubs.raman.spectrum import SpectrumSynthesizer
from firmware_stubs.schedule import Ramp
from gateway import PluginContext, build_registry, load_plan

RUNNING = 10


class FakeHours:
    """A time base the test moves by hand: process hours that stand still while it measures."""

    def __init__(self, hours: float = 0.0) -> None:
        self.hours = hours

    def __call__(self) -> float:
        return self.hours


async def write(client: AsyncModbusTcpClient, address: int, words: list[int]) -> None:
    response = await client.write_registers(address, words, device_id=1)
    assert not response.isError(), response


async def pump_stopped_total(client: AsyncModbusTcpClient) -> float:
    """Stop the pump, wait until its head stands still, and return its total_volume."""
    await write(client, RUNNING, [0])
    words = await poll_registers(client, lambda w: f32(w, 2) == 0.0)
    return f64(words, 6)


async def pump_some(client: AsyncModbusTcpClient, ml: float) -> None:
    """Run the pump until it reports ``ml`` more millilitres, at full speed."""
    start = f64(await read_all(client), 6)
    await write(client, RUNNING, [1])
    await poll_registers(client, lambda w: f64(w, 6) >= start + ml and f32(w, 2) == f32(w, 0))


# --------------------------------------------------------------------------- the ramp


def test_a_ramp_grows_at_its_rate_up_to_its_limit_and_averages_exactly() -> None:
    ramp = Ramp(rate_per_h=0.1, limit=0.3, onset_h=2.0)
    assert [ramp.at(h) for h in (0.0, 2.0, 3.0, 5.0, 50.0)] == pytest.approx(
        [0.0, 0.0, 0.1, 0.3, 0.3]
    )
    assert ramp.mean(2.0, 4.0) == pytest.approx(0.1)  # linear part
    assert ramp.mean(4.0, 6.0) == pytest.approx((0.25 + 0.3) / 2)  # reaches the cap at 5 h
    assert ramp.mean(0.0, 2.0) == 0.0
    for bad in ({"rate_per_h": 0.0}, {"limit": float("nan")}, {"rate_per_h": -0.1}):
        with pytest.raises(ValueError, match="must be"):
            Ramp(**{"rate_per_h": 0.1, "limit": 0.3, "onset_h": 0.0, **bad})


# --------------------------------------------------------------------------- tubing wear


@pytest.mark.asyncio
async def test_tubing_wear_reduces_the_delivery_at_its_rate_while_the_pump_reports_it_whole() -> (
    None
):
    hours = FakeHours(10.0)
    received: list[float] = []
    # 240 mL/min, a head that reaches its speed in 0.3 s: millilitres within a second.
    model = PumpModel(setpoint_rpm=300.0, actual_rpm=300.0, ramp_rpm_per_s=1000.0)
    pump = FeedPumpEmulator(port=0, model=model, on_delivered=received.append)
    pump.hours = hours
    async with pump:
        client = make_client(pump.port)
        await client.connect()
        try:
            await pump_stopped_total(client)
            pump.inject(PumpFault.TUBING_WEAR, rate_per_h=0.05, max_loss=0.5)
            for at_h, loss in ((12.0, 0.1), (16.0, 0.3), (40.0, 0.5)):
                hours.hours = at_h  # process time jumps while the pump stands still
                reported_before = f64(await read_all(client), 6)
                true_before = sum(received)
                await pump_some(client, 2.0)
                words = await read_all(client)
                # What the pump reports is perfect: the speed follows the setpoint, the flow
                # is speed times the calibration.
                assert f32(words, 2) == pytest.approx(300.0)
                assert f32(words, 4) == pytest.approx(300.0 * 0.8)
                reported = await pump_stopped_total(client) - reported_before
                delivered = sum(received) - true_before
                assert delivered == pytest.approx(reported * (1.0 - loss), rel=1e-9), at_h
            assert pump.delivered_ml == pytest.approx(sum(received), rel=1e-12)

            pump.clear(PumpFault.TUBING_WEAR)  # new tubing
            reported_before, true_before = f64(await read_all(client), 6), sum(received)
            await pump_some(client, 1.0)
            reported = await pump_stopped_total(client) - reported_before
            assert sum(received) - true_before == pytest.approx(reported, rel=1e-9)
        finally:
            client.close()


@pytest.mark.asyncio
async def test_scheduled_tubing_wear_counts_process_hours_and_feed_total_shows_the_truth() -> None:
    """Linked to a process at 3600x, a wear of 20 %/process hour reaches its 30 % cap within
    seconds (per wall hour it would be 0.006 % in that time): the controller's Pumps.FeedTotal
    (OPC UA) then grows by 70 % of the pump's own total_volume (Modbus)."""
    reactor = emulator(time_scale=3600)
    options = FeedPumpOptions.model_validate(
        {
            "port": 0,
            "setpoint_rpm": 100,
            "process": "reactor",
            "faults": [{"fault": "tubing_wear", "after_s": 0, "rate_per_h": 0.2, "max_loss": 0.3}],
        }
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(reactor)
        pump = await stack.enter_async_context(_build(options, PluginContext("pump", Path())))
        client, ns = await stack.enter_async_context(connected(reactor.endpoint))
        modbus = make_client(pump.port)
        await modbus.connect()
        stack.callback(modbus.close)
        age = node(client, ns, "Batch.Age")
        start = await age.read_value()
        await wait_for_node(client, ns, "Batch.Age", lambda a: a > start + 2.0)  # past the cap

        async def totals() -> tuple[float, float]:
            reported = await pump_stopped_total(modbus)
            # A controller update after the pump stood still has every millilitre it gave.
            now = await age.read_value()
            await wait_for_node(client, ns, "Batch.Age", lambda a: a > now)
            return reported, await node(client, ns, "Pumps.FeedTotal").read_value()

        reported_1, true_1 = await totals()
        assert true_1 < reported_1 * 0.9  # the culture got less than the pump says it gave
        await pump_some(modbus, 1.5)
        reported_2, true_2 = await totals()
        assert true_2 - true_1 == pytest.approx((reported_2 - reported_1) * 0.7, rel=1e-6)


async def wait_for_node(
    client: Client, ns: int, path: str, ok: Callable[[Any], bool], within: float = 10.0
) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await node(client, ns, path).read_value()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{path} = {value!r} after {within} s")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- pH probe drift


async def same_update(client: Client, ns: int, paths: list[str]) -> list[float]:
    """Values of ``paths`` from one controller update (equal source timestamps)."""
    nodes = [node(client, ns, p) for p in paths]
    for _ in range(100):
        values = await client.read_attributes(nodes, ua.AttributeIds.Value)
        if len({dv.SourceTimestamp for dv in values}) == 1:
            return [dv.Value.Value for dv in values]
    pytest.fail(f"no consistent read of {paths}")


@pytest.mark.asyncio
async def test_ph_probe_drift_moves_the_measured_ph_from_the_truth_at_its_rate() -> None:
    rate = 0.04
    reactor = emulator(
        time_scale=3600, faults=[{"fault": "ph_probe_drift", "after_s": 0, "rate_per_h": rate}]
    )
    paths = ["pH.PV", "Emulation.pH", "Batch.Age", "pH.SP"]
    async with reactor, connected(reactor.endpoint) as (client, ns):
        # The schedule starts once the controller serves: wait for the drift to begin.
        for _ in range(200):
            pv_1, true_1, age_1, _ = await same_update(client, ns, paths)
            if pv_1 != true_1:
                break
            await asyncio.sleep(0.02)
        await wait_for_node(client, ns, "Batch.Age", lambda a: a > age_1 + 4.0)
        pv_2, true_2, age_2, sp = await same_update(client, ns, paths)
    drift_1, drift_2 = pv_1 - true_1, pv_2 - true_2
    assert drift_2 > 0.15  # the probe reads high...
    assert (drift_2 - drift_1) / (age_2 - age_1) == pytest.approx(rate, rel=1e-3)
    # ...and the loop, holding the reading at its setpoint, pushed the true pH down.
    assert abs(pv_2 - sp) < 0.05
    assert true_2 < sp - 0.1


def test_a_drifting_probe_changes_the_base_the_loop_doses() -> None:
    """Same seed, same run: a probe reading 0.02 pH/h high makes the loop dose less base (it
    sees an alkaline broth), and the true pH ends below its setpoint by about the offset."""

    def run(drift: float) -> tuple[float, float, float]:
        model = FedBatchModel(ProcessParams(), seed=3)
        model.advance(24.0)
        if drift:
            model.set_ph_probe_drift(drift, limit=0.3)
        model.advance(48.0)
        s = model.state
        return s.base_added_mL, s.ph, s.ph_probe

    base_clean, ph_clean, probe_clean = run(0.0)
    base_drift, ph_drift, probe_drift = run(0.02)
    assert ph_clean == probe_clean
    assert probe_drift - ph_drift == pytest.approx(0.3)  # capped at its limit
    assert base_drift < base_clean - 1.0
    assert ph_drift < ph_clean - 0.2


# --------------------------------------------------------------------------- growth upset


async def specific_growth(reactor: BioreactorEmulator, hours: float) -> float:
    """ln(VCD) growth per process hour over ``hours``, from the controller's true VCD."""
    async with connected(reactor.endpoint) as (client, ns):
        vcd_1, age_1 = await same_update(client, ns, ["Emulation.ViableCellDensity", "Batch.Age"])
        await wait_for_node(client, ns, "Batch.Age", lambda a: a > age_1 + hours)
        vcd_2, age_2 = await same_update(client, ns, ["Emulation.ViableCellDensity", "Batch.Age"])
    return float(np.log(vcd_2 / vcd_1) / (age_2 - age_1))


@pytest.mark.asyncio
async def test_growth_upset_cuts_the_growth_rate_by_its_factor() -> None:
    upset = [{"fault": "growth_upset", "after_s": 0, "factor": 0.4}]
    async with emulator(time_scale=3600) as clean:
        mu_clean = await specific_growth(clean, 3.0)
    async with emulator(time_scale=3600, faults=upset) as sick:
        mu_sick = await specific_growth(sick, 3.0)
    kd = ProcessParams().kd_per_h  # death goes on as before; growth itself is cut
    assert mu_clean > 0.02
    assert (mu_sick + kd) / (mu_clean + kd) == pytest.approx(0.4, abs=0.03)


# --------------------------------------------------------------------------- laser decay


@asynccontextmanager
async def spectrometer(hours: FakeHours) -> AsyncIterator[tuple[RamanEmulator, ObpClient]]:
    raman = RamanEmulator(transport="pty", pixels=1024, seed=5)
    raman.hours = hours
    async with raman:
        raman.device.integration_us = 100_000
        port = await asyncio.to_thread(open_port, raman)
        try:
            yield raman, ObpClient(port)
        finally:
            await asyncio.to_thread(port.close)


async def spectrum(client: ObpClient) -> np.ndarray[Any, np.dtype[np.float64]]:
    reply = await asyncio.to_thread(client.query, request(GET_SPECTRUM), 5.0)
    return np.array(struct.unpack(f"<{len(reply.data) // 2}H", reply.data), dtype=np.float64)


@pytest.mark.asyncio
async def test_laser_decay_weakens_the_bands_at_its_rate_and_leaves_the_background() -> None:
    """Two spectrometers with the same seed, one with a decaying laser: their difference is the
    band spectrum times the loss (a constant aside: their detectors cool at their own pace)."""
    hours = FakeHours(100.0)
    async with spectrometer(hours) as (decaying, dec), spectrometer(hours) as (_, ref):
        decaying.inject(RamanFault.LASER_DECAY, rate_per_h=0.02, max_loss=0.5)
        composition = Composition()
        synth = SpectrumSynthesizer(decaying.device.shift_cm1)
        bands = synth.mean_counts(composition, 0.1, -10.0) - synth.mean_counts(
            composition, 0.1, -10.0, band_scale=0.0
        )
        for at_h, loss in ((100.0, 0.0), (110.0, 0.2), (130.0, 0.5), (200.0, 0.5)):
            hours.hours = at_h
            difference = await spectrum(dec) - await spectrum(ref)
            design = np.column_stack([np.ones_like(bands), -bands])
            (_, fitted), *_ = np.linalg.lstsq(design, difference, rcond=None)
            assert fitted == pytest.approx(loss, abs=0.005), at_h
        decaying.clear(RamanFault.LASER_DECAY)
        difference = await spectrum(dec) - await spectrum(ref)
        (_, fitted), *_ = np.linalg.lstsq(design, difference, rcond=None)
        assert fitted == pytest.approx(0.0, abs=0.005)


@pytest.mark.asyncio
async def test_a_linked_spectrometer_counts_process_hours() -> None:
    reactor = BioreactorEmulator(
        BioreactorOptions(time_scale=3600, log_every_s=0), PluginContext("reactor", Path())
    )
    options = RamanOptions(serial=True, process="reactor")
    async with reactor, factory(options, PluginContext("raman", Path())) as raman:
        before = reactor.clock.hours()
        linked = raman.emulator.hours()
        assert before <= linked <= reactor.clock.hours()


# --------------------------------------------------------------------------- the batch clock


@pytest.mark.asyncio
async def test_batch_age_is_process_hours_since_inoculation() -> None:
    reactor = emulator(time_scale=3600)
    async with reactor, connected(reactor.endpoint) as (client, ns):
        age = node(client, ns, "Batch.Age")
        first = await age.read_value()
        since = time.monotonic()
        assert 0.0 <= first <= reactor.clock.hours()
        later = await wait_for_node(client, ns, "Batch.Age", lambda a: a >= first + 2.0)
        # 3600 process s per wall s: 2 process hours cannot come in much less than 2 wall
        # seconds. The first reading may lag the clock by a controller update or more on a
        # loaded machine (0.08 s was seen under a CPU hog): 10 % of slack, still far from any
        # other time base (wall seconds would take an hour, process seconds a second).
        assert time.monotonic() - since >= 0.9 * (later - first) - 0.05
        eu = await (await age.get_child("0:EngineeringUnits")).read_value()
        assert (eu.UnitId, eu.DisplayName.Text) == (4740434, "h")


@pytest.mark.asyncio
async def test_a_processor_takes_batch_age_as_its_time_base(tmp_path: Path) -> None:
    """The gateway reads Batch.Age over OPC UA as a signal in hours, and a processor whose
    time_base names it counts process time from it, not from the gateway's start: the run is
    5 process hours old before the gateway starts."""
    reactor = emulator(time_scale=3600)
    async with reactor, connected(reactor.endpoint) as (client, ns):
        await wait_for_node(client, ns, "Batch.Age", lambda a: a > 5.0)
        node_cfg = {"name": "batch_age", "node": "dcu:BioreactorController.Batch.Age", "unit": "h"}
        document = {
            "area": "t",
            "data_dir": str(tmp_path / "data"),
            "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
            "instruments": [opcua_instrument("controller", reactor.controller.port, [node_cfg])],
            "processors": [
                {
                    "id": "actor",
                    "type": "actor",
                    "options": {"controls": []},
                    "time_base": {"time_scale": 3600, "age": "controller/batch_age"},
                }
            ],
        }
        registry = build_registry([ActingPlugin()])
        plan = load_plan(write_config(tmp_path / "g.yaml", document), registry)
        async with running(plan) as (gateway, _):
            runner = gateway.processors[0]

            def process_time_matches_the_run() -> bool:
                before = reactor.clock.hours()
                now = runner.process_time_h(time.time_ns())
                # Within a model step (10 process s) and a little wall-clock slack.
                return before - 0.02 <= now <= reactor.clock.hours() + 0.02

            await wait_for(process_time_matches_the_run, 10, what="process time from Batch.Age")
            assert runner.process_time_h(time.time_ns()) > 5.0


# --------------------------------------------------------------------------- bad schedules


@pytest.mark.parametrize(
    ("model", "raw", "message"),
    [
        (FeedPumpOptions, {"fault": "tubing_waer", "after_s": 0}, "tubing_wear"),
        (FeedPumpOptions, {"fault": "tubing_wear", "after_s": 0}, "needs rate_per_h"),
        (FeedPumpOptions, {"fault": "tubing_wear", "after_s": 0, "rate_per_h": 0}, "rate_per_h"),
        (FeedPumpOptions, {"fault": "tubing_wear", "after_s": 0, "rate_per_h": 2}, "rate_per_h"),
        (FeedPumpOptions, {"fault": "tubing_wear", "after_s": 0, "rate_per_h": "nan"}, "rate"),
        (FeedPumpOptions, {"fault": "stall", "after_s": 0, "rate_per_h": 0.1}, "only to fault"),
        (BioreactorOptions, {"fault": "ph_drift", "after_s": 0}, "ph_probe_drift"),
        (BioreactorOptions, {"fault": "ph_probe_drift", "after_s": 0}, "needs rate_per_h"),
        (BioreactorOptions, {"fault": "ph_probe_drift", "after_s": 0, "rate_per_h": 0}, "not 0"),
        (BioreactorOptions, {"fault": "ph_probe_drift", "after_s": 0, "rate_per_h": 5}, "rate"),
        (BioreactorOptions, {"fault": "growth_upset", "after_s": 0, "factor": 1.5}, "factor"),
        (BioreactorOptions, {"fault": "frozen", "after_s": 0, "factor": 0.5}, "only to fault"),
        (RamanOptions, {"fault": "laser_decay", "after_s": 0}, "needs rate_per_h"),
        (RamanOptions, {"fault": "laser_decay", "after_s": 0, "rate_per_h": -1}, "rate_per_h"),
        (RamanOptions, {"fault": "laser_dacay", "after_s": 0, "rate_per_h": 0.1}, "laser_decay"),
    ],
)
def test_bad_fault_schedules_are_clear_validation_errors(
    model: type[FeedPumpOptions | BioreactorOptions | RamanOptions],
    raw: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ValidationError) as err:
        model.model_validate({"faults": [raw]})
    assert message in str(err.value)
    assert "faults.0" in str(err.value)  # the path to the bad step


def test_process_faults_need_no_controller_but_controller_faults_do() -> None:
    BioreactorOptions.model_validate({"faults": [{"fault": "growth_upset", "after_s": 1}]})
    with pytest.raises(ValidationError, match="fault frozen acts on the OPC UA controller"):
        BioreactorOptions.model_validate({"faults": [{"fault": "frozen", "after_s": 1}]})
