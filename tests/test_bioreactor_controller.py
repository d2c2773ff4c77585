"""Tests for the emulated bioreactor controller: an OPC UA server showing the shared process run.

The loopback tests read the emulator with asyncua's own client only (no gateway code), and check
what it serves against tables written here, independently of the emulator's: node ids, units
and their unit ids (UNECE common codes packed by hand), ranges, timestamps, writes and faults.
Every server start builds asyncua's standard address space (seconds of CPU), so each server test
checks a whole story rather than one fact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.ua.uaerrors import (
    BadOutOfRange,
    BadTypeMismatch,
    BadUserAccessDenied,
    BadWriteNotSupported,
    UaError,
)
from conftest import plan_for, running, wait_for
from pydantic import ValidationError

from firmware_stubs.bioreactor import FedBatchModel, ProcessParams, hub
from firmware_stubs.bioreactor.dcu import (
    CELSIUS,
    GRAM_PER_LITRE,
    HOUR,
    LITRE_PER_MINUTE,
    MILLILITRE,
    MILLIMOLE_PER_LITRE,
    MILLION_CELLS_PER_ML,
    PERCENT,
    PH,
    RPM,
    AgitationDrive,
    readings,
)
from firmware_stubs.bioreactor.faults import Fault
from firmware_stubs.bioreactor.plugin import (
    BioreactorEmulator,
    BioreactorOptions,
    pat_gateway_register_emulators,
)
from gateway import GatewayError, PluginContext, PluginKind, Registry

NAMESPACE = "urn:pat-gateway:emulator:bioreactor-controller"
UNITS_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
UPDATE_S = 0.05

#: UNECE common code -> (UnitId per OPC UA Part 8, DisplayName), written out by hand.
UNECE = {
    "CEL": (4408652, "°C"),
    "P1": (20529, "%"),
    "RPM": (5394509, "r/min"),
    "L2": (19506, "l/min"),
    "MLT": (5065812, "ml"),
    "GL": (18252, "g/l"),
    "M33": (5059379, "mmol/l"),
    "HUR": (4740434, "h"),
    # Rec. 20 has no code for cells per volume: "no unit id" and a display name for people.
    "cells": (-1, "10⁶ cells/mL"),
}

#: Every variable below BioreactorController: path -> (unit code, EURange, writable). Unit
#: code "pH" = Q30 (5321520, "pH"); None = a Boolean alarm; EURange None = none.
VARIABLES: dict[str, tuple[str | None, tuple[float, float] | None, bool]] = {
    "Temperature.PV": ("CEL", (0.0, 50.0), False),
    "Temperature.SP": ("CEL", (0.0, 50.0), True),
    "pH.PV": ("pH", (0.0, 14.0), False),
    "pH.SP": ("pH", (0.0, 14.0), True),
    "DissolvedOxygen.PV": ("P1", (0.0, 100.0), False),
    "DissolvedOxygen.SP": ("P1", (0.0, 100.0), True),
    "Agitation.PV": ("RPM", (0.0, 1000.0), False),
    "Agitation.SP": ("RPM", (0.0, 1000.0), True),
    # Full scale of the mass-flow controllers for the default 2 L working volume.
    "GasFlows.Air": ("L2", (0.0, 0.1), False),
    "GasFlows.O2": ("L2", (0.0, 0.1), False),
    "GasFlows.CO2": ("L2", (0.0, 0.02), False),
    "GasFlows.N2": ("L2", (0.0, 0.1), False),
    "Pumps.BaseTotal": ("MLT", None, False),
    "Pumps.AcidTotal": ("MLT", None, False),
    "Pumps.FeedTotal": ("MLT", None, False),
    "Batch.Age": ("HUR", None, False),
    "Alarms.TemperatureDeviation": (None, None, False),
    "Alarms.pHDeviation": (None, None, False),
    "Alarms.DOLow": (None, None, False),
    # The emulated process's true values, next to what a real controller has.
    "Emulation.Glucose": ("GL", None, False),
    "Emulation.Lactate": ("GL", None, False),
    "Emulation.Glutamine": ("M33", None, False),
    "Emulation.ViableCellDensity": ("cells", None, False),
    "Emulation.Titer": ("GL", None, False),
    "Emulation.pH": ("pH", None, False),
}

#: Emulation leaf -> the ProcessState field it shows.
TRUTH = {
    "Glucose": "glucose_g_L",
    "Lactate": "lactate_g_L",
    "Glutamine": "glutamine_mM",
    "ViableCellDensity": "vcd_e6_per_mL",
    "Titer": "titer_g_L",
    "pH": "ph",
}


def pack(code: str) -> int:
    """OPC UA Part 8 §5.6.3: the common code's ASCII characters, first one highest."""
    value = 0
    for char in code:
        value = (value << 8) | ord(char)
    return value


@pytest.fixture(autouse=True)
def empty_hub() -> Iterator[None]:
    """Each test starts with no process registered and must leave none behind."""
    assert not hub._processes
    yield
    leftover = sorted(hub._processes)
    hub._processes.clear()
    assert not leftover, f"test left processes registered: {leftover}"


def emulator(**raw: Any) -> BioreactorEmulator:
    """A bioreactor emulator named "reactor" serving on a free loopback port, quickly updated,
    one process hour per second so trends show within a test."""
    raw = {"port": 0, "update_s": UPDATE_S, "log_every_s": 0, "time_scale": 3600, **raw}
    return BioreactorEmulator(
        BioreactorOptions.model_validate(raw), PluginContext("reactor", Path())
    )


@asynccontextmanager
async def connected(endpoint: str) -> AsyncIterator[tuple[Client, int]]:
    """An asyncua client session and the controller's namespace index, looked up by URI."""
    async with Client(endpoint, timeout=2) as client:
        yield client, await client.get_namespace_index(NAMESPACE)


def node(client: Client, ns: int, path: str) -> Node:
    return client.get_node(f"ns={ns};s=BioreactorController.{path}")


async def read(client: Client, ns: int, path: str) -> ua.DataValue:
    return await node(client, ns, path).read_data_value(raise_on_bad_status=False)


async def value_of(client: Client, ns: int, path: str) -> Any:
    return (await read(client, ns, path)).Value.Value


def double(value: float) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, ua.VariantType.Double))


async def wait_for_value(client: Client, ns: int, path: str, ok: Any, within: float = 5.0) -> Any:
    """Poll ``path`` until ``ok(value)``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await value_of(client, ns, path)
        if ok(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{path} = {value!r} after {within} s")
        await asyncio.sleep(UPDATE_S)


async def wait_for_dv(
    client: Client, ns: int, path: str, ok: Any, within: float = 5.0
) -> ua.DataValue:
    """Poll ``path``'s DataValue until ``ok(it)``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        dv = await read(client, ns, path)
        if ok(dv):
            return dv
        if time.monotonic() > deadline:
            pytest.fail(f"{path}: {dv} after {within} s")
        await asyncio.sleep(UPDATE_S)


def is_sensor_failure(dv: ua.DataValue) -> bool:
    return dv.StatusCode.value == ua.StatusCodes.BadSensorFailure and dv.Value.Value is None


# --------------------------------------------------------------------------- pure parts


def test_units_are_the_unece_codes_packed_into_unit_ids() -> None:
    for unit in (
        CELSIUS,
        PERCENT,
        RPM,
        LITRE_PER_MINUTE,
        MILLILITRE,
        GRAM_PER_LITRE,
        MILLIMOLE_PER_LITRE,
        HOUR,
    ):
        assert (unit.unit_id, unit.display_name) == UNECE[unit.code]
        assert unit.unit_id == pack(unit.code)
    assert (PH.unit_id, PH.display_name) == (5321520, "pH")
    assert (MILLION_CELLS_PER_ML.unit_id, MILLION_CELLS_PER_ML.display_name) == UNECE["cells"]
    assert MILLION_CELLS_PER_ML.code == ""


def test_readings_follow_the_process_controllers() -> None:
    model = FedBatchModel()
    p = model.params
    drive = AgitationDrive(noise_rpm=0.0)
    s = model.state
    calm = readings(s, p, drive)
    assert calm["Temperature.PV"] == s.temperature_C and calm["pH.SP"] == s.ph_sp
    assert calm["Agitation.PV"] == calm["Agitation.SP"] == 150.0
    assert not any(calm[f"Alarms.{a}"] for a in ("TemperatureDeviation", "pHDeviation", "DOLow"))
    assert calm["Pumps.AcidTotal"] == 0.0
    for leaf, field in TRUTH.items():
        assert calm[f"Emulation.{leaf}"] == getattr(s, field), leaf

    def at(**change: float) -> dict[str, float | bool]:
        return readings(dataclasses.replace(s, **change), p, drive)

    # kLa at its minimum: least air, no O2; at its maximum: most air and most O2.
    low, high = at(kla_per_h=p.kla_min_per_h), at(kla_per_h=p.kla_max_per_h)
    assert low["GasFlows.Air"] == pytest.approx(0.01) and low["GasFlows.O2"] == 0.0
    assert high["GasFlows.Air"] == pytest.approx(0.1) and high["GasFlows.O2"] == pytest.approx(0.1)
    # The pH controller's acid side sparges CO2; its base side none.
    assert at(ph_output_pct=-100.0)["GasFlows.CO2"] == pytest.approx(0.02)
    assert at(ph_output_pct=50.0)["GasFlows.CO2"] == 0.0
    # N2 strips oxygen only when DO is above its setpoint and kLa cannot go lower.
    assert at(kla_per_h=p.kla_min_per_h, do_pct=70.0)["GasFlows.N2"] == pytest.approx(0.1)
    assert at(kla_per_h=p.kla_max_per_h, do_pct=70.0)["GasFlows.N2"] == 0.0
    assert at(base_added_mL=12.5, fed_volume_L=0.04)["Pumps.FeedTotal"] == pytest.approx(40.0)
    assert at(temperature_C=s.temperature_sp_C + 1.5)["Alarms.TemperatureDeviation"]
    # The alarm, like the loop, goes by what the probe reads, not by the true pH.
    assert at(ph_probe=s.ph_sp - 0.2)["Alarms.pHDeviation"]
    assert not at(ph=s.ph_sp - 0.2)["Alarms.pHDeviation"]
    drifted = at(ph_probe=s.ph_sp + 0.05, ph=s.ph_sp - 0.3)
    assert (drifted["pH.PV"], drifted["Emulation.pH"]) == (s.ph_sp + 0.05, s.ph_sp - 0.3)
    assert at(time_h=26.5)["Batch.Age"] == 26.5
    assert at(do_pct=s.do_sp_pct - 15.0)["Alarms.DOLow"]
    assert not at(do_pct=s.do_sp_pct + 30.0)["Alarms.DOLow"]


def test_the_model_reports_its_ph_controller_output() -> None:
    model = FedBatchModel(ProcessParams())
    model.set_setpoints(ph=6.5)
    model.advance(0.5)
    assert model.state.ph_output_pct == -100.0  # full CO2 to bring the pH down
    model.set_setpoints(ph=7.5)
    model.advance(0.5)
    assert model.state.ph_output_pct == 100.0  # full base


def test_agitation_follows_its_setpoint_however_time_is_split() -> None:
    one, many = AgitationDrive(noise_rpm=0.0), AgitationDrive(noise_rpm=0.0)
    one.setpoint_rpm = many.setpoint_rpm = 300.0
    one.step(1.0)
    for _ in range(10):
        many.step(0.1)
    assert one.speed_rpm == pytest.approx(many.speed_rpm)
    assert one.speed_rpm == pytest.approx(300.0 - 150.0 * math.exp(-1.0))
    assert AgitationDrive(seed=1).reading() != AgitationDrive(seed=2).reading()


@pytest.mark.parametrize(
    "raw",
    [
        {"faults": [{"fault": "frozen", "after_s": 1}]},  # faults without a controller
        {"port": 0, "faults": [{"fault": "server_restart", "after_s": 1}]},  # never back
        {"port": 0, "faults": [{"fault": "melt", "after_s": 1}]},
        {"port": 70000},
        {"port": 0, "update_s": 0},
    ],
)
def test_bad_controller_options_are_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BioreactorOptions.model_validate(raw)


@pytest.mark.asyncio
async def test_without_a_port_there_is_no_server() -> None:
    reactor = emulator(port=None)
    async with reactor:
        assert reactor.endpoint == "process bioreactor 'reactor'" and reactor.port is None
        with pytest.raises(RuntimeError, match="no OPC UA controller"):
            _ = reactor.controller
        assert not [t for t in asyncio.all_tasks() if "opcua" in t.get_name()]


# --------------------------------------------------------------------------- over loopback


@pytest.mark.asyncio
async def test_the_address_space_carries_units_ranges_and_fresh_values() -> None:
    async with emulator() as reactor, connected(reactor.endpoint) as (client, ns):
        assert reactor.endpoint == f"opc.tcp://127.0.0.1:{reactor.port}" and reactor.port > 0
        assert (await client.get_namespace_array())[ns] == NAMESPACE

        root = await client.nodes.objects.get_child(f"{ns}:BioreactorController")
        assert root.nodeid == ua.NodeId("BioreactorController", ns)
        names = {
            (await child.read_browse_name()).to_string() for child in await root.get_children()
        }
        groups = ("Identification", "Temperature", "pH", "DissolvedOxygen", "Agitation")
        more = ("GasFlows", "Pumps", "Batch", "Alarms", "Emulation")
        assert names == {f"{ns}:{g}" for g in (*groups, *more)}
        emulation = await node(client, ns, "Emulation").read_description()
        assert "no real controller" in emulation.Text
        ident = {
            (await p.read_browse_name()).Name: await p.read_value()
            for p in await node(client, ns, "Identification").get_properties()
        }
        assert ident == {
            "Manufacturer": "PAT Gateway emulator",
            "Model": "Fed-batch controller",
            "SerialNumber": "EMU-reactor",
            "SoftwareRevision": "3.2.0",
            "HardwareRevision": "B",
        }

        first = {}
        for path, (code, eu_range, writable) in VARIABLES.items():
            var = node(client, ns, path)
            group, leaf = path.split(".")
            assert await var.read_browse_name() == ua.QualifiedName(leaf, ns)
            assert var in await node(client, ns, group).get_children()
            access = await var.get_user_access_level()
            assert (ua.AccessLevel.CurrentWrite in access) is writable, path
            dv = await var.read_data_value()
            assert dv.StatusCode.is_good(), path
            age = datetime.now(UTC) - dv.SourceTimestamp
            assert timedelta(0) <= age < timedelta(seconds=2), path
            assert dv.ServerTimestamp is not None
            first[path] = dv
            if code is None:
                assert dv.Value.VariantType == ua.VariantType.Boolean and dv.Value.Value is False
                assert await var.read_data_type() == ua.NodeId(ua.ObjectIds.Boolean)
                continue
            assert dv.Value.VariantType == ua.VariantType.Double, path
            assert await var.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
            eu_node = await var.get_child("0:EngineeringUnits")
            eu = await eu_node.read_value()
            unit_id, display = UNECE[code] if code != "pH" else (5321520, "pH")
            assert eu.NamespaceUri == UNITS_NAMESPACE, path
            assert (eu.UnitId, eu.DisplayName.Text) == (unit_id, display), path
            assert eu_node.nodeid == ua.NodeId(f"BioreactorController.{path}.EngineeringUnits", ns)
            ranges = [
                p for p in await var.get_properties() if p.nodeid.Identifier.endswith("EURange")
            ]
            if eu_range is None:
                assert not ranges, path
            else:
                got = await ranges[0].read_value()
                assert (got.Low, got.High) == pytest.approx(eu_range), path
                low, high = eu_range
                assert low <= dv.Value.Value <= high, path

        # Values are recomputed every update, each with a new source timestamp.
        before = first["Temperature.PV"].SourceTimestamp
        later = await wait_for_dv(
            client, ns, "Temperature.PV", lambda dv: dv.SourceTimestamp > before
        )
        assert later.Value.Value != first["Temperature.PV"].Value.Value
        clock = await client.nodes.server.get_child(["0:ServerStatus", "0:CurrentTime"])
        assert datetime.now(UTC) - await clock.read_value() < timedelta(seconds=1)

        # A measured value is not for clients to write.
        with pytest.raises(BadUserAccessDenied):
            await node(client, ns, "Temperature.PV").write_value(double(20.0))


@pytest.mark.asyncio
async def test_the_true_process_values_are_served_and_faulted_like_the_others() -> None:
    async with emulator() as reactor, connected(reactor.endpoint) as (client, ns):
        controller = reactor.controller
        model = controller.clock.model
        # Let the culture grow a while (one process hour per second), then bracket a read: only
        # the controller's updates advance the model, so the model's state just before and just
        # after the read are those of the updates before and after whatever the read shows.
        await asyncio.sleep(0.5)
        before = model.state
        served = {leaf: await read(client, ns, f"Emulation.{leaf}") for leaf in TRUTH}
        after = model.state
        assert after.time_h > 0.4
        for leaf, field in TRUTH.items():
            dv = served[leaf]
            assert dv.StatusCode.is_good() and dv.Value.VariantType == ua.VariantType.Double
            low, high = sorted((getattr(before, field), getattr(after, field)))
            assert low - 1e-12 <= dv.Value.Value <= high + 1e-12, (leaf, dv.Value.Value)
        assert served["Glucose"].Value.Value < 6.0 < served["Glucose"].Value.Value + 0.1
        assert served["ViableCellDensity"].Value.Value > 0.5

        # Frozen: nothing advances the process, so the last update is exactly the model's state,
        # with the same timestamp as every other variable of that update.
        controller.inject(Fault.FROZEN)
        await asyncio.sleep(2 * UPDATE_S)  # an update under way may still land
        state = model.state
        stamp = (await read(client, ns, "Temperature.PV")).SourceTimestamp
        for leaf, field in TRUTH.items():
            dv = await read(client, ns, f"Emulation.{leaf}")
            assert dv.Value.Value == getattr(state, field), leaf
            assert dv.SourceTimestamp == dv.ServerTimestamp == stamp, leaf
        await asyncio.sleep(3 * UPDATE_S)
        assert (await read(client, ns, "Emulation.Glucose")).SourceTimestamp == stamp
        controller.clear(Fault.FROZEN)

        # Bad values: the true values are as Bad as the measurements, and Good again after.
        controller.inject(Fault.BAD_VALUES)
        for leaf in TRUTH:
            await wait_for_dv(client, ns, f"Emulation.{leaf}", is_sensor_failure)
        controller.clear(Fault.BAD_VALUES)
        good = await wait_for_dv(client, ns, "Emulation.Lactate", lambda d: d.StatusCode.is_good())
        assert good.SourceTimestamp > stamp

        with pytest.raises(BadUserAccessDenied):
            await node(client, ns, "Emulation.Glucose").write_value(double(1.0))


@pytest.mark.asyncio
async def test_setpoint_writes_move_the_process_and_raise_alarms() -> None:
    async with emulator() as reactor, connected(reactor.endpoint) as (client, ns):
        model = reactor.controller.clock.model
        before = await value_of(client, ns, "Temperature.PV")
        assert not await value_of(client, ns, "Alarms.TemperatureDeviation")

        await node(client, ns, "Temperature.SP").write_value(double(30.0))
        await node(client, ns, "pH.SP").write_value(double(7.3))
        await node(client, ns, "DissolvedOxygen.SP").write_value(double(95.0))
        await node(client, ns, "Agitation.SP").write_value(double(300.0))
        state = model.state
        assert (state.temperature_sp_C, state.ph_sp, state.do_sp_pct) == (30.0, 7.3, 95.0)
        assert reactor.controller.agitation.setpoint_rpm == 300.0

        for alarm in ("TemperatureDeviation", "pHDeviation", "DOLow"):
            await wait_for_value(client, ns, f"Alarms.{alarm}", lambda v: v is True)
        await wait_for_value(client, ns, "Temperature.SP", lambda v: v == 30.0)
        # One process hour per second: the culture cools towards 30 °C within a second.
        await wait_for_value(client, ns, "Temperature.PV", lambda v: v < before - 1.0)
        # The stirrer speeds up towards 300 r/min (a lag of about a second).
        await wait_for_value(client, ns, "Agitation.PV", lambda v: v > 225.0)
        # The DO controller opens the gas cascade to reach 95 %.
        await wait_for_value(client, ns, "GasFlows.Air", lambda v: v > 0.02)

        # Outside the range, not finite, or not a Double: refused, and the process unchanged.
        for bad in (double(80.0), double(-1.0), double(math.nan)):
            with pytest.raises(BadOutOfRange):
                await node(client, ns, "Temperature.SP").write_value(bad)
        with pytest.raises(BadTypeMismatch):
            await node(client, ns, "pH.SP").write_value(
                ua.DataValue(ua.Variant(7, ua.VariantType.Int32))
            )
        with pytest.raises(BadWriteNotSupported):
            await node(client, ns, "pH.SP").write_value(
                ua.DataValue(ua.Variant(7.1), StatusCode=ua.StatusCode(ua.StatusCodes.BadNoData))
            )
        assert (model.state.temperature_sp_C, model.state.ph_sp) == (30.0, 7.3)


@pytest.mark.asyncio
async def test_standalone_from_the_plugin_factory_with_faults_scheduled_and_injected() -> None:
    registry = Registry()
    pat_gateway_register_emulators(registry)
    registration = registry.get(PluginKind.EMULATOR, "bioreactor")
    assert registration is not None
    # What 'patgw emulate bioreactor --port 0 --option faults=...' builds.
    options = registration.options_model.model_validate(
        {
            "host": "127.0.0.1",
            "port": 0,
            "update_s": UPDATE_S,
            "log_every_s": 0,
            "faults": [
                # Wide margins: the test must see the bad values, then a good one, before
                # the restart, also on a loaded machine (0.2 s between them flickered).
                {"fault": "bad_values", "after_s": 0.3, "for_s": 1.5},
                {"fault": "server_restart", "after_s": 4.0, "for_s": 0.3},
            ],
        }
    )
    reactor = registration.factory(options, PluginContext("bioreactor", Path("data")))
    async with reactor:
        controller = reactor.controller
        port = reactor.port
        assert reactor.endpoint == f"opc.tcp://127.0.0.1:{port}" and port > 0
        names = {t.get_name() for t in asyncio.all_tasks()}
        for task in ("opcua.update", "opcua.listener", "faults"):
            assert f"bioreactor.bioreactor.{task}" in names

        # Scheduled: every value Bad for a while, then Good again; then the server restarts.
        async with connected(reactor.endpoint) as (client, ns):
            for path in ("pH.PV", "Agitation.SP", "GasFlows.O2", "Alarms.DOLow"):
                await wait_for_dv(client, ns, path, is_sensor_failure)
            dv = await wait_for_dv(client, ns, "pH.PV", lambda d: d.StatusCode.is_good())
            assert 6.5 < dv.Value.Value < 7.5
            await wait_for(lambda: not controller.is_listening, what="scheduled restart")
            with pytest.raises((ConnectionError, UaError, TimeoutError)):
                await value_of(client, ns, "pH.PV")
        await wait_for(lambda: controller.is_listening, what="back after the restart")
        assert reactor.port == port

        async with connected(reactor.endpoint) as (client, ns):
            assert (await read(client, ns, "pH.PV")).StatusCode.is_good()
            # Injected: frozen values keep their value and timestamp until cleared.
            controller.inject(Fault.FROZEN)
            assert controller.active_faults == {Fault.FROZEN}
            await asyncio.sleep(2 * UPDATE_S)  # an update under way may still land
            frozen = await read(client, ns, "Temperature.PV")
            await asyncio.sleep(5 * UPDATE_S)
            assert await read(client, ns, "Temperature.PV") == frozen
            controller.clear_faults()
            await wait_for_dv(client, ns, "Temperature.PV", lambda d: d != frozen)

            # Injected: the server is down (sessions die, connections refused) until cleared.
            controller.inject(Fault.SERVER_RESTART)
            await wait_for(lambda: not controller.is_listening, within=5, what="server down")
            with pytest.raises((ConnectionError, UaError, TimeoutError)):
                await value_of(client, ns, "Temperature.PV")
            with pytest.raises(ConnectionRefusedError):
                await Client(reactor.endpoint, timeout=1).connect()
        controller.clear(Fault.SERVER_RESTART)
        await wait_for(lambda: controller.is_listening, within=5, what="server up")
        async with connected(reactor.endpoint) as (client, ns):
            assert (await read(client, ns, "Temperature.PV")).StatusCode.is_good()
        started = time.monotonic()
    assert time.monotonic() - started < 1.0, "stop took too long"
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("bioreactor.")]


@pytest.mark.asyncio
async def test_a_taken_port_cannot_start_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        reactor = emulator(port=port)
        started = time.monotonic()
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await reactor.__aenter__()
        # Found before asyncua spends seconds building a server.
        assert time.monotonic() - started < 1.0
        assert not hub._processes

        # The gateway reports it as the emulator that cannot start.
        plan = plan_for(
            tmp_path,
            emulators=[{"id": "reactor", "type": "bioreactor", "options": {"port": port}}],
        )
        with pytest.raises(GatewayError, match=r"emulator 'reactor' \(bioreactor\) cannot start"):
            async with running(plan):
                pass
