"""Tests for the process hub and the ``bioreactor`` emulator plugin, without sockets.

The plugin is exercised as the gateway would use it: registered through its hook into a fresh
``Registry``, its options validated from raw config, the emulator entered and exited as an async
context manager.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from pydantic import ValidationError
from structlog.testing import capture_logs

from firmware_stubs.bioreactor import (
    FedBatchModel,
    ProcessClock,
    ProcessNotFoundError,
    hub,
    lookup,
    register,
    unregister,
)
from firmware_stubs.bioreactor.plugin import (
    BioreactorEmulator,
    BioreactorOptions,
    pat_gateway_register_emulators,
)
from gateway import PluginContext, PluginError, PluginKind, Registry


@pytest.fixture(autouse=True)
def empty_hub() -> Iterator[None]:
    """Each test starts with no process registered and must leave none behind."""
    assert not hub._processes
    yield
    leftover = sorted(hub._processes)
    hub._processes.clear()
    assert not leftover, f"test left processes registered: {leftover}"


def emulator(name: str = "reactor", **raw: Any) -> BioreactorEmulator:
    raw.setdefault("log_every_s", 0)
    return BioreactorEmulator(BioreactorOptions.model_validate(raw), PluginContext(name, Path()))


# --------------------------------------------------------------------------- hub


def test_hub_registers_looks_up_and_unregisters() -> None:
    clock = ProcessClock(FedBatchModel())
    register("r1", clock)
    assert lookup("r1") is clock
    with pytest.raises(ValueError, match="'r1' is already running"):
        register("r1", ProcessClock(FedBatchModel()))
    assert lookup("r1") is clock
    unregister("r1")
    unregister("r1")  # already gone: nothing to do
    with pytest.raises(LookupError):
        lookup("r1")


def test_a_missing_process_is_named_with_what_to_do() -> None:
    register("r1", ProcessClock(FedBatchModel()))
    try:
        with pytest.raises(ProcessNotFoundError) as info:
            lookup("r2")
    finally:
        unregister("r1")
    message = str(info.value)
    assert info.value.name == "r2"
    assert "'r2'" in message and "running: 'r1'" in message
    assert "'bioreactor' emulator with id 'r2' must be listed before" in message


# --------------------------------------------------------------------------- registration, options


def test_the_hook_registers_the_bioreactor_emulator() -> None:
    registry = Registry()
    pat_gateway_register_emulators(registry)
    registration = registry.get(PluginKind.EMULATOR, "bioreactor")
    assert registration is not None
    assert registration.factory is BioreactorEmulator
    assert registration.options_model is BioreactorOptions
    assert registration.description


def test_options_accept_what_patgw_emulate_passes() -> None:
    options = BioreactorOptions.model_validate({"host": "0.0.0.0", "port": 15021, "seed": 3})
    assert options.port == 15021 and options.seed == 3
    assert BioreactorOptions.model_validate({"host": "127.0.0.1"}).time_scale == 60.0


def test_options_override_initial_conditions_only() -> None:
    options = BioreactorOptions(volume_L=5.0, vcd_e6_per_mL=0.3, glucose_g_L=8.0)
    params = options.params()
    assert (params.volume_L, params.vcd_e6_per_mL, params.glucose_g_L) == (5.0, 0.3, 8.0)
    assert params.feed_glucose_g_L == 400.0 and params.mu_max_per_h == 0.04


@pytest.mark.parametrize(
    "raw",
    [
        {"colour": "blue"},
        {"seed": -1},
        {"time_scale": 0},
        {"time_scale": 3601},
        {"time_scale": float("nan")},
        {"log_every_s": -1},
        {"volume_L": 0},
        {"glucose_g_L": float("inf")},
        {"setpoint_limits": {"pH": [6.8, 7.4]}},  # limits of a controller, but no controller
        {"port": 0, "setpoint_limits": {"pH": [7.4, 6.8]}},
        {"port": 0, "setpoint_limits": {"pH": [6.8, float("nan")]}},
        {"port": 0, "setpoint_limits": {"Pressure": [1.0, 2.0]}},
    ],
)
def test_bad_options_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BioreactorOptions.model_validate(raw)


def test_options_are_frozen_and_documented() -> None:
    options = BioreactorOptions()
    with pytest.raises(ValidationError):
        options.seed = 1
    for name, field in BioreactorOptions.model_fields.items():
        assert field.description, f"{name} has no description"


# --------------------------------------------------------------------------- the emulator


@pytest.mark.asyncio
async def test_entering_registers_the_process_and_exiting_removes_it() -> None:
    reactor = emulator("reactor", seed=4, time_scale=3600)
    assert reactor.endpoint == "process bioreactor 'reactor'"
    with pytest.raises(RuntimeError, match="not running"):
        _ = reactor.clock
    async with reactor as entered:
        assert entered is reactor
        assert lookup("reactor") is reactor.clock
        assert reactor.clock.time_scale == 3600
        # Another emulator feeds the shared process; the reactor sees it.
        lookup("reactor").feed(10.0)
        assert reactor.clock.snapshot().fed_volume_L == pytest.approx(0.010)
    with pytest.raises(ProcessNotFoundError):
        lookup("reactor")
    with pytest.raises(RuntimeError):
        _ = reactor.clock


@pytest.mark.asyncio
async def test_every_start_is_a_fresh_inoculation() -> None:
    reactor = emulator()
    async with reactor:
        reactor.clock.feed(50.0)
    async with reactor:
        assert reactor.clock.snapshot().fed_volume_L == 0.0


@pytest.mark.asyncio
async def test_a_second_process_with_the_same_id_cannot_start() -> None:
    async with emulator("reactor") as first:
        second = emulator("reactor")
        with pytest.raises(PluginError, match=r"process bioreactor 'reactor'.*already running"):
            await second.__aenter__()
        # The failed start must not take the running process out of the hub.
        await second.__aexit__(None, None, None)
        assert lookup("reactor") is first.clock


@pytest.mark.asyncio
async def test_state_lines_are_logged_from_a_named_task_until_exit() -> None:
    with capture_logs() as logs:
        async with emulator("reactor", log_every_s=0.01) as reactor:
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert "bioreactor.reactor.log" in names
            await wait_for(
                lambda: sum(e["event"] == "bioreactor.state" for e in logs) >= 2,
                within=5.0,
                what="two state lines",
            )
        assert reactor._task is None
    states = [e for e in logs if e["event"] == "bioreactor.state"]
    assert states[0]["process"] == "reactor" and states[0]["log_level"] == "info"
    assert {"time_h", "vcd_e6_per_mL", "glucose_g_L", "ph", "do_pct"} <= states[0].keys()
    assert all(t.get_name() != "bioreactor.reactor.log" for t in asyncio.all_tasks())


@pytest.mark.asyncio
async def test_no_log_task_when_logging_is_off() -> None:
    async with emulator("reactor", log_every_s=0) as reactor:
        assert reactor._task is None
        assert all(not t.get_name().startswith("bioreactor.") for t in asyncio.all_tasks())
