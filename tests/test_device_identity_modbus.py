"""The ``modbus`` driver reads the device identity (Read Device Identification, function 43 /
MEI 14) of the emulated feed pump and capacitance probe over loopback TCP (and RTU framing),
each emulator answering its own objects even when both run in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import wait_for

from firmware_stubs.capacitance import CapacitanceProbeEmulator
from firmware_stubs.feed_pump import FeedPumpEmulator
from firmware_stubs.modbus_device import CommFault
from gateway import DeviceIdentity, PluginContext
from gateway.testing import RecordingIO
from plugins.modbus.driver import ModbusDriver
from plugins.modbus.identity import IdentityOptions, identity_from_objects
from plugins.modbus.options import ModbusOptions

PUMP = DeviceIdentity("PAT Gateway", "Emulated peristaltic feed pump", "FP-EMU-0001", "1.4")
PROBE = DeviceIdentity(
    "PAT Gateway", "Emulated capacitance (viable biomass) probe", "CP-EMU-0001", "2.1"
)


def driver_for(port: int, tmp_path: Path, **options: Any) -> ModbusDriver:
    raw = {"host": "127.0.0.1", "port": port, "timeout_s": 0.5, **options}
    return ModbusDriver(ModbusOptions.model_validate(raw), PluginContext("dev", tmp_path, 0.05))


async def first_identity(driver: ModbusDriver, channel: str) -> RecordingIO:
    io = RecordingIO(driver, "dev")
    async with io.running():
        await io.wait_for_samples(channel, 1)
    return io


@pytest.mark.asyncio
async def test_pump_and_probe_in_one_process_each_tell_their_own_identity(
    tmp_path: Path,
) -> None:
    # pymodbus keeps one identity per process: without the emulators' own answer, the one
    # started last would speak for both.
    async with FeedPumpEmulator() as pump, CapacitanceProbeEmulator() as probe:
        pump_io = await first_identity(driver_for(pump.port, tmp_path, profile="feed_pump"), "flow")
        probe_io = await first_identity(
            driver_for(probe.port, tmp_path, profile="capacitance_probe"), "permittivity"
        )
    assert pump_io.identities == [PUMP]
    assert probe_io.identities == [PROBE]


@pytest.mark.asyncio
async def test_rtu_framing_and_a_swapped_pump(tmp_path: Path) -> None:
    async with FeedPumpEmulator(framing="rtu") as pump:
        driver = ModbusDriver(
            ModbusOptions.model_validate(
                {
                    "transport": "rtu",
                    "serial_port": f"socket://127.0.0.1:{pump.port}",
                    "profile": "feed_pump",
                    "timeout_s": 0.5,
                }
            ),
            PluginContext("dev", tmp_path, 0.05),
        )
        io = RecordingIO(driver, "dev")
        async with io.running():
            await io.wait_for_samples("flow", 1)
            pump.serial_number = "FP-EMU-0002"  # another pump behind the same address
            pump.inject_comm(CommFault.DROP_CONNECTIONS)
            await wait_for(lambda: io.connects >= 2, what="the reconnect")
    assert [i.serial_number for i in io.identities] == ["FP-EMU-0001", "FP-EMU-0002"]
    assert io.identity == io.identities[-1]


@pytest.mark.asyncio
async def test_without_a_serial_number_object_the_regular_objects_only(tmp_path: Path) -> None:
    async with FeedPumpEmulator() as pump:
        driver = driver_for(
            pump.port, tmp_path, profile="feed_pump", identity="device_identification"
        )
        io = await first_identity(driver, "flow")
    assert io.identities == [
        DeviceIdentity("PAT Gateway", "Emulated peristaltic feed pump", None, "1.4")
    ]


@pytest.mark.asyncio
async def test_a_device_that_refuses_identification_still_connects(tmp_path: Path) -> None:
    async with FeedPumpEmulator() as pump:
        # A device without function 43 answers it with exception 1 (illegal function): its
        # registers are read as usual, the identity is unknown and the log says why.
        pump.function_codes = frozenset({3, 4, 6, 16})
        driver = driver_for(pump.port, tmp_path, profile="feed_pump")
        with structlog.testing.capture_logs() as logged:
            io = await first_identity(driver, "flow")
    assert io.identities == []
    assert io.connects >= 1
    [unavailable] = [e for e in logged if e["event"] == "modbus.identity_unavailable"]
    assert unavailable["reason"] == "exception 1 (illegal function)"


def test_objects_to_identity() -> None:
    spec = IdentityOptions(serial_number_object=0x80, hardware_revision_object=0x81)
    objects = {
        0x00: b"Acme\x00",
        0x01: b"P-20",
        0x02: b"v3.1",
        0x04: b"Pump 20",
        0x80: b"  S123 ",
        0x81: b"",
    }
    assert identity_from_objects(spec, objects) == DeviceIdentity(
        "Acme", "Pump 20", "S123", "v3.1", None
    )
    assert identity_from_objects(IdentityOptions(), {0x01: b"P-20"}).model == "P-20"
    assert (
        ModbusOptions.model_validate(
            {"profile": "feed_pump", "identity": "device_identification"}
        ).identity
        == IdentityOptions()
    )
