"""The feed pump's communication watchdog (issue 14): registers 15-19, the model's trip, and the
behaviour a client sees over Modbus TCP on loopback (pymodbus' own client, no gateway code).

Without a heartbeat write within ``watchdog_s`` the pump limits its setpoint to ``safe_speed``
and sets ``watchdog_tripped``; a beat clears the flag, the setpoint stays safe until written.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient
from test_feed_pump_emulator import f32, f32_words, make_client, poll_registers, read_all

from firmware_stubs.feed_pump import PumpModel
from firmware_stubs.feed_pump.model import PumpStateError
from firmware_stubs.feed_pump.plugin import FeedPumpOptions, ScheduledFeedPump, _build
from firmware_stubs.feed_pump.registers import (
    FIELDS_BY_NAME,
    ExceptionCode,
    RegisterAccessError,
    apply_write,
)
from gateway import PluginContext
from plugins.modbus.profiles import load_profile

HEARTBEAT, WATCHDOG_S, SAFE_SPEED, TRIPPED = 15, 16, 17, 19

# --------------------------------------------------------------------------- the model


def test_the_watchdog_trips_at_its_deadline_and_the_volume_splits_there() -> None:
    pump = PumpModel(setpoint_rpm=100.0, actual_rpm=100.0, ramp_rpm_per_s=0.0, ml_per_rev=1.0)
    pump.set_safe_rpm(10.0)
    pump.set_watchdog(5)
    pump.step(4.0)
    assert not pump.watchdog_tripped and pump.setpoint_rpm == 100.0
    pump.beat(1)  # at 4 s: the deadline moves to 9 s
    pump.step(4.0)
    assert not pump.watchdog_tripped
    pump.step(2.0)  # crosses 9 s one second into the step
    assert pump.watchdog_tripped
    assert pump.setpoint_rpm == pump.actual_rpm == 10.0
    # 9 s at 100 rpm, then 1 s at 10 rpm (no ramp): the step was split at the trip.
    assert pump.total_ml == pytest.approx((9 * 100 + 1 * 10) / 60)


def test_while_tripped_a_setpoint_is_limited_and_a_beat_keeps_it_safe() -> None:
    pump = PumpModel(setpoint_rpm=80.0, watchdog_s=1, safe_rpm=5.0)
    pump.step(1.5)
    assert pump.watchdog_tripped and pump.setpoint_rpm == 5.0
    pump.set_setpoint(300.0)  # no beat yet: still limited
    assert pump.setpoint_rpm == 5.0
    pump.beat(2)
    assert not pump.watchdog_tripped and pump.setpoint_rpm == 5.0  # stays safe...
    pump.set_setpoint(60.0)  # ...until written again
    assert pump.setpoint_rpm == 60.0
    # A lower setpoint than the safe speed is kept, not raised, by a trip.
    pump.set_safe_rpm(100.0)
    pump.step(1.5)
    assert pump.watchdog_tripped and pump.setpoint_rpm == 60.0


def test_disarmed_the_watchdog_never_trips() -> None:
    pump = PumpModel(setpoint_rpm=80.0, watchdog_s=2, safe_rpm=0.0)
    pump.set_watchdog(0)
    pump.step(3600.0)
    assert not pump.watchdog_tripped and pump.setpoint_rpm == 80.0


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("safe_speed", f32_words(float("nan"))),
        ("safe_speed", f32_words(400.5)),
        ("safe_speed", f32_words(-1.0)),
    ],
)
def test_bad_watchdog_values_are_refused_and_change_nothing(name: str, words: list[int]) -> None:
    pump = PumpModel(safe_rpm=3.0)
    with pytest.raises(RegisterAccessError) as err:
        apply_write(pump, FIELDS_BY_NAME[name].address, words)
    assert err.value.code == ExceptionCode.ILLEGAL_DATA_VALUE
    assert pump.safe_rpm == 3.0
    with pytest.raises(PumpStateError):
        pump.set_watchdog(70_000)


def test_watchdog_tripped_is_read_only() -> None:
    with pytest.raises(RegisterAccessError) as err:
        apply_write(PumpModel(), TRIPPED, [0])
    assert err.value.code == ExceptionCode.ILLEGAL_DATA_ADDRESS


def test_the_options_validate_the_watchdog() -> None:
    assert (FeedPumpOptions().watchdog_s, FeedPumpOptions().safe_rpm) == (0, 0.0)
    for bad in ({"watchdog_s": -1}, {"watchdog_s": 65536}, {"safe_rpm": 401}, {"safe_rpm": -1}):
        with pytest.raises(ValidationError) as err:
            FeedPumpOptions.model_validate(bad)
        assert next(iter(bad)) in str(err.value)


def test_the_profile_maps_the_watchdog_registers_like_the_emulator() -> None:
    """The driver's profile and the emulator's map are written independently: they must agree
    on address, type and access of every watchdog register."""
    by_name = {r.name: r for r in load_profile("feed_pump").registers}
    for name in ("heartbeat", "watchdog_s", "safe_speed", "watchdog_tripped"):
        field, register = FIELDS_BY_NAME[name], by_name[name]
        assert register.address == field.address, name
        assert register.type == field.kind, name
        assert (register.access == "rw") is field.writable, name


# --------------------------------------------------------------------------- over Modbus TCP


@pytest_asyncio.fixture
async def guarded_pump() -> AsyncIterator[ScheduledFeedPump]:
    """A pump built from its options like the gateway does: watchdog 1 s, safe speed 5 rpm."""
    options = FeedPumpOptions(port=0, setpoint_rpm=50.0, watchdog_s=1, safe_rpm=5.0)
    pump = _build(options, PluginContext("pump", Path()))
    async with pump:
        yield pump
    assert not pump.emulator.is_serving


@pytest_asyncio.fixture
async def modbus(guarded_pump: ScheduledFeedPump) -> AsyncIterator[AsyncModbusTcpClient]:
    client = make_client(guarded_pump.port)
    await client.connect()
    try:
        yield client
    finally:
        client.close()


async def write(client: AsyncModbusTcpClient, address: int, words: list[int]) -> None:
    response = await client.write_registers(address, words, device_id=1)
    assert not response.isError(), response


@pytest.mark.asyncio
async def test_without_beats_the_pump_falls_back_to_its_safe_speed(
    modbus: AsyncModbusTcpClient,
) -> None:
    words = await read_all(modbus)
    assert (words[WATCHDOG_S], f32(words, SAFE_SPEED)) == (1, 5.0)
    loop = asyncio.get_running_loop()
    beat_at = loop.time()
    await write(modbus, HEARTBEAT, [1])
    tripped = await poll_registers(modbus, lambda w: w[TRIPPED] == 1)
    # Never before the timeout (the beat was applied after beat_at): a lower bound only.
    assert loop.time() - beat_at >= 1.0
    assert f32(tripped, 0) == 5.0  # the setpoint reads back the safe speed
    await poll_registers(modbus, lambda w: f32(w, 2) == 5.0)  # and the head follows it

    # Still no beat: a setpoint written now is limited too.
    await write(modbus, 0, f32_words(120.0))
    assert f32(await read_all(modbus), 0) == 5.0

    # A beat clears the flag, but the setpoint stays safe until written again.
    await write(modbus, HEARTBEAT, [2])
    words = await read_all(modbus)
    assert (words[TRIPPED], words[HEARTBEAT], f32(words, 0)) == (0, 2, 5.0)
    await write(modbus, 0, f32_words(120.0))
    assert f32(await read_all(modbus), 0) == 120.0


@pytest.mark.asyncio
async def test_the_watchdog_is_configured_over_modbus(
    guarded_pump: ScheduledFeedPump, modbus: AsyncModbusTcpClient
) -> None:
    await write(modbus, SAFE_SPEED, f32_words(12.5))
    await write(modbus, WATCHDOG_S, [0])  # off
    words = await read_all(modbus)
    assert (words[WATCHDOG_S], f32(words, SAFE_SPEED)) == (0, 12.5)
    model = guarded_pump.emulator.model
    assert (model.watchdog_s, model.safe_rpm, model.watchdog_deadline_s) == (0, 12.5, None)
    # Armed again over the wire: it trips to the new safe speed.
    await write(modbus, WATCHDOG_S, [1])
    tripped = await poll_registers(modbus, lambda w: w[TRIPPED] == 1)
    assert f32(tripped, 0) == 12.5
    refused = await modbus.write_registers(
        SAFE_SPEED, list(struct.unpack(">2H", struct.pack(">f", 500.0))), device_id=1
    )
    assert refused.isError() and refused.exception_code == ExceptionCode.ILLEGAL_DATA_VALUE
