"""The perfusion run as the gateway meets it (issue 15, decision 0024): the emulator's options
and their checks at ``patgw check``, its faults and events, and the controller's perfusion nodes
over real OPC UA, read and written with asyncua's own client (no gateway code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.uaerrors import BadOutOfRange, BadUserAccessDenied
from conftest import free_port, patgw, wait_for, write_config
from pydantic import ValidationError
from test_bioreactor_controller import (  # empty_hub: the autouse fixture, for these tests too
    UPDATE_S,
    connected,
    double,
    empty_hub,  # noqa: F401
    node,
    value_of,
    wait_for_value,
)
from test_opcua_driver_emulator import gateway_with_controller, instrument, latest, stored

from firmware_stubs.bioreactor.plugin import BioreactorEmulator, BioreactorOptions
from gateway import PluginContext, Quality, WriteRefusedError
from plugins.opcua.driver import OpcUaDriver

#: The perfusion run's variables: path -> (UnitId, DisplayName, EURange, writable); UnitIds are
#: the UNECE common codes packed by hand (LD, MBR, LTR, GL, C62); None = no unit.
PERFUSION_VARIABLES: dict[str, tuple[int | None, str, tuple[float, float] | None, bool]] = {
    "Perfusion.Rate.PV": (0x4C44, "l/d", (0.0, 10.0), False),
    "Perfusion.Rate.SP": (0x4C44, "l/d", (0.0, 10.0), True),
    "Bleed.Rate.PV": (0x4C44, "l/d", (0.0, 2.0), False),
    "Bleed.Rate.SP": (0x4C44, "l/d", (0.0, 2.0), True),
    "Harvest.Flow": (0x4C44, "l/d", (0.0, 10.0), False),
    "Retention.TMP": (0x4D4252, "mbar", (0.0, 1000.0), False),
    "Volume": (0x4C5452, "l", (0.0, 3.0), False),
    "Emulation.HarvestTiter": (0x474C, "g/l", None, False),
    "Emulation.HarvestHCP": (0x474C, "g/l", None, False),
    "Emulation.HCP": (0x474C, "g/l", None, False),
    "Emulation.Sieving": (0x433632, "1", None, False),
    "Emulation.SpecificProductivity": (-1, "pg/(cell·d)", None, False),
}


def emulator(**raw: Any) -> BioreactorEmulator:
    """A perfusion bioreactor "reactor" on a free loopback port, one process hour a second."""
    raw = {
        "mode": "perfusion",
        "port": 0,
        "update_s": UPDATE_S,
        "log_every_s": 0,
        "time_scale": 3600,
        "vcd_e6_per_mL": 40.0,
        **raw,
    }
    return BioreactorEmulator(
        BioreactorOptions.model_validate(raw), PluginContext("reactor", Path())
    )


# --------------------------------------------------------------------------- options


def test_the_options_make_a_perfusion_run_scaled_to_its_volume() -> None:
    options = BioreactorOptions.model_validate({"mode": "perfusion", "volume_L": 10.0})
    perfusion = options.perfusion()
    assert perfusion is not None
    # The defaults' vessel volumes a day (1.3 and 0.15), in a 10 L vessel.
    assert (perfusion.perfusion_L_per_d, perfusion.bleed_L_per_d) == pytest.approx((13.0, 1.5))
    assert options.params().kla_max_per_h > 100.0  # gassing for perfusion densities
    assert BioreactorOptions().perfusion() is None
    assert BioreactorOptions().params().kla_max_per_h == 60.0  # fed-batch as it was


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"bleed_L_per_d": 0.5}, "options of mode perfusion only"),
        ({"faults": [{"fault": "filter_fouling", "after_s": 0, "rate_per_h": 0.1}]}, "perfusion"),
        ({"faults": [{"fault": "media_lot_change", "after_s": 0}]}, "needs mode perfusion"),
        (
            {
                "mode": "perfusion",
                "faults": [{"fault": "media_lot_change", "after_s": 0, "for_s": 5}],
            },
            "an event",
        ),
        (
            {"mode": "perfusion", "faults": [{"fault": "filter_fouling", "after_s": 0}]},
            "rate_per_h",
        ),
        (
            {"faults": [{"fault": "temperature_excursion", "after_s": 0, "delta_C": 2}]},
            "needs for_s > 0",
        ),
        (
            {
                "faults": [
                    {"fault": "temperature_excursion", "after_s": 0, "for_s": 1, "delta_C": 0}
                ]
            },
            "delta_C not 0",
        ),
        ({"faults": [{"fault": "growth_upset", "after_s": 0, "delta_C": 1}]}, "only to fault"),
        ({"faults": [{"fault": "growth_upset", "after_s": 0, "max_loss": 0.5}]}, "only to fault"),
        ({"port": 0, "setpoint_limits": {"Bleed": [0, 1]}}, "needs mode perfusion"),
        ({"mode": "perfusion", "perfusion_L_per_d": 2.0, "bleed_L_per_d": 2.5}, "harvest"),
    ],
)
def test_bad_perfusion_options_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        BioreactorOptions.model_validate(raw)
    assert message in str(err.value)


def _check(tmp_path: Path, options: dict[str, Any]) -> tuple[int, str]:
    config = {
        "area": "reactor1",
        "emulators": [{"id": "reactor", "type": "bioreactor", "options": options}],
    }
    result = patgw("check", str(write_config(tmp_path / "gateway.yaml", config)))
    return result.returncode, result.stderr


def test_check_refuses_a_perfusion_that_cannot_reach_a_steady_state(tmp_path: Path) -> None:
    base = {"mode": "perfusion", "volume_L": 2.0}
    assert _check(tmp_path, {**base, "perfusion_L_per_d": 2.6, "bleed_L_per_d": 0.3}) == (0, "")
    # Bleed above growth: 1.9 L/d from 2 L is 0.95 volumes a day, the cells grow 0.9 at most.
    code, err = _check(tmp_path, {**base, "perfusion_L_per_d": 3.0, "bleed_L_per_d": 1.9})
    assert code == 2
    assert err.startswith("emulators[0].options: no steady state: bleed_L_per_d (1.9)")
    assert "wash out" in err
    # Bleed at or above the perfusion: no harvest, the volume cannot be held.
    code, err = _check(tmp_path, {**base, "perfusion_L_per_d": 0.3, "bleed_L_per_d": 0.3})
    assert code == 2
    assert "bleed_L_per_d (0.3) must be below perfusion_L_per_d (0.3)" in err


# --------------------------------------------------------------------------- over OPC UA


@pytest.mark.asyncio
async def test_the_perfusion_controller_serves_its_pumps_filter_and_medium() -> None:
    reactor = emulator(setpoint_limits={"Bleed": [0.0, 0.8]})
    async with reactor, connected(reactor.endpoint) as (client, ns):
        model = reactor.controller.clock.model
        ident = node(client, ns, "Identification")
        models = [
            await p.read_value()
            for p in await ident.get_properties()
            if (await p.read_browse_name()).Name == "Model"
        ]
        assert models == ["Perfusion controller"]
        # Nested objects: BioreactorController/Perfusion/Rate/SP; Volume directly below.
        rate = await client.nodes.objects.get_child(
            [f"{ns}:BioreactorController", f"{ns}:Perfusion", f"{ns}:Rate", f"{ns}:SP"]
        )
        assert rate.nodeid == ua.NodeId("BioreactorController.Perfusion.Rate.SP", ns)
        volume = await client.nodes.objects.get_child(
            [f"{ns}:BioreactorController", f"{ns}:Volume"]
        )
        assert await volume.read_value() == 2.0

        for path, (unit_id, display, eu_range, writable) in PERFUSION_VARIABLES.items():
            var = node(client, ns, path)
            dv = await var.read_data_value()
            assert dv.StatusCode.is_good() and dv.Value.VariantType == ua.VariantType.Double, path
            access = await var.get_user_access_level()
            assert (ua.AccessLevel.CurrentWrite in access) is writable, path
            eu = await (await var.get_child("0:EngineeringUnits")).read_value()
            assert (eu.UnitId, eu.DisplayName.Text) == (unit_id, display), path
            ranges = [p for p in await var.get_properties() if "EURange" in str(p.nodeid)]
            if eu_range is None:
                assert not ranges, path
            else:
                got = await ranges[0].read_value()
                assert (got.Low, got.High) == pytest.approx(eu_range), path
        lot = await node(client, ns, "Media.Lot").read_data_value()
        assert lot.Value.VariantType == ua.VariantType.Int32 and lot.Value.Value == 1
        assert await value_of(client, ns, "Emulation.Deviation") is False

        # The initial rates; the harvest is the medium (and base) less the bleed.
        assert await value_of(client, ns, "Perfusion.Rate.SP") == 2.6
        assert await value_of(client, ns, "Bleed.Rate.PV") == 0.3
        harvest = await value_of(client, ns, "Harvest.Flow")
        assert 2.3 <= harvest < 2.4

        # Written setpoints go into the process and show in the PVs and the harvest.
        await node(client, ns, "Perfusion.Rate.SP").write_value(double(3.2))
        await node(client, ns, "Bleed.Rate.SP").write_value(double(0.5))
        assert (model.state.perfusion_sp_L_per_d, model.state.bleed_sp_L_per_d) == (3.2, 0.5)
        await wait_for_value(client, ns, "Perfusion.Rate.PV", lambda v: v == 3.2)
        await wait_for_value(client, ns, "Bleed.Rate.PV", lambda v: v == 0.5)
        await wait_for_value(client, ns, "Harvest.Flow", lambda v: 2.7 <= v < 2.8)
        # Beyond the operating limit: accepted clamped; beyond the pump's range: refused.
        await node(client, ns, "Bleed.Rate.SP").write_value(double(1.5))
        assert await value_of(client, ns, "Bleed.Rate.SP") == 0.8
        for bad in (double(2.5), double(-0.1)):
            with pytest.raises(BadOutOfRange):
                await node(client, ns, "Bleed.Rate.SP").write_value(bad)
        with pytest.raises(BadOutOfRange):
            await node(client, ns, "Perfusion.Rate.SP").write_value(double(11.0))
        assert (model.state.perfusion_sp_L_per_d, model.state.bleed_sp_L_per_d) == (3.2, 0.8)
        for measured in ("Harvest.Flow", "Media.Lot", "Volume", "Emulation.HCP"):
            with pytest.raises(BadUserAccessDenied):
                await node(client, ns, measured).write_value(double(1.0))


@pytest.mark.asyncio
async def test_scheduled_lot_change_excursion_and_fouling_show_on_the_controller() -> None:
    faults = [
        {"fault": "filter_fouling", "after_s": 0.0, "rate_per_h": 0.1, "max_loss": 0.5},
        {"fault": "temperature_excursion", "after_s": 0.3, "for_s": 1.5, "delta_C": 3.0},
        {"fault": "media_lot_change", "after_s": 0.3},
    ]
    reactor = emulator(faults=faults)
    async with reactor, connected(reactor.endpoint) as (client, ns):
        model = reactor.controller.clock.model
        sp = await value_of(client, ns, "Temperature.SP")
        # The deviation: the culture temperature steps up, flagged in the truth and visible to
        # the gateway as a PV out of its limits (the controller's own alarm too).
        await wait_for_value(client, ns, "Emulation.Deviation", lambda v: v is True)
        pv = await wait_for_value(client, ns, "Temperature.PV", lambda v: v > sp + 2.0)
        assert pv < sp + 4.0
        assert await value_of(client, ns, "Alarms.TemperatureDeviation") is True
        assert await wait_for_value(client, ns, "Media.Lot", lambda v: v == 2) == 2
        # The new lot's share grows from the next step of the model on.
        await wait_for(lambda: model.state.lot_shares[2] > 0.0, 10, what="lot 2 in the vessel")
        # Fouling: the TMP rises, the product sieving falls (at most by half: 5 process hours).
        tmp = await wait_for_value(client, ns, "Retention.TMP", lambda v: v > 1.5 * 28.75, 15)
        half = await wait_for_value(client, ns, "Emulation.Sieving", lambda v: v < 0.475 + 1e-6, 30)
        assert half == pytest.approx(0.95 * 0.5)
        assert await value_of(client, ns, "Retention.TMP") > tmp
        # After for_s the temperature is back under control and the deviation over.
        await wait_for_value(client, ns, "Emulation.Deviation", lambda v: v is False)
        assert abs(await value_of(client, ns, "Temperature.PV") - sp) < 1.0
        assert model.state.media_lot == 2


# --------------------------------------------------------------------------- through the gateway

#: The perfusion nodes as a gateway configures them: UCUM units the driver checks against the
#: controller's EngineeringUnits (LD, MBR, LTR); the lot has none, so its unit is taken on trust.
GATEWAY_NODES: list[dict[str, Any]] = [
    {"name": "perfusion", "node": "dcu:BioreactorController.Perfusion.Rate.PV", "unit": "L/d"},
    {"name": "bleed", "node": "dcu:BioreactorController.Bleed.Rate.PV", "unit": "L/d"},
    {
        "name": "bleed_setpoint",
        "node": "dcu:BioreactorController.Bleed.Rate.SP",
        "unit": "L/d",
        "writable": True,
    },
    {"name": "harvest", "node": "dcu:BioreactorController.Harvest.Flow", "unit": "L/d"},
    {"name": "tmp", "node": "dcu:BioreactorController.Retention.TMP", "unit": "mbar"},
    {"name": "volume", "node": "dcu:BioreactorController.Volume", "unit": "L"},
    {"name": "media_lot", "node": "dcu:BioreactorController.Media.Lot", "unit": "1"},
]


@pytest.mark.asyncio
async def test_the_gateway_reads_the_perfusion_nodes_and_writes_the_bleed(tmp_path: Path) -> None:
    port = free_port()
    options = {"mode": "perfusion", "time_scale": 3600, "vcd_e6_per_mL": 40.0}
    async with gateway_with_controller(
        tmp_path, instrument("dcu", port, GATEWAY_NODES), port=port, **options
    ) as (plan, gateway):
        model = plan.emulators[0].instance.clock.model  # type: ignore[attr-defined]
        driver = plan.instruments[0].driver
        assert isinstance(driver, OpcUaDriver)
        names = [n["name"] for n in GATEWAY_NODES]

        def all_good() -> bool:
            return all(latest(gateway, c)[:1] == (Quality.GOOD,) for c in names)

        await wait_for(all_good, within=15, what="good data from every perfusion node")
        await driver.write("bleed_setpoint", 0.45)
        assert model.state.bleed_sp_L_per_d == 0.45
        await wait_for(lambda: latest(gateway, "bleed")[1] == 0.45, what="the new bleed rate")
        with pytest.raises(WriteRefusedError):
            await driver.write("bleed_setpoint", 3.0)  # beyond the pump's range (1 VVD)
        assert model.state.bleed_sp_L_per_d == 0.45

    samples = stored(tmp_path, "reactor1/dcu/*")
    units = {s.signal.rsplit("/", 1)[1]: s.unit for s in samples}
    assert units == {n["name"]: n["unit"] for n in GATEWAY_NODES}
    assert all(s.quality is Quality.GOOD for s in samples)
    lots = {s.value for s in samples if s.signal.endswith("/media_lot")}
    assert lots == {1}
    volumes = {s.value for s in samples if s.signal.endswith("/volume")}
    assert volumes == {2.0}
