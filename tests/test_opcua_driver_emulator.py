"""The ``opcua`` driver against the emulated bioreactor controller (``firmware_stubs/bioreactor``,
the ``bioreactor`` emulator with a ``port``), through the real runtime: data with units and the
server's timestamps (the emulator's true process values among them), a server restart, Bad
values, a unit mismatch, setpoint writes.

The driver and the emulator share no code: units are checked against the UCUM codes written here,
the emulator's faults are injected through its own API. Every emulator start builds asyncua's
standard address space (seconds of CPU), so each test tells a whole story.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, wait_for, write_config
from test_opcua_driver import opcua_registry

from firmware_stubs.bioreactor.faults import Fault
from gateway import Plan, Quality, WriteRefusedError, load_plan
from gateway.runtime import Gateway
from gateway.runtime.instrument import InstrumentRunner
from gateway.store import SampleStore
from plugins.opcua.driver import OpcUaDriver

NAMESPACE = "urn:pat-gateway:emulator:bioreactor-controller"

NODES: list[dict[str, Any]] = [
    {"name": "temperature", "node": "dcu:BioreactorController.Temperature.PV", "unit": "Cel"},
    {"name": "ph", "node": "dcu:BioreactorController.pH.PV", "unit": "[pH]"},
    {"name": "do", "node": "dcu:BioreactorController.DissolvedOxygen.PV", "unit": "%"},
    {"name": "agitation", "node": "dcu:BioreactorController.Agitation.PV", "unit": "{rev}/min"},
    {
        "name": "air",
        "browse_path": ["dcu:BioreactorController", "dcu:GasFlows", "dcu:Air"],
        "unit": "L/min",
    },
    {"name": "base_total", "node": "dcu:BioreactorController.Pumps.BaseTotal", "unit": "mL"},
    {"name": "do_low", "node": "dcu:BioreactorController.Alarms.DOLow", "unit": "1"},
    # The emulator's true process values: GL is checked against g/L; the cell density has no
    # UNECE unit (UnitId -1), so the driver takes the configured unit on trust.
    {"name": "glucose_true", "node": "dcu:BioreactorController.Emulation.Glucose", "unit": "g/L"},
    {
        "name": "vcd_true",
        "node": "dcu:BioreactorController.Emulation.ViableCellDensity",
        "unit": "10*6/mL",
    },
    {
        "name": "temperature_sp",
        "node": f"nsu={NAMESPACE};s=BioreactorController.Temperature.SP",
        "unit": "Cel",
        "writable": True,
    },
]


def instrument(instrument_id: str, port: int, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": instrument_id,
        "driver": "opcua",
        "backoff": {"initial_s": 0.05, "max_s": 0.3},
        "options": {
            "url": f"opc.tcp://127.0.0.1:{port}",
            "namespaces": {"dcu": NAMESPACE},
            "timeout_s": 1.0,
            "recheck_interval_s": 0.5,
            "sampling_interval_ms": 100,
            "publishing_interval_ms": 100,
            "nodes": nodes,
        },
    }


@asynccontextmanager
async def gateway_with_controller(
    tmp_path: Path, *instruments: dict[str, Any], port: int, **emulator_options: Any
) -> AsyncIterator[tuple[Plan, Gateway]]:
    """The real runtime with a ``bioreactor`` emulator serving OPC UA on ``port`` (with more
    ``emulator_options`` if given)."""
    config = {
        "area": "reactor1",
        "store": {"path": str(tmp_path / "store.sqlite"), "commit_interval_ms": 20},
        "data_dir": str(tmp_path / "data"),
        "emulators": [{
            "id": "reactor", "type": "bioreactor",
            "options": {"port": port, "update_s": 0.1, "log_every_s": 0, **emulator_options},
        }],
        "instruments": list(instruments),
    }  # fmt: skip
    plan = load_plan(write_config(tmp_path / "gateway.yaml", config), opcua_registry())
    gateway = Gateway(plan)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop), name="test.gateway")
    try:
        await wait_for(lambda: gateway.started.is_set() or task.done(), within=60)
        if task.done():
            task.result()
        yield plan, gateway
    finally:
        stop.set()
        await task


def latest(gateway: Gateway, channel: str) -> tuple[Any, ...]:
    """(quality, value, reason) of the newest sample of a signal, or ()."""
    output = next(o for o in gateway.outputs if o.signal.id.endswith(f"/{channel}"))
    row = output.latest  # (def_id, seq, source_ts, gateway_ts, quality, value, reason)
    return (row[4], row[5], row[6]) if row is not None else ()


def stored(tmp_path: Path, glob: str) -> list[Any]:
    store = SampleStore(tmp_path / "store.sqlite", read_only=True)
    try:
        return list(store.samples(glob))
    finally:
        store.close()


@pytest.mark.asyncio
async def test_data_units_and_timestamps_then_a_restart_and_bad_values(tmp_path: Path) -> None:
    port = free_port()
    async with gateway_with_controller(tmp_path, instrument("dcu", port, NODES), port=port) as (
        plan,
        gateway,
    ):
        controller = plan.emulators[0].instance.controller  # type: ignore[attr-defined]
        driver = plan.instruments[0].driver
        assert isinstance(driver, OpcUaDriver)
        runner: InstrumentRunner = gateway.runners[0]
        channels = [n["name"] for n in NODES]

        def all_good() -> bool:
            return all(latest(gateway, c)[:1] == (Quality.GOOD,) for c in channels)

        def count(channel: str) -> int:
            return int(next(o for o in gateway.outputs if o.signal.id.endswith(f"/{channel}")).seq)

        await wait_for(all_good, within=15, what="good data from every node")
        await wait_for(lambda: count("temperature") >= 4, what="a few temperatures")
        assert (runner.sessions, driver.sessions) == (1, 1)

        # The server restarts: bad while it is down, then data again, with one new session.
        controller.inject(Fault.SERVER_RESTART)
        await wait_for(lambda: latest(gateway, "temperature")[0] == Quality.BAD, within=5)
        await asyncio.sleep(1.0)  # down a while: the runtime retries with backoff meanwhile
        controller.clear(Fault.SERVER_RESTART)
        back = time.monotonic()
        await wait_for(all_good, within=10, what="data after the restart")
        assert time.monotonic() - back < 5.0
        assert runner.sessions == driver.sessions and 2 <= driver.sessions <= 3

        # Bad values: the server answers, each value is Bad and says why; the session stays.
        controller.inject(Fault.BAD_VALUES)
        await wait_for(lambda: latest(gateway, "ph")[0] == Quality.BAD, within=5)
        assert latest(gateway, "ph")[2] == "BadSensorFailure"
        controller.clear(Fault.BAD_VALUES)
        await wait_for(all_good, within=5, what="good values again")
        settled = count("temperature")
        await wait_for(lambda: count("temperature") >= settled + 2, what="a few more")
        assert driver.sessions <= 3

    samples = stored(tmp_path, "reactor1/dcu/*")
    units = {s.signal.rsplit("/", 1)[1]: s.unit for s in samples}
    assert units["ph"] == "[pH]" and units["do"] == "%" and units["temperature"] == "Cel"
    assert units["air"] == "L/min" and units["base_total"] == "mL"
    assert units["glucose_true"] == "g/L" and units["vcd_true"] == "10*6/mL"
    glucose = [s.value for s in samples if s.signal.endswith("/glucose_true") and s.value]
    vcd = [s.value for s in samples if s.signal.endswith("/vcd_true") and s.value]
    assert glucose and all(0.0 < g <= 6.0 for g in glucose)  # 6 g/L at inoculation, then less
    assert vcd and all(v > 0.0 for v in vcd)
    temperature = [s for s in samples if s.signal.endswith("/temperature")]
    assert [s.seq for s in temperature] == list(range(len(temperature)))
    good = [s for s in temperature if s.quality is Quality.GOOD]
    assert len(good) >= 6 and all(isinstance(s.value, float) for s in good)
    # Source timestamps are the server's: earlier than receipt, and each value has its own.
    assert all(0 < s.gateway_ts - s.source_ts < 2_000_000_000 for s in good)
    assert all(s.source_ts % 1000 == 0 for s in good)  # OPC UA's 100 ns ticks, as µs
    assert len({s.source_ts for s in good}) == len(good)
    down = [s for s in temperature if s.quality is Quality.BAD and s.value is None]
    assert down and (down[0].reason or "").startswith("unreachable: ")
    bad_values = [s for s in samples if s.signal.endswith("/ph") and s.reason == "BadSensorFailure"]
    assert bad_values and all(s.quality is Quality.BAD for s in bad_values)
    alarms = [s for s in samples if s.signal.endswith("/do_low") and s.quality is Quality.GOOD]
    assert alarms and all(s.value in (0, 1) for s in alarms)  # a Boolean, stored as 0 or 1


@pytest.mark.asyncio
async def test_a_unit_mismatch_and_a_missing_node_are_bad_alone_in_one_session(
    tmp_path: Path,
) -> None:
    port = free_port()
    kelvin = [
        {"name": "temperature", "node": "dcu:BioreactorController.Temperature.PV", "unit": "K"},
        {"name": "pressure", "node": "dcu:BioreactorController.Pressure.PV", "unit": "mbar"},
        *(n for n in NODES if n["name"] in ("do", "air")),
    ]
    right = [n for n in NODES if n["name"] in ("ph", "temperature_sp")]
    async with gateway_with_controller(
        tmp_path, instrument("kelvin", port, kelvin), instrument("dcu", port, right), port=port
    ) as (plan, gateway):
        runner = gateway.runners[0]
        mismatch = "unit mismatch: node temperature reports °C (Cel), configured K"
        await wait_for(
            lambda: all(latest(gateway, c)[:1] == (Quality.GOOD,) for c in ("do", "air", "ph")),
            within=15,
            what="the usable nodes flowing",
        )
        assert latest(gateway, "temperature") == (Quality.BAD, None, mismatch)
        assert latest(gateway, "pressure") == (Quality.BAD, None, "BadNodeIdUnknown")
        driver = plan.instruments[0].driver
        assert isinstance(driver, OpcUaDriver)
        # Looked for again within the session, which stays: no reconnect, no new session.
        await wait_for(lambda: driver.rechecks >= 1, within=30, what="a recheck")
        assert (runner.failures, runner.sessions, driver.sessions) == (0, 1, 1)

        # Setpoint writes through the driver, checked by the controller itself.
        driver = plan.instruments[1].driver
        assert isinstance(driver, OpcUaDriver)
        await driver.write("temperature_sp", 36.5)
        await wait_for(lambda: latest(gateway, "temperature_sp")[1] == 36.5, within=5)
        with pytest.raises(WriteRefusedError, match="refused by the server: BadOutOfRange"):
            await driver.write("temperature_sp", 99.0)
        with pytest.raises(WriteRefusedError):
            await driver.write("ph", 7.2)
    samples = stored(tmp_path, "reactor1/kelvin/temperature")
    assert [(s.quality, s.reason) for s in samples] == [(Quality.BAD, mismatch)]
    assert all(s.unit == "K" for s in samples)
