"""The drivers' write capability (``WritableDriver``: ``write`` and ``read_back``) over real
transports: the Modbus driver against the emulated feed pump, the OPC UA driver against the
emulated bioreactor controller, each inside the real runtime while it polls or subscribes.

What a demanding user checks before trusting a gateway to touch a process: a written value reads
back from the device (not from the gateway's last sample) and the equipment follows it; a device
that clamps a setpoint reads back what it really took; a refusal, by the gateway or by the
device, says why and changes nothing; a write while the instrument is down fails as such; and
writes racing the polls on the one connection never garble either.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.ua.status_codes import StatusCodes
from conftest import (
    connected,
    demo_copy,
    free_port,
    plan_for,
    pump_instrument,
    running,
    wait_for,
    write_config,
)
from test_opcua_driver import make_driver, opcua_registry, session, started_controller
from test_opcua_driver_emulator import NAMESPACE, gateway_with_controller, instrument

from firmware_stubs.bioreactor.faults import Fault as ControllerFault
from firmware_stubs.feed_pump import Fault, FeedPumpEmulator, PumpModel
from gateway import (
    InstrumentError,
    PluginContext,
    Quality,
    WritableDriver,
    WriteRefusedError,
    build_registry,
    load_plan,
)
from gateway.runtime import Gateway
from gateway.store import SampleStore
from plugins.modbus.driver import ModbusDriver
from plugins.modbus.options import ModbusOptions
from plugins.opcua.driver import OpcUaDriver

SETPOINT = "speed_setpoint"


def latest(gateway: Gateway, signal_id: str) -> tuple[Quality, Any, str | None] | None:
    """(quality, value, reason) of the newest sample of ``signal_id`` (ending with it)."""
    output = next(o for o in gateway.outputs if o.signal.id.endswith(f"/{signal_id}"))
    row = output.latest  # (def_id, seq, source_ts, gateway_ts, quality, value, reason)
    return None if row is None else (Quality(row[4]), row[5], row[6])


def published_close_to(gateway: Gateway, signal_id: str, value: float) -> bool:
    row = latest(gateway, signal_id)
    return (
        row is not None
        and row[0] is Quality.GOOD
        and math.isclose(row[1], value, rel_tol=1e-6, abs_tol=1e-9)
    )


def bad_samples(tmp_path: Path) -> list[Any]:
    store = SampleStore(tmp_path / "store.sqlite", read_only=True)
    try:
        return [s for s in store.samples() if s.quality is not Quality.GOOD]
    finally:
        store.close()


def pump(instrument_id: str, port: int, poll_interval_s: float = 0.05) -> dict[str, Any]:
    block = pump_instrument(instrument_id, port, poll_interval_s=poll_interval_s)
    block["options"]["timeout_s"] = 2.0  # a loaded machine must not turn into a timeout
    return block


def writable(plan: Any) -> WritableDriver:
    driver = plan.instruments[0].driver
    assert isinstance(driver, WritableDriver)
    return driver


@asynccontextmanager
async def pump_gateway(
    tmp_path: Path, poll_interval_s: float = 0.05, **model: float
) -> AsyncIterator[tuple[FeedPumpEmulator, Gateway, WritableDriver]]:
    """The emulated pump (at 2 rpm unless ``model`` says otherwise) read by the real runtime;
    yields once its speed is published."""
    model = {"setpoint_rpm": 2.0, "actual_rpm": 2.0, **model}
    async with FeedPumpEmulator(model=PumpModel(**model)) as emulator:
        plan = plan_for(tmp_path, instruments=[pump("p", emulator.port, poll_interval_s)])
        async with running(plan) as (gateway, _):
            speed = model["setpoint_rpm"]
            await wait_for(lambda: published_close_to(gateway, "speed", speed), what="the speed")
            yield emulator, gateway, writable(plan)


# -- Modbus: the feed pump ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_modbus_write_reads_back_and_the_pump_follows(tmp_path: Path) -> None:
    async with pump_gateway(tmp_path) as (emulator, gateway, driver):
        assert await driver.read_back(SETPOINT) == 2.0

        await driver.write(SETPOINT, 5.0)
        assert await driver.read_back(SETPOINT) == 5.0
        assert emulator.model.setpoint_rpm == 5.0
        # The pump's head follows: read through the driver's published signals.
        await wait_for(lambda: published_close_to(gateway, "speed", 5.0), what="5 rpm")
        await wait_for(lambda: published_close_to(gateway, "flow", 5.0 * 0.8), what="flow")

        # A fresh read from the device, not the last published value: the pump's own panel
        # changes the setpoint, and the very next read-back sees it.
        emulator.model.set_setpoint(7.25)
        assert await driver.read_back(SETPOINT) == 7.25
        # Any channel reads back, in the channel's unit (the calibration, a read-only value).
        assert await driver.read_back("tubing_ml_per_rev") == pytest.approx(0.8, rel=1e-6)
        assert await driver.read_back("running") == 1.0
    assert bad_samples(tmp_path) == []


@pytest.mark.asyncio
async def test_modbus_clamped_setpoint_reads_back_the_clamp(tmp_path: Path) -> None:
    async with pump_gateway(tmp_path, max_setpoint_rpm=10.0) as (_, gateway, driver):
        await driver.write(SETPOINT, 15.0)  # accepted by the pump...
        assert await driver.read_back(SETPOINT) == 10.0  # ...which took its limit
        await wait_for(lambda: published_close_to(gateway, SETPOINT, 10.0), what="10 rpm SP")
        await wait_for(lambda: published_close_to(gateway, "speed", 10.0), what="10 rpm")


@pytest.mark.asyncio
async def test_modbus_refusals_name_the_reason_and_change_nothing(tmp_path: Path) -> None:
    async with pump_gateway(tmp_path) as (emulator, gateway, driver):
        runner = gateway.runners[0]
        with pytest.raises(WriteRefusedError, match="'flow' is not writable"):
            await driver.write("flow", 1.0)
        with pytest.raises(WriteRefusedError, match="'nope' is not writable"):
            await driver.write("nope", 1.0)
        with pytest.raises(WriteRefusedError, match="does not fit uint16"):
            await driver.write("running", 70_000)
        # The pump refuses 500 rpm itself (its range is 0..400): the exception is named.
        with pytest.raises(
            WriteRefusedError, match=r"refused by the device: exception 3 \(illegal data"
        ):
            await driver.write(SETPOINT, 500.0)
        emulator.inject(Fault.EXCEPTION_RESPONSES)
        with pytest.raises(
            WriteRefusedError, match=r"refused by the device: exception 4 \(device failure"
        ):
            await driver.write(SETPOINT, 3.0)
        # A read-back the device answers with an exception is no value.
        with pytest.raises(InstrumentError, match=r"read-back of speed_setpoint failed"):
            await driver.read_back(SETPOINT)
        emulator.clear_faults()
        assert await driver.read_back(SETPOINT) == 2.0
        assert emulator.model.setpoint_rpm == 2.0
        assert emulator.model.running
        with pytest.raises(WriteRefusedError, match="not a register"):
            await driver.read_back("nope")
        # A refusal is no instrument failure: the session stays.
        assert (runner.failures, runner.sessions) == (0, 1)


@pytest.mark.asyncio
async def test_modbus_write_while_not_connected_is_an_instrument_error(tmp_path: Path) -> None:
    emulator = FeedPumpEmulator(model=PumpModel(setpoint_rpm=2.0, actual_rpm=2.0))
    await emulator.start()
    try:
        plan = plan_for(tmp_path, instruments=[pump("p", emulator.port)])
        driver = writable(plan)
        # Built, not run: nothing is connected, nothing is sent.
        with pytest.raises(InstrumentError, match="not connected"):
            await driver.write(SETPOINT, 5.0)
        with pytest.raises(InstrumentError, match="not connected"):
            await driver.read_back(SETPOINT)
        async with running(plan) as (gateway, _):
            await wait_for(lambda: published_close_to(gateway, "speed", 2.0), what="2 rpm")
            await emulator.stop()
            await wait_for(
                lambda: (row := latest(gateway, "speed")) is not None and row[0] is Quality.BAD,
                what="the pump's signals bad",
            )
            # Whatever the runtime is doing (closing, backing off, reconnecting): no write goes
            # through a connection that is not there.
            for _ in range(3):
                with pytest.raises(InstrumentError):
                    await driver.write(SETPOINT, 5.0)
                with pytest.raises(InstrumentError):
                    await driver.read_back(SETPOINT)
            await emulator.start()  # the same port
            await wait_for(lambda: published_close_to(gateway, "speed", 2.0), what="back")
            await driver.write(SETPOINT, 5.0)
            assert await driver.read_back(SETPOINT) == 5.0
    finally:
        await emulator.stop()


@pytest.mark.asyncio
async def test_modbus_writes_racing_fast_polls_never_interleave(tmp_path: Path) -> None:
    async with pump_gateway(tmp_path, poll_interval_s=0.005) as (_, gateway, driver):
        runner = gateway.runners[0]
        # At least 20 polls of the pump's 7 signals go on while the writes do.
        enough = gateway.stats.committed + 20 * 7
        last: dict[str, float] = {}

        async def sweep(channel: str, start: float, step: float) -> None:
            i = 0
            while i < 40 or gateway.stats.committed < enough:
                value = start + (i % 40) * step  # exact in float32
                await driver.write(channel, value)
                assert await driver.read_back(channel) == value
                last[channel] = value
                i += 1

        # Two writers and the polls, all on the one connection.
        await asyncio.gather(sweep(SETPOINT, 1.0, 0.25), sweep("tubing_ml_per_rev", 0.5, 0.125))
        assert (runner.failures, runner.sessions) == (0, 1)
        for channel, value in last.items():
            await wait_for(lambda c=channel, v=value: published_close_to(gateway, c, v))
    assert bad_samples(tmp_path) == []


@pytest.mark.asyncio
async def test_modbus_a_request_cancelled_while_waiting_leaves_the_one_in_flight_alone(
    tmp_path: Path,
) -> None:
    """A read-back given up while a write is in flight (a caller's timeout) must not disturb
    the write: when the connection then drops, the write fails at once saying so, rather than
    waiting out its timeout with a reason that blames a silent device."""
    async with FeedPumpEmulator(model=PumpModel(setpoint_rpm=2.0, actual_rpm=2.0)) as emulator:
        options = ModbusOptions.model_validate(
            {"port": emulator.port, "profile": "feed_pump", "timeout_s": 30.0}
        )
        driver = ModbusDriver(options, PluginContext("p", tmp_path))
        async with connected(driver):
            emulator.inject(Fault.STALL)  # requests are taken, never answered
            write = asyncio.create_task(driver.write(SETPOINT, 5.0), name="test.write")
            await wait_for(lambda: driver._watch.function == 16, what="the write in flight")
            read = asyncio.create_task(driver.read_back(SETPOINT), name="test.read_back")
            await asyncio.sleep(0)  # the read-back runs until it waits for the connection
            assert not read.done()
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            emulator.inject(Fault.DROP_CONNECTIONS)
            try:
                with pytest.raises(
                    InstrumentError, match="connection closed by peer before a reply"
                ):
                    async with asyncio.timeout(10):
                        await asyncio.shield(write)
            finally:
                write.cancel()
                await asyncio.wait({write})
        emulator.clear_faults()
        assert emulator.model.setpoint_rpm == 2.0


@pytest.mark.asyncio
async def test_modbus_write_after_a_dropped_connection_fails_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """A write between a drop and the runtime's reconnect: an instrument failure saying what
    happened, and no new connection opened behind the runtime's back to send it."""
    async with FeedPumpEmulator(model=PumpModel(setpoint_rpm=2.0, actual_rpm=2.0)) as emulator:
        options = ModbusOptions.model_validate({"port": emulator.port, "profile": "feed_pump"})
        driver = ModbusDriver(options, PluginContext("p", tmp_path))
        async with connected(driver):
            assert await driver.read_back(SETPOINT) == 2.0
            emulator.inject(Fault.DROP_CONNECTIONS)
            await wait_for(lambda: not driver._client.connected, what="the drop seen")
            with pytest.raises(InstrumentError, match="connection closed by peer"):
                await driver.write(SETPOINT, 5.0)
            with pytest.raises(InstrumentError, match="connection closed by peer"):
                await driver.read_back(SETPOINT)
        assert emulator.model.setpoint_rpm == 2.0


@pytest.mark.asyncio
async def test_demo_setpoints_are_writable_end_to_end(tmp_path: Path) -> None:
    """The demo configuration as shipped: the feed pump's speed setpoint (Modbus) and the
    controller's pH setpoint (OPC UA) take writes, read back, and the published signals follow."""
    config, _ = demo_copy(tmp_path)
    plan = load_plan(config, build_registry())
    drivers = {i.config.id: i.driver for i in plan.instruments}
    pump_driver, controller_driver = drivers["feed_pump"], drivers["controller"]
    assert isinstance(pump_driver, WritableDriver)
    assert isinstance(controller_driver, WritableDriver)
    async with running(plan) as (gateway, _):
        await wait_for(
            lambda: (
                published_close_to(gateway, "feed_pump/speed_setpoint", 2.0)
                and (row := latest(gateway, "controller/ph_setpoint")) is not None
                and row[0] is Quality.GOOD
            ),
            within=30,
            what="the demo's setpoints published",
        )
        await pump_driver.write("speed_setpoint", 5.0)
        assert await pump_driver.read_back("speed_setpoint") == 5.0
        await wait_for(lambda: published_close_to(gateway, "feed_pump/speed", 5.0), what="5 rpm")
        await controller_driver.write("ph_setpoint", 7.1)
        assert await controller_driver.read_back("ph_setpoint") == 7.1
        await wait_for(lambda: published_close_to(gateway, "controller/ph_setpoint", 7.1))


# -- OPC UA: the bioreactor controller ----------------------------------------------------------

SP_NODES: list[dict[str, Any]] = [
    {"name": "ph", "node": "dcu:BioreactorController.pH.PV", "unit": "[pH]"},
    {"name": "agitation", "node": "dcu:BioreactorController.Agitation.PV", "unit": "{rev}/min"},
    *(
        {
            "name": name,
            "node": f"nsu={NAMESPACE};s=BioreactorController.{loop}.SP",
            "unit": unit,
            "writable": True,
        }
        for name, loop, unit in (
            ("ph_setpoint", "pH", "[pH]"),
            ("temperature_setpoint", "Temperature", "Cel"),
            ("do_setpoint", "DissolvedOxygen", "%"),
            ("agitation_setpoint", "Agitation", "{rev}/min"),
        )
    ),
]


@pytest.mark.asyncio
async def test_opcua_setpoints_write_read_back_clamp_and_refuse(tmp_path: Path) -> None:
    port = free_port()
    limits = {"pH": [6.8, 7.4]}
    async with gateway_with_controller(
        tmp_path, instrument("dcu", port, SP_NODES), port=port, setpoint_limits=limits
    ) as (plan, gateway):
        driver = writable(plan)
        assert isinstance(driver, OpcUaDriver)
        runner = gateway.runners[0]
        controller = plan.emulators[0].instance.controller
        names = [n["name"] for n in SP_NODES]
        await wait_for(
            lambda: all((r := latest(gateway, n)) and r[0] is Quality.GOOD for n in names),
            within=30,
            what="every node good",
        )
        # Each SP node: written, read back from the server, published by the subscription.
        for name, value in (
            ("ph_setpoint", 7.1),
            ("temperature_setpoint", 36.5),
            ("do_setpoint", 35.0),
            ("agitation_setpoint", 300.0),
        ):
            await driver.write(name, value)
            assert await driver.read_back(name) == value, name
            await wait_for(lambda n=name, v=value: published_close_to(gateway, n, v), what=name)
        assert controller.clock.snapshot().ph_sp == 7.1
        # The stirrer follows its new setpoint (a first-order lag of a second).
        await wait_for(
            lambda: (r := latest(gateway, "agitation")) is not None and abs(r[1] - 300.0) < 15,
            what="the stirrer near 300 rpm",
        )

        # Within the EURange but beyond the controller's SP limits: taken, clamped.
        await driver.write("ph_setpoint", 7.9)
        assert await driver.read_back("ph_setpoint") == 7.4
        await wait_for(lambda: published_close_to(gateway, "ph_setpoint", 7.4), what="pH SP 7.4")
        assert controller.clock.snapshot().ph_sp == 7.4

        # Refusals: by the server (its status named), by the driver; nothing changes.
        with pytest.raises(WriteRefusedError, match="refused by the server: BadOutOfRange"):
            await driver.write("temperature_setpoint", 99.0)
        with pytest.raises(WriteRefusedError, match="'ph' is not writable"):
            await driver.write("ph", 7.2)
        with pytest.raises(WriteRefusedError, match="not a finite number"):
            await driver.write("do_setpoint", math.nan)
        assert await driver.read_back("temperature_setpoint") == 36.5
        assert await driver.read_back("do_setpoint") == 35.0
        with pytest.raises(WriteRefusedError, match="'nope' is not a node"):
            await driver.read_back("nope")
        # A read-only node reads back too (e.g. the value before a write).
        assert 0.0 < await driver.read_back("ph") < 14.0

        # Writes racing the subscription's traffic, two writers at once.
        async def sweep(name: str, start: float, step: float) -> None:
            for i in range(25):
                value = start + i * step
                await driver.write(name, value)
                assert await driver.read_back(name) == value

        await asyncio.gather(
            sweep("agitation_setpoint", 200.0, 4.0), sweep("do_setpoint", 30.0, 0.5)
        )
        await wait_for(lambda: published_close_to(gateway, "agitation_setpoint", 296.0))
        assert (runner.failures, runner.sessions, driver.sessions) == (0, 1, 1)

        # The server down: writes and read-backs fail as the instrument's failure.
        controller.inject(ControllerFault.SERVER_RESTART)
        await wait_for(
            lambda: (r := latest(gateway, "ph")) is not None and r[0] is Quality.BAD,
            within=15,
            what="the session lost",
        )
        with pytest.raises(InstrumentError):
            await driver.write("ph_setpoint", 7.0)
        with pytest.raises(InstrumentError):
            await driver.read_back("ph_setpoint")
        controller.clear(ControllerFault.SERVER_RESTART)
        await wait_for(
            lambda: driver.sessions == 2 and published_close_to(gateway, "ph_setpoint", 7.4),
            within=30,
        )
        await driver.write("ph_setpoint", 7.0)
        assert await driver.read_back("ph_setpoint") == 7.0


@pytest.mark.asyncio
async def test_opcua_write_before_any_session_is_an_instrument_error(tmp_path: Path) -> None:
    config = {
        "area": "reactor1",
        "store": {"path": str(tmp_path / "store.sqlite")},
        "data_dir": str(tmp_path / "data"),
        "instruments": [instrument("dcu", free_port(), SP_NODES)],
    }
    plan = load_plan(write_config(tmp_path / "gateway.yaml", config), opcua_registry())
    driver = writable(plan)
    with pytest.raises(InstrumentError, match="not connected"):
        await driver.write("ph_setpoint", 7.0)
    with pytest.raises(InstrumentError, match="not connected"):
        await driver.read_back("ph_setpoint")
    with pytest.raises(WriteRefusedError, match="'ph' is not writable"):
        await driver.write("ph", 7.0)


@pytest.mark.asyncio
async def test_opcua_a_service_fault_is_a_refusal_unless_the_session_failed(
    tmp_path: Path,
) -> None:
    """A server refusing a whole write request says either "not this value" (a refusal: nothing
    changed) or "your session/link is broken" (an instrument failure: retry once it is back)."""
    answer = {"code": StatusCodes.BadTooManyOperations}

    def refuse(event: ServerItemCallback, _dispatcher: object) -> None:
        if event.is_external:  # a client's request, not the server's own clock
            raise ServiceError(answer["code"])

    controllers = started_controller()
    controller = next(controllers)
    try:
        server = controller.server
        assert server is not None

        async def subscribe() -> None:
            server.subscribe_server_callback(CallbackType.PreWrite, refuse)

        await controller.on_server(subscribe())
        before = await controller.value("Agitation.SP")
        running_session = await session(make_driver(controller.url, tmp_path))
        driver = running_session.driver
        try:
            with pytest.raises(
                WriteRefusedError, match="refused by the server: BadTooManyOperations"
            ):
                await driver.write("agitation_sp", before + 10.0)
            answer["code"] = StatusCodes.BadSessionIdInvalid
            with pytest.raises(InstrumentError, match="failed: BadSessionIdInvalid"):
                await driver.write("agitation_sp", before + 10.0)
        finally:
            await running_session.stop()
        assert await controller.value("Agitation.SP") == before
    finally:
        controllers.close()
