"""The balance driver against its emulator over loopback, with PAT Gateway's test kit only
(the ``pat_gateway`` pytest plugin's fixtures: no fake of the gateway written here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mtsics_balance.driver import BalanceOptions, MtSicsBalance, parse_info, parse_weight

from gateway import (
    DeviceIdentity,
    InstrumentError,
    PluginContext,
    Quality,
    WriteRefusedError,
    hash_password,
)
from gateway.testing import RecordingIO, RunningEmulator

#: What the driver asks at each connect: model, serial number, software (its identity).
IDENTIFY = ["I2", "I4", "I3"]


def balance(emulator: RunningEmulator, tmp_path: Path, **options: Any) -> MtSicsBalance:
    options = {"host": emulator.host, "port": emulator.port, "timeout_s": 1.0, **options}
    context = PluginContext("balance", tmp_path, poll_interval_s=0.05)
    return MtSicsBalance(BalanceOptions.model_validate(options), context)


def test_parse_weight_answers() -> None:
    assert parse_weight("S S      12.345 g", "SI").grams == 12.345
    assert parse_weight("S D       0.5 kg", "SI") == parse_weight("S D 500 g", "SI")
    assert parse_weight("S +", "SI").problem == "overload"
    assert parse_weight("ES", "SI").problem == "balance answered ES (syntax error)"
    assert parse_weight("S S 1.0 lb", "SI").problem == "unit 'lb' not supported (g, kg, mg)"
    with pytest.raises(ValueError, match="not an answer"):
        parse_weight("T S 1.0 g", "SI")


def test_parse_info_answers() -> None:
    assert parse_info('I4 A "B123456789"', "I4") == "B123456789"
    assert parse_info('I2 A "XS205DU 220.00000 g"', "I2") == "XS205DU 220.00000 g"
    assert parse_info("ES", "I4") is None  # a balance that does not know I4
    assert parse_info("I4 I", "I4") is None  # busy
    assert parse_info('I3 A "1.10"', "I4") is None  # an answer to another command


async def test_stable_and_dynamic_weights_are_published(
    start_emulator: Any, recording_io: Any, tmp_path: Path
) -> None:
    async with start_emulator("mtsics_balance", load_g=12.5) as emulator:
        io: RecordingIO = recording_io(balance(emulator, tmp_path), "balance")
        async with io.running():
            await io.wait_for_samples("weight", 2)
            emulator.instance.stable = False
            await io.wait_for_samples("weight", 4)
            while io.samples("weight")[-1].quality is Quality.GOOD:
                await io.wait_for_samples("weight", len(io.samples("weight")) + 1)
    weights = io.samples("weight")
    assert weights[0].value == 12.5 and weights[0].quality is Quality.GOOD
    assert weights[0].signal == "test/balance/weight" and weights[0].unit == "g"
    assert weights[-1].value == 12.5 and weights[-1].quality is Quality.UNCERTAIN
    assert weights[-1].reason == "dynamic (not stable)"
    assert io.values("stable")[0] == 1 and io.values("stable")[-1] == 0
    assert [s.seq for s in weights] == list(range(len(weights)))
    assert io.events[0] == ("connected", None)
    assert io.identities == [
        DeviceIdentity(
            manufacturer="Mettler-Toledo",
            model="XS205DU",
            serial_number="B123456789",
            firmware_revision="1.10 13.3.3.101.1",
        )
    ]


async def test_tare_and_zero_reach_the_balance(start_emulator: Any, tmp_path: Path) -> None:
    async with start_emulator("mtsics_balance", load_g=80.0) as emulator:
        driver = balance(emulator, tmp_path)
        io = RecordingIO(driver, "balance")
        await driver.connect()
        try:
            assert await driver.tare() == 80.0
            emulator.instance.load_g = 95.0
            await driver.poll(io)
            assert io.values("weight") == [15.0]
            await driver.zero()
            await driver.poll(io)
            assert io.values("weight")[-1] == 0.0
            emulator.instance.stable = False
            with pytest.raises(WriteRefusedError, match="busy"):
                await driver.zero()
        finally:
            await driver.close()
    assert emulator.instance.commands == [*IDENTIFY, "T", "SI", "Z", "SI", "Z"]


async def test_immediate_tare_and_zero_take_a_moving_weight(
    start_emulator: Any, tmp_path: Path
) -> None:
    async with start_emulator("mtsics_balance", load_g=50.0, stable=False) as emulator:
        driver = balance(emulator, tmp_path)
        await driver.connect()
        try:
            with pytest.raises(WriteRefusedError, match="busy"):
                await driver.command("tare", {})
            tared = await driver.command("tare_immediately", {})
            assert tared == {"tare": 50.0, "unit": "g", "stable": False}
            assert await driver.command("zero_immediately", {}) == {"stable": False}
            with pytest.raises(WriteRefusedError, match="no command 'calibrate'"):
                await driver.command("calibrate", {})
        finally:
            await driver.close()
    assert emulator.instance.commands == [*IDENTIFY, "T", "TI", "ZI"]
    assert (emulator.instance.zero_g, emulator.instance.tare_g) == (50.0, 0.0)


PASSWORD = {"operator": "operator-password", "viewer": "viewer-password"}


async def test_a_gateway_runs_the_declared_commands_for_the_users_it_names(
    start_emulator: Any, run_gateway: Any
) -> None:
    users = [
        {"name": name, "password_hash": hash_password(password), "roles": [name]}
        for name, password in PASSWORD.items()
    ]
    async with start_emulator("mtsics_balance", load_g=30.0) as emulator:
        config = {
            "instruments": [
                {
                    "id": "balance",
                    "driver": "mtsics_balance",
                    "poll_interval_s": 0.05,
                    "options": {"host": emulator.host, "port": emulator.port},
                    "signals": [{"id": "weight"}],
                }
            ],
            "security": {"users": users},
            "commands": [
                {"target": "test/balance/tare", "description": "Tare the empty vessel"},
                {"target": "test/balance/zero", "signature": "required"},
            ],
        }
        async with run_gateway(config) as run:
            await run.wait_for_samples("test/balance/weight", 1)

            async def command(target: str, user: str = "operator", **extra: Any) -> Any:
                return await run.command(
                    f"test/balance/{target}", user=user, password=PASSWORD[user], **extra
                )

            tare = await command("tare", reason="empty vessel on the pan")
            unsigned = await command("zero", reason="before the run")
            viewer = await command("tare", user="viewer", reason="r")
            undeclared = await command("tare_immediately", reason="r")
            emulator.instance.load_g = 42.0  # 12 g poured into the vessel
            count = len(run.samples("test/balance/weight"))
            await run.wait_for_samples("test/balance/weight", count + 3)
            zero = await command("zero", reason="before the run", meaning="performed")
    assert tare.ok and tare.result == {"tare": 30.0, "unit": "g"}, tare.message
    assert len(tare.records) == 2  # command.requested, command.executed
    assert (unsigned.outcome, unsigned.rule) == ("refused", "signature")
    assert (viewer.outcome, viewer.rule) == ("refused", "role")
    assert (undeclared.outcome, undeclared.rule) == ("refused", "not-declared")
    assert zero.ok and zero.result == {}
    assert [c for c in emulator.instance.commands if c not in ("SI", *IDENTIFY)] == ["T", "Z"]
    assert 12.0 in {s.value for s in run.samples("test/balance/weight")}


async def test_overload_is_a_bad_sample_and_a_lost_balance_marks_signals_bad(
    start_emulator: Any, recording_io: Any, tmp_path: Path
) -> None:
    emulator = start_emulator("mtsics_balance", load_g=500.0)
    async with emulator:
        io: RecordingIO = recording_io(balance(emulator, tmp_path), "balance")
        async with io.running():
            await io.wait_for_samples("weight", 1)
            assert io.samples("weight")[0].quality is Quality.BAD
            assert io.samples("weight")[0].reason == "overload"
            await emulator.__aexit__(None, None, None)  # the balance goes away
            await io.wait_for_events("connected", "down")
    down = [reason for event, reason in io.events if event == "down"]
    assert down and down[0] is not None and down[0].startswith("unreachable: ")
    last = io.samples("weight")[-1]
    assert last.quality is Quality.BAD and last.reason == down[-1]


async def test_the_driver_refuses_a_silent_peer(start_emulator: Any, tmp_path: Path) -> None:
    async with start_emulator("mtsics_balance") as emulator:
        driver = balance(emulator, tmp_path, timeout_s=0.2)
    with pytest.raises(InstrumentError, match="cannot connect"):
        await driver.connect()
    await driver.close()


async def test_a_gateway_commits_the_balance_weights(start_emulator: Any, run_gateway: Any) -> None:
    async with start_emulator("mtsics_balance", load_g=42.0) as emulator:
        config = {
            "instruments": [
                {
                    "id": "balance",
                    "driver": "mtsics_balance",
                    "poll_interval_s": 0.05,
                    "options": {"host": emulator.host, "port": emulator.port},
                    "signals": [{"id": "weight", "unit": "kg"}, {"id": "stable"}],
                }
            ],
            "sinks": [{"id": "upstream", "type": "recording"}],
        }
        async with run_gateway(config) as run:
            await run.wait_for_samples("test/balance/weight", 3)
    committed = run.samples("test/balance/weight")
    assert len(committed) >= 3
    assert {(s.value, s.unit, s.quality) for s in committed} == {(0.042, "kg", Quality.GOOD)}
    delivered = run.sink("upstream").of("test/balance/weight")
    assert [s.seq for s in delivered] == [s.seq for s in committed]
