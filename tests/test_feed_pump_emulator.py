"""Tests for the emulated feed pump: physics, register codec and the Modbus TCP server.

The loopback tests talk to the emulator with pymodbus' own client only (no gateway
code), so they pin down what the emulator puts on the wire.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import struct
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from conftest import free_port
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from firmware_stubs.feed_pump import REGISTER_MAP_DOC, Fault, FeedPumpEmulator, PumpModel
from firmware_stubs.feed_pump.model import PumpStateError
from firmware_stubs.feed_pump.plugin import FeedPumpOptions
from firmware_stubs.feed_pump.registers import (
    DEVICE_ID,
    FIELDS,
    REGISTER_COUNT,
    ExceptionCode,
    RegisterAccessError,
    apply_write,
    encode_registers,
    read_registers,
)
from firmware_stubs.feed_pump.server import serve_forever

DEADLINE_S = 5.0


# --------------------------------------------------------------------------- helpers


def f32_words(value: float) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">f", value)))


def f32(words: list[int], address: int) -> float:
    value: float = struct.unpack(">f", struct.pack(">2H", *words[address : address + 2]))[0]
    return value


def f64(words: list[int], address: int) -> float:
    value: float = struct.unpack(">d", struct.pack(">4H", *words[address : address + 4]))[0]
    return value


async def wait_until(predicate: Callable[[], bool], within_s: float = DEADLINE_S) -> None:
    """Poll ``predicate`` until it holds, failing the test after ``within_s`` seconds."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {within_s} s")
        await asyncio.sleep(0.01)


async def read_all(client: AsyncModbusTcpClient, device_id: int = 1) -> list[int]:
    response = await client.read_holding_registers(0, count=REGISTER_COUNT, device_id=device_id)
    assert not response.isError(), response
    return list(response.registers)


async def poll_registers(
    client: AsyncModbusTcpClient,
    predicate: Callable[[list[int]], bool],
    within_s: float = DEADLINE_S,
) -> list[int]:
    """Read the whole map repeatedly until ``predicate`` accepts it."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        words = await read_all(client)
        if predicate(words):
            return words
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"registers never matched; last: {words}")
        await asyncio.sleep(0.02)


async def assert_no_stray_tasks() -> None:
    current = asyncio.current_task()

    def others() -> set[asyncio.Task[object]]:
        return {t for t in asyncio.all_tasks() if t is not current and not t.done()}

    deadline = asyncio.get_running_loop().time() + 2.0
    while others():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"tasks left behind: {[t.get_name() for t in others()]}")
        await asyncio.sleep(0.01)


def make_client(port: int, timeout: float = 1.0) -> AsyncModbusTcpClient:
    # reconnect_delay=0: no background reconnect, so a dropped link stays visible.
    return AsyncModbusTcpClient(
        "127.0.0.1", port=port, timeout=timeout, retries=0, reconnect_delay=0
    )


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[FeedPumpEmulator]:
    async with FeedPumpEmulator() as pump:
        yield pump
    assert not pump.is_serving
    await assert_no_stray_tasks()


@pytest_asyncio.fixture
async def client(emulator: FeedPumpEmulator) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = make_client(emulator.port)
    assert await modbus.connect()
    yield modbus
    modbus.close()


# --------------------------------------------------------------------------- model


def test_fresh_model_is_pumping() -> None:
    model = PumpModel()
    assert model.running
    assert model.setpoint_rpm == 50.0
    assert model.flow_ml_per_min == pytest.approx(40.0)


def test_ramp_reaches_setpoint_at_ramp_rate() -> None:
    model = PumpModel(setpoint_rpm=200.0, actual_rpm=0.0)
    model.step(1.0)
    assert model.actual_rpm == pytest.approx(100.0)
    model.step(1.5)
    assert model.actual_rpm == 200.0
    model.step(10.0)
    assert model.actual_rpm == 200.0
    assert model.flow_ml_per_min == pytest.approx(160.0)


def test_stop_ramps_down_to_zero() -> None:
    model = PumpModel()
    model.stop()
    model.step(0.25)
    assert model.actual_rpm == pytest.approx(25.0)
    model.step(1.0)
    assert model.actual_rpm == 0.0
    assert model.flow_ml_per_min == 0.0


def test_setpoint_decrease_ramps_down_to_new_setpoint() -> None:
    model = PumpModel(setpoint_rpm=300.0, actual_rpm=300.0)
    model.set_setpoint(100.0)
    model.step(1.0)
    assert model.actual_rpm == pytest.approx(200.0)
    model.step(5.0)
    assert model.actual_rpm == 100.0


@pytest.mark.parametrize("steps", [1, 7, 1000])
def test_total_volume_is_exact_integral_regardless_of_step_size(steps: int) -> None:
    # 0 -> 300 rpm at 100 rpm/s: 3 s ramp (7.5 rev) then 2 s at 300 rpm (10 rev).
    model = PumpModel(setpoint_rpm=300.0, actual_rpm=0.0, ml_per_rev=0.8)
    for _ in range(steps):
        model.step(5.0 / steps)
    assert model.total_ml == pytest.approx(17.5 * 0.8, abs=1e-6)
    assert model.elapsed_s == pytest.approx(5.0)


@settings(max_examples=50, deadline=None)
@given(
    cuts=st.lists(st.floats(min_value=0.0, max_value=10.0), max_size=30),
    setpoint=st.floats(min_value=0.0, max_value=400.0),
    start=st.floats(min_value=0.0, max_value=400.0),
)
def test_total_volume_independent_of_slicing(
    cuts: list[float], setpoint: float, start: float
) -> None:
    whole = PumpModel(setpoint_rpm=setpoint, actual_rpm=start)
    sliced = PumpModel(setpoint_rpm=setpoint, actual_rpm=start)
    whole.step(10.0)
    bounds = [0.0, *sorted(cuts), 10.0]
    for lo, hi in itertools.pairwise(bounds):
        sliced.step(hi - lo)
    assert sliced.total_ml == pytest.approx(whole.total_ml, abs=1e-6)
    assert sliced.actual_rpm == pytest.approx(whole.actual_rpm, abs=1e-9)


def test_fault_stops_pump_and_blocks_start_until_acknowledged() -> None:
    model = PumpModel()
    model.trip()
    assert model.fault_code == 1
    assert not model.running
    model.step(1.0)
    assert model.actual_rpm == 0.0
    with pytest.raises(PumpStateError):
        model.start()
    model.acknowledge_fault()
    assert not model.running
    model.start()
    model.step(1.0)
    assert model.actual_rpm == 50.0


@pytest.mark.parametrize("rpm", [-0.1, 400.5, math.nan, math.inf])
def test_setpoint_rejects_bad_values(rpm: float) -> None:
    model = PumpModel()
    with pytest.raises(PumpStateError):
        model.set_setpoint(rpm)
    assert model.setpoint_rpm == 50.0


def test_setpoint_above_the_drive_limit_is_taken_clamped() -> None:
    model = PumpModel(max_setpoint_rpm=10.0)
    model.set_setpoint(15.0)
    assert model.setpoint_rpm == 10.0
    model.set_setpoint(4.5)
    assert model.setpoint_rpm == 4.5
    with pytest.raises(PumpStateError):  # beyond the hardware's range: still refused
        model.set_setpoint(400.5)
    assert model.setpoint_rpm == 4.5


def test_options_keep_the_initial_setpoint_within_the_drive_limit() -> None:
    options = FeedPumpOptions(setpoint_rpm=2.0, max_setpoint_rpm=10.0)
    assert (options.setpoint_rpm, options.max_setpoint_rpm) == (2.0, 10.0)
    assert FeedPumpOptions().max_setpoint_rpm == 400.0  # no limit below the hardware's
    with pytest.raises(ValidationError, match="above max_setpoint_rpm"):
        FeedPumpOptions(setpoint_rpm=50.0, max_setpoint_rpm=10.0)


# --------------------------------------------------------------------------- registers


def test_encode_registers_layout() -> None:
    model = PumpModel(total_ml=1234.5678)
    words = encode_registers(model)
    assert len(words) == REGISTER_COUNT == 20
    assert all(0 <= w <= 0xFFFF for w in words)
    assert words[0:2] == [0x4248, 0x0000]  # 50.0 as float32, ABCD
    assert f32(words, 0) == 50.0
    assert f32(words, 2) == 50.0
    assert f32(words, 4) == pytest.approx(40.0)
    assert f64(words, 6) == 1234.5678
    assert words[10] == 1
    assert words[11] == 0
    assert f32(words, 12) == pytest.approx(0.8)
    assert words[14] == DEVICE_ID == 0x5046
    assert words[15:20] == [0, 0, 0, 0, 0]  # heartbeat, watchdog off, safe speed 0.0, not tripped


def test_fields_tile_the_map_without_gaps() -> None:
    address = 0
    for field in FIELDS:
        assert field.address == address
        address = field.end
    assert address == REGISTER_COUNT


def test_register_map_doc_lists_every_field() -> None:
    for field in FIELDS:
        assert f"| {field.address} | {field.count} | {field.name} |" in REGISTER_MAP_DOC


def test_read_registers_range() -> None:
    model = PumpModel()
    assert read_registers(model, 14, 1) == [DEVICE_ID]
    assert read_registers(model, 19, 1) == [0]
    for address, count in [(19, 2), (20, 1), (-1, 1), (0, 0)]:
        with pytest.raises(RegisterAccessError) as err:
            read_registers(model, address, count)
        assert err.value.code == ExceptionCode.ILLEGAL_DATA_ADDRESS


def test_apply_write_setpoint_run_and_calibration() -> None:
    model = PumpModel()
    apply_write(model, 0, f32_words(123.5))
    assert model.setpoint_rpm == 123.5
    apply_write(model, 10, [0])
    assert not model.running
    apply_write(model, 12, f32_words(1.25))
    assert model.ml_per_rev == 1.25
    apply_write(model, 10, [1])
    assert model.running


@pytest.mark.parametrize(
    ("address", "words", "code"),
    [
        (2, f32_words(10.0), ExceptionCode.ILLEGAL_DATA_ADDRESS),  # actual speed: read-only
        (14, [1], ExceptionCode.ILLEGAL_DATA_ADDRESS),  # device id: read-only
        (1, [0], ExceptionCode.ILLEGAL_DATA_ADDRESS),  # half of the setpoint
        (0, [0x43C8], ExceptionCode.ILLEGAL_DATA_ADDRESS),  # other half of the setpoint
        (19, [0], ExceptionCode.ILLEGAL_DATA_ADDRESS),  # watchdog_tripped: read-only
        (17, [0], ExceptionCode.ILLEGAL_DATA_ADDRESS),  # half of the safe speed
        (20, [0], ExceptionCode.ILLEGAL_DATA_ADDRESS),  # outside the map
        (19, [0, 0], ExceptionCode.ILLEGAL_DATA_ADDRESS),  # runs past the end
        (0, [], ExceptionCode.ILLEGAL_DATA_ADDRESS),
        (0, f32_words(400.5), ExceptionCode.ILLEGAL_DATA_VALUE),
        (0, f32_words(-1.0), ExceptionCode.ILLEGAL_DATA_VALUE),
        (0, [0x7FC0, 0x0000], ExceptionCode.ILLEGAL_DATA_VALUE),  # NaN
        (10, [2], ExceptionCode.ILLEGAL_DATA_VALUE),
        (11, [1], ExceptionCode.ILLEGAL_DATA_VALUE),  # only 0 acknowledges
        (12, f32_words(0.0), ExceptionCode.ILLEGAL_DATA_VALUE),
        (10, [0x1_0000], ExceptionCode.ILLEGAL_DATA_VALUE),
    ],
)
def test_apply_write_rejects(address: int, words: list[int], code: ExceptionCode) -> None:
    model = PumpModel()
    before = encode_registers(model)
    with pytest.raises(RegisterAccessError) as err:
        apply_write(model, address, words)
    assert err.value.code == code
    assert encode_registers(model) == before


def test_apply_write_is_atomic_across_fields() -> None:
    model = PumpModel()
    # running=0, fault ack, then an invalid calibration: nothing may be applied.
    with pytest.raises(RegisterAccessError):
        apply_write(model, 10, [0, 0, *f32_words(-5.0)])
    assert model.running


def test_start_refused_while_faulted_but_ack_and_start_in_one_write_works() -> None:
    model = PumpModel()
    model.trip()
    with pytest.raises(RegisterAccessError) as err:
        apply_write(model, 10, [1])
    assert err.value.code == ExceptionCode.ILLEGAL_DATA_VALUE
    apply_write(model, 10, [1, 0])
    assert model.running
    assert model.fault_code == 0


# --------------------------------------------------------------------------- loopback


@pytest.mark.asyncio
async def test_read_all_registers_in_one_request(
    emulator: FeedPumpEmulator, client: AsyncModbusTcpClient
) -> None:
    assert emulator.port > 0
    words = await read_all(client)
    assert len(words) == 20
    assert f32(words, 0) == 50.0
    assert f32(words, 2) == pytest.approx(50.0)
    assert f32(words, 4) == pytest.approx(40.0)
    assert words[10] == 1
    assert words[11] == 0
    assert f32(words, 12) == pytest.approx(0.8)
    assert words[14] == 0x5046
    inputs = await client.read_input_registers(0, count=15, device_id=1)
    assert not inputs.isError()
    assert inputs.registers[14] == 0x5046


@pytest.mark.asyncio
async def test_total_volume_is_live(client: AsyncModbusTcpClient) -> None:
    first = f64(await read_all(client), 6)
    await poll_registers(client, lambda w: f64(w, 6) > first + 0.1)


@pytest.mark.asyncio
async def test_write_setpoint_then_speed_ramps(
    emulator: FeedPumpEmulator, client: AsyncModbusTcpClient
) -> None:
    response = await client.write_registers(0, f32_words(100.0), device_id=1)
    assert not response.isError(), response
    assert emulator.model.setpoint_rpm == 100.0
    # Ramping (strictly between old and new speed) is visible before it settles.
    await poll_registers(client, lambda w: 50.0 < f32(w, 2) < 100.0)
    words = await poll_registers(client, lambda w: f32(w, 2) == 100.0)
    assert f32(words, 4) == pytest.approx(80.0)


@pytest.mark.asyncio
async def test_fc6_stop_ramps_down(client: AsyncModbusTcpClient) -> None:
    response = await client.write_register(10, 0, device_id=1)
    assert not response.isError(), response
    words = await poll_registers(client, lambda w: f32(w, 2) == 0.0)
    assert words[10] == 0
    assert f32(words, 4) == 0.0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("address", "values", "code"),
    [
        (2, f32_words(10.0), 2),
        (0, f32_words(500.0), 3),
        (0, [0x7FC0, 0x0000], 3),
        (13, [0, 0], 2),
    ],
)
async def test_bad_writes_get_exceptions(
    emulator: FeedPumpEmulator,
    client: AsyncModbusTcpClient,
    address: int,
    values: list[int],
    code: int,
) -> None:
    response = await client.write_registers(address, values, device_id=1)
    assert response.isError()
    assert response.exception_code == code
    assert emulator.model.setpoint_rpm == 50.0


@pytest.mark.asyncio
async def test_bad_reads_and_functions_get_exceptions(client: AsyncModbusTcpClient) -> None:
    for address, count in [(19, 2), (20, 1), (100, 3)]:
        response = await client.read_holding_registers(address, count=count, device_id=1)
        assert response.isError()
        assert response.exception_code == 2
    coils = await client.read_coils(0, count=8, device_id=1)
    assert coils.isError()
    assert coils.exception_code == 1
    other_unit = await client.read_holding_registers(0, count=1, device_id=7)
    assert other_unit.isError()
    assert other_unit.exception_code == 11


@pytest.mark.asyncio
async def test_drop_connections(emulator: FeedPumpEmulator, client: AsyncModbusTcpClient) -> None:
    await read_all(client)
    emulator.inject(Fault.DROP_CONNECTIONS)
    await wait_until(lambda: not client.connected)
    with pytest.raises(ConnectionException):
        await client.read_holding_registers(0, count=1, device_id=1)
    assert not emulator.active_faults
    # Still accepting: a new connection works.
    assert await client.connect()
    assert (await read_all(client))[14] == 0x5046


@pytest.mark.asyncio
async def test_exception_responses_until_cleared(
    emulator: FeedPumpEmulator, client: AsyncModbusTcpClient
) -> None:
    emulator.inject(Fault.EXCEPTION_RESPONSES)
    read = await client.read_holding_registers(0, count=15, device_id=1)
    assert read.isError()
    assert read.exception_code == 4
    outside = await client.read_holding_registers(200, count=1, device_id=1)
    assert outside.exception_code == 4
    write = await client.write_registers(0, f32_words(10.0), device_id=1)
    assert write.exception_code == 4
    assert emulator.model.setpoint_rpm == 50.0  # a failing device does not act
    emulator.clear_faults()
    assert (await read_all(client))[14] == 0x5046


@pytest.mark.asyncio
async def test_stall_times_out_until_cleared(emulator: FeedPumpEmulator) -> None:
    modbus = make_client(emulator.port, timeout=0.3)
    assert await modbus.connect()
    try:
        emulator.inject(Fault.STALL)
        assert emulator.active_faults == {Fault.STALL}
        with pytest.raises(ModbusIOException):
            await modbus.read_holding_registers(0, count=15, device_id=1)
        with pytest.raises(ModbusIOException):
            await modbus.write_registers(0, f32_words(10.0), device_id=1)
        assert emulator.model.setpoint_rpm == 50.0
        assert modbus.connected  # accepted and kept open, just silent
        emulator.clear_faults()
        assert (await read_all(modbus))[14] == 0x5046
    finally:
        modbus.close()


@pytest.mark.asyncio
async def test_pump_fault_over_modbus(
    emulator: FeedPumpEmulator, client: AsyncModbusTcpClient
) -> None:
    emulator.inject(Fault.PUMP_FAULT)
    words = await poll_registers(client, lambda w: f32(w, 2) == 0.0)
    assert words[11] == 1
    assert words[10] == 0
    refused = await client.write_register(10, 1, device_id=1)
    assert refused.exception_code == 3
    assert not (await client.write_register(11, 0, device_id=1)).isError()
    assert not (await client.write_register(10, 1, device_id=1)).isError()
    await poll_registers(client, lambda w: f32(w, 2) == 50.0 and w[11] == 0)


@pytest.mark.asyncio
async def test_stop_then_start_on_same_port(emulator: FeedPumpEmulator) -> None:
    port = emulator.port
    modbus = make_client(port)
    assert await modbus.connect()
    try:
        await read_all(modbus)
        await emulator.stop()
        await wait_until(lambda: not modbus.connected)
        assert not await modbus.connect()  # listening socket really closed
        await emulator.start()
        assert emulator.port == port
        assert await modbus.connect()
        assert (await read_all(modbus))[14] == 0x5046
    finally:
        modbus.close()


@pytest.mark.asyncio
async def test_start_twice_is_an_error(emulator: FeedPumpEmulator) -> None:
    with pytest.raises(RuntimeError):
        await emulator.start()


@pytest.mark.asyncio
async def test_port_in_use_raises_oserror(emulator: FeedPumpEmulator) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        await FeedPumpEmulator(port=emulator.port).start()


@pytest.mark.asyncio
async def test_malformed_requests_do_not_crash(
    emulator: FeedPumpEmulator, client: AsyncModbusTcpClient
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    try:
        # Unknown function code 0x63: answered with ILLEGAL_FUNCTION (pymodbus 3.16
        # reports it under function code 0x80, having failed to decode 0x63).
        writer.write(bytes.fromhex("0001 0000 0002 01 63"))
        answer = await asyncio.wait_for(reader.readexactly(9), DEADLINE_S)
        assert answer[7] & 0x80
        assert answer[8] == 1
        # Read with a truncated body, bad protocol id, garbage and an oversized frame.
        writer.write(bytes.fromhex("0002 0000 0003 01 03 00"))
        writer.write(bytes.fromhex("0003 1234 0006 01 03 0000 0001"))
        writer.write(b"\xff" * 600)
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()
    assert (await read_all(client))[14] == 0x5046
    assert emulator.is_serving


@pytest.mark.asyncio
async def test_serve_forever_until_stop_event() -> None:
    stop = asyncio.Event()
    port = free_port()
    task = asyncio.create_task(serve_forever("127.0.0.1", port, stop), name="test.serve")
    modbus = make_client(port)
    try:
        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while not await modbus.connect():
            assert asyncio.get_running_loop().time() < deadline, "emulator never came up"
            await asyncio.sleep(0.02)
        assert (await read_all(modbus))[14] == 0x5046
    finally:
        modbus.close()
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
    await assert_no_stray_tasks()


@pytest.mark.asyncio
async def test_fault_schedule_clears_only_its_own_fault() -> None:
    from firmware_stubs.feed_pump.plugin import FaultStep, ScheduledFeedPump

    schedule = (
        FaultStep(fault="stall", after_s=0.1),  # until stop
        FaultStep(fault="exception_responses", after_s=0.4, for_s=0.4),
        FaultStep(fault="exception_responses", after_s=0.8, for_s=0.4),  # back to back
    )
    pump = ScheduledFeedPump(FeedPumpEmulator(), schedule)
    async with pump:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def at(t: float) -> frozenset[Fault]:
            await asyncio.sleep(max(0.0, start + t - loop.time()))
            return pump.emulator.active_faults

        # Checked midway between events, 0.2 s from the nearest.
        assert await at(0.6) == {Fault.STALL, Fault.EXCEPTION_RESPONSES}
        assert await at(1.0) == {Fault.STALL, Fault.EXCEPTION_RESPONSES}
        assert await at(1.4) == {Fault.STALL}
    assert not pump.emulator.is_serving
