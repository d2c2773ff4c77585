"""The ``capture_skid`` emulator over loopback, read by the gateway's own ``opcua`` driver through
the real runtime: the skid's signals with their units, a PCC switch and an eluate fraction, a
tracer step through the surge tank, a server restart; and its truth file, one line per fraction.

Until the perfusion bioreactor lands (another helper's), the harvest comes from a small source
on the wall clock (``WallClockHarvest``), time-scaled like the bioreactor's ProcessClock. The
driver and the emulator share no code: units are the UCUM codes written here.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import free_port, plan_for, running, stored_by_signal, wait_for
from structlog.testing import capture_logs

from firmware_stubs.bioreactor import hub
from firmware_stubs.bioreactor.faults import Fault
from firmware_stubs.capture.plugin import CaptureSkidEmulator, CaptureSkidOptions
from gateway import GatewayError, PluginContext, Quality

NAMESPACE = "urn:pat-gateway:emulator:capture-skid"

NODES: list[dict[str, Any]] = [
    {
        "name": "harvest_conductivity",
        "node": "cs:CaptureSkid.Harvest.Conductivity",
        "unit": "mS/cm",
    },
    {"name": "feed_conductivity", "node": "cs:CaptureSkid.Feed.Conductivity", "unit": "mS/cm"},
    {"name": "feed_flow", "node": "cs:CaptureSkid.Feed.Flow", "unit": "mL/min"},
    {"name": "tank_volume", "node": "cs:CaptureSkid.SurgeTank.Volume", "unit": "mL"},
    {"name": "feed_uv", "node": "cs:CaptureSkid.Feed.UV280", "unit": "{mAU}"},
    {"name": "column1_state", "node": "cs:CaptureSkid.Column1.State", "unit": "1"},
    {"name": "column1_pressure", "node": "cs:CaptureSkid.Column1.Pressure", "unit": "bar"},
    {"name": "fraction", "node": "cs:CaptureSkid.Eluate.Fraction", "unit": "1"},
    {"name": "eluate_ph", "node": "cs:CaptureSkid.Eluate.pH", "unit": "[pH]"},
    {"name": "last_load_step", "node": "cs:CaptureSkid.Skid.LastLoadStep", "unit": "h"},
]


class WallClockHarvest:
    """A perfusion reactor's harvest on the wall clock, ``time_scale`` process seconds per
    second (what a ProcessClock gives): 2.5 L/d at ``titer_g_L``. With ``held``, process time
    stands at 0 until :meth:`go`, so a test can watch the skid from its first step."""

    def __init__(self, titer_g_L: float, time_scale: float, *, held: bool = False) -> None:
        self._start: float | None = None if held else time.monotonic()
        self._h_per_s = time_scale / 3600.0
        self.state = SimpleNamespace(
            harvest_L_per_d=2.5, harvest_titer_g_L=titer_g_L, harvest_hcp_g_L=0.3, deviation=False
        )

    def go(self) -> None:
        self._start = time.monotonic()

    def hours(self) -> float:
        return 0.0 if self._start is None else (time.monotonic() - self._start) * self._h_per_s

    def snapshot(self) -> object:
        return self.state


def skid_instrument(port: int) -> dict[str, Any]:
    return {
        "id": "skid",
        "driver": "opcua",
        "backoff": {"initial_s": 0.05, "max_s": 0.3},
        "options": {
            "url": f"opc.tcp://127.0.0.1:{port}",
            "namespaces": {"cs": NAMESPACE},
            "timeout_s": 1.0,
            "sampling_interval_ms": 100,
            "publishing_interval_ms": 100,
            "nodes": NODES,
        },
    }


def latest(gateway: Any, channel: str) -> tuple[Any, ...]:
    output = next(o for o in gateway.outputs if o.signal.id.endswith(f"/{channel}"))
    row = output.latest  # (def_id, seq, source_ts, gateway_ts, quality, value, reason)
    return (row[4], row[5]) if row is not None else ()


@pytest.mark.asyncio
async def test_the_driver_sees_switches_fractions_and_a_tracer_and_the_truth_adds_up(
    tmp_path: Path,
) -> None:
    port = free_port()
    truth = tmp_path / "truth" / "capture.jsonl"
    options = CaptureSkidOptions.model_validate({
        "process": "reactor", "port": port, "update_s": 0.05, "truth_file": str(truth),
        "faults": [{"fault": "tracer_step", "after_s": 0.5, "delta_mS_cm": 5.0}],
    })  # fmt: skip
    # 1 g/L at 1800x: the first column leaves the train after about 3 process hours (6 s: the
    # product reaches it through the tank first), its fraction is done 0.6 h (1.2 s) later.
    # Process time starts once the driver has data: the whole story is seen from its start.
    source = WallClockHarvest(titer_g_L=1.0, time_scale=1800, held=True)
    plan = plan_for(tmp_path, instruments=[skid_instrument(port)])
    async with (
        CaptureSkidEmulator(options, PluginContext("capture", tmp_path), source=source) as emu,
        running(plan) as (gateway, _),
    ):

        def good(channel: str) -> bool:
            return latest(gateway, channel)[:1] == (Quality.GOOD,)

        await wait_for(lambda: all(good(n["name"]) for n in NODES), within=20, what="data")
        source.go()
        await wait_for(
            lambda: (*latest(gateway, "fraction"), 0, 0)[1] >= 1, within=30, what="a fraction"
        )
        await wait_for(lambda: truth.exists() and truth.read_text(), within=10, what="truth")
        # A server restart: Bad while it is down, back afterwards.
        emu.server.inject(Fault.SERVER_RESTART)
        await wait_for(lambda: latest(gateway, "fraction")[0] == Quality.BAD, within=10)
        emu.server.clear(Fault.SERVER_RESTART)
        await wait_for(lambda: good("fraction"), within=15, what="data after the restart")
        eluted = emu.skid.eluted_g
    # Everything has stopped: the truth file is closed, the port free again.
    assert not emu.is_running

    samples = stored_by_signal(tmp_path / "store.sqlite")

    def values(channel: str) -> list[Any]:
        return [s.value for s in samples[f"reactor1/skid/{channel}"] if s.quality is Quality.GOOD]

    units = {name.rsplit("/", 1)[1]: ss[0].unit for name, ss in samples.items()}
    assert units["feed_flow"] == "mL/min" and units["column1_pressure"] == "bar"
    assert units["harvest_conductivity"] == "mS/cm" and units["eluate_ph"] == "[pH]"
    assert values("feed_flow")[-1] == pytest.approx(2500 / 24 / 60)  # 2.5 L/d in mL/min
    assert set(values("tank_volume")) == {110.0}
    # Column 1 loaded as primary, then left the train (wash, elute, regenerate, equilibrate).
    states = values("column1_state")
    assert states[0] == 1 and set(states) - {1}
    # The tracer: a step at the tank inlet; the outlet follows smoothly, lagging behind (about
    # one process hour, 2 s here), and has nearly caught up at the end (over 3 h later).
    inlet = [s for s in samples["reactor1/skid/harvest_conductivity"] if s.quality is Quality.GOOD]
    assert inlet[0].value == pytest.approx(14.0) and inlet[-1].value == pytest.approx(19.0)
    stepped = next(s.source_ts for s in inlet if s.value > 18.9)
    outlet = [s for s in samples["reactor1/skid/feed_conductivity"] if s.quality is Quality.GOOD]
    assert [s.value for s in outlet if s.source_ts <= stepped][-1] < 15.5
    assert 18.0 < outlet[-1].value < 19.0
    # One truth line per finished fraction: bins and lots add up to the mass; column 1 first.
    lines = [json.loads(line) for line in truth.read_text().splitlines()]
    assert lines and lines[0]["fraction"] == 1 and lines[0]["column"] == 1
    for record in lines:
        assert sum(g for _, _, g in record["bins"]) == pytest.approx(record["mass_g"], rel=1e-9)
        assert sum(record["lots"].values()) == pytest.approx(record["mass_g"], rel=1e-9)
        assert record["deviation_mass_g"] == 0.0
        assert record["start_h"] < record["end_h"]
    assert sum(r["mass_g"] for r in lines) <= eluted + 1e-12
    # A column holds about its capacity when it leaves: 40 g/L x 5 mL, less the breakthrough.
    assert 0.15 < lines[0]["mass_g"] < 0.21


@pytest.mark.asyncio
async def test_a_skid_listed_before_its_process_cannot_start(tmp_path: Path) -> None:
    assert "reactor" not in hub._processes
    plan = plan_for(
        tmp_path,
        emulators=[
            {"id": "capture", "type": "capture_skid", "options": {"process": "reactor", "port": 0}},
            {"id": "reactor", "type": "bioreactor", "options": {"log_every_s": 0}},
        ],
        instruments=[skid_instrument(free_port())],
    )
    with pytest.raises(GatewayError, match="no bioreactor process 'reactor' is running"):
        async with running(plan):
            pass


@pytest.mark.asyncio
async def test_linked_to_a_bioreactor_run_through_the_config(tmp_path: Path) -> None:
    """The plugin as a config uses it: the skid finds its process by id, takes that run's
    harvest (a fed-batch run has none: nothing moves), and its truth file, named relative to
    the config's folder, is there from the start."""
    port = free_port()
    plan = plan_for(
        tmp_path,
        emulators=[
            {"id": "reactor", "type": "bioreactor", "options": {"log_every_s": 0}},
            {
                "id": "capture",
                "type": "capture_skid",
                "options": {
                    "process": "reactor",
                    "port": port,
                    "update_s": 0.05,
                    "truth_file": "truth/capture.jsonl",
                },
            },
        ],
        instruments=[skid_instrument(port)],
    )
    async with running(plan) as (gateway, _):
        await wait_for(
            lambda: all(latest(gateway, n["name"])[:1] == (Quality.GOOD,) for n in NODES),
            within=20,
            what="data",
        )
        clock = plan.emulators[0].instance.clock
        skid = plan.emulators[1].instance.skid  # brought up to the run's time now
        now_h = clock.hours()
        # On the run's clock (60x here): within one 0.01 h step of it.
        assert skid.time_h <= now_h < skid.time_h + 0.011
        state = clock.snapshot()
        harvest_mL_min = getattr(state, "harvest_L_per_d", 0.0) * 1000 / 24 / 60
        assert latest(gateway, "feed_flow")[1] == pytest.approx(harvest_mL_min)
        assert (tmp_path / "truth" / "capture.jsonl").exists()
        # bad_values: the server answers, every value Bad; then good again.
        server = plan.emulators[1].instance.server
        server.inject(Fault.BAD_VALUES)
        await wait_for(lambda: latest(gateway, "feed_flow")[0] == Quality.BAD, within=10)
        server.clear(Fault.BAD_VALUES)
        await wait_for(lambda: latest(gateway, "feed_flow")[0] == Quality.GOOD, within=10)
    if harvest_mL_min == 0.0:
        assert latest(gateway, "column1_state")[1] == 1 and latest(gateway, "fraction")[1] == 0
        assert (tmp_path / "truth" / "capture.jsonl").read_text() == ""


@pytest.mark.asyncio
async def test_a_truth_file_that_cannot_be_written_stops_nothing(tmp_path: Path) -> None:
    # /dev/full opens but every write fails (ENOSPC): each lost line is counted and logged,
    # and the skid goes on eluting.
    options = CaptureSkidOptions.model_validate(
        {"process": "reactor", "port": 0, "update_s": 0.05, "truth_file": "/dev/full"}
    )
    source = WallClockHarvest(titer_g_L=1.0, time_scale=7200)
    context = PluginContext("capture", tmp_path)
    with capture_logs() as logs:
        async with CaptureSkidEmulator(options, context, source=source) as emu:
            await wait_for(lambda: emu.skid.fractions_done >= 2, within=30, what="fractions")
            assert emu.truth_lost == emu.skid.fractions_done
    failed = [e for e in logs if e["event"] == "capture.truth_write_failed"]
    assert len(failed) >= 2 and failed[0]["fraction"] == 1


@pytest.mark.asyncio
async def test_a_taken_port_cannot_start_and_leaves_nothing_open(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        options = CaptureSkidOptions.model_validate(
            {"process": "reactor", "port": blocker.getsockname()[1], "truth_file": str(truth)}
        )
        emu = CaptureSkidEmulator(
            options, PluginContext("capture", tmp_path), source=WallClockHarvest(0.5, 60)
        )
        with pytest.raises(OSError, match=r"capture skid cannot listen on 127\.0\.0\.1"):
            async with emu:
                pass
    assert not emu.is_running
    with pytest.raises(RuntimeError, match="not running"):
        emu.skid  # noqa: B018
    assert truth.read_text() == ""  # made empty: a start is a new run
