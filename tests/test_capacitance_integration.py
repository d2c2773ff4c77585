"""The Modbus driver's ``capacitance_probe`` profile against the emulated probe in a fed-batch run:
real runtime, real emulators (bioreactor process + probe on Modbus TCP over loopback), real store.

Each reading the gateway stores carries the probe's measurement counter, which pairs it with
the emulator's truth of that very measurement (:attr:`CapacitanceProbeEmulator.truth`): the
checks compare a reading with what the probe was immersed in, not with a later state.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, patgw, plan_for, running, wait_for, write_config
from pymodbus.client import AsyncModbusTcpClient

from firmware_stubs.capacitance import CapacitanceProbeEmulator, Fault, MeasuredCulture, ProbeParams
from firmware_stubs.capacitance.model import calibrated_cell_factor
from gateway import GatewayError, Plan, Quality, Sample, WriteRefusedError
from gateway.runtime import Gateway
from gateway.store import SampleStore

#: The profile's signals: id -> the UCUM unit the gateway stores.
UNITS = {
    "permittivity": "pF/cm",
    "conductivity": "mS/cm",
    "viable_cell_density": "10*6/mL",
    "temperature": "Cel",
    "status": "1",
    "measurement_count": "1",
}
#: Process hours per wall second: a fed-batch's growth shows within seconds.
TIME_SCALE = 3600.0


def line(port: int, *, probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fed-batch bioreactor, the probe in it, and the gateway reading the probe."""
    return {
        "emulators": [
            {
                "id": "run",
                "type": "bioreactor",
                "options": {
                    "seed": 4,
                    "log_every_s": 0,
                    "time_scale": TIME_SCALE,
                    "vcd_e6_per_mL": 4.0,
                },
            },
            {
                "id": "probe",
                "type": "capacitance_probe",
                "options": {"port": port, "process": "run", "interval_s": 0.1, "seed": 4}
                | (probe or {}),
            },
        ],
        "instruments": [
            {
                "id": "biomass",
                "driver": "modbus",
                "poll_interval_s": 0.1,
                "backoff": {"initial_s": 0.05, "max_s": 0.2},
                "options": {"port": port, "profile": "capacitance_probe", "timeout_s": 0.5},
                "signals": [{"id": name, "unit": unit} for name, unit in UNITS.items()],
            }
        ],
    }


def probe_of(plan: Plan) -> CapacitanceProbeEmulator:
    emulator: CapacitanceProbeEmulator = plan.emulators[1].instance.emulator
    return emulator


def latest(gateway: Gateway, name: str) -> tuple[Any, ...]:
    for output in gateway.outputs:
        if output.signal.id == f"reactor1/biomass/{name}":
            row = output.latest
            assert row is not None
            return tuple(row)
    raise KeyError(name)


def has_latest(gateway: Gateway, name: str) -> bool:
    return any(
        o.signal.id == f"reactor1/biomass/{name}" and o.latest is not None for o in gateway.outputs
    )


def polls(path: Path) -> list[dict[str, Sample]]:
    """The stored samples, one dict per poll (one read of the input registers: one source
    time), by signal name."""
    store = SampleStore(path, read_only=True)
    try:
        by_time: dict[int, dict[str, Sample]] = {}
        for sample in store.samples("reactor1/biomass/*"):
            by_time.setdefault(sample.source_ts, {})[sample.signal.rsplit("/", 1)[1]] = sample
        return [by_time[ts] for ts in sorted(by_time)]
    finally:
        store.close()


def paired(
    path: Path, truth: list[MeasuredCulture]
) -> list[tuple[dict[str, Sample], MeasuredCulture]]:
    """Each stored good poll with the truth of the measurement it read (its counter)."""
    by_count = {t.count: t for t in truth}
    out = []
    for poll in polls(path):
        count = poll.get("measurement_count")
        if count is None or count.quality is not Quality.GOOD or count.value not in by_count:
            continue
        out.append((poll, by_count[int(count.value)]))
    return out


@pytest.mark.asyncio
async def test_the_probe_tracks_the_fed_batch_viable_cell_density(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, **line(free_port()))
    async with running(plan) as (gateway, _):
        probe = probe_of(plan)
        start_h = probe.hours()
        # Eight process hours: the culture grows by more than ten noise widths.
        await wait_for(lambda: probe.hours() > start_h + 8, within=30, what="8 process hours")
        await wait_for(lambda: gateway.stats.committed > 0, what="committed samples")
        truth = list(probe.truth)
        cell_factor = probe.model.cell_factor
        params = probe.model.params
    pairs = paired(tmp_path / "store.sqlite", truth)
    assert len(pairs) >= 20, len(pairs)
    units = {name: s.unit for poll, _ in pairs for name, s in poll.items()}
    assert units == UNITS
    sigma = params.permittivity_noise
    # The bias the probe may have against the true VCD here: Pauly-Schwan's r⁴ of the cells'
    # diameter drift over the run so far (at most; the Debye term lowers it).
    days = max(t.hours for _, t in pairs) / 24.0
    bias = (1.0 + abs(params.diameter_drift_um_per_d) * days / params.diameter_um) ** 4 - 1.0
    for poll, true in pairs:
        assert all(s.quality is Quality.GOOD for s in poll.values()), poll
        permittivity = poll["permittivity"].value
        vcd = poll["viable_cell_density"].value
        true_vcd = true.culture.vcd_e6_per_mL
        assert abs(permittivity - true.permittivity_pF_per_cm) < 6 * sigma
        assert vcd == pytest.approx(permittivity * cell_factor, rel=1e-6)
        assert abs(vcd - true_vcd) <= bias * true_vcd + 6 * sigma * cell_factor
        assert abs(poll["temperature"].value - true.culture.temperature_C) < 6 * (
            params.temperature_noise
        )
        assert poll["conductivity"].value == pytest.approx(true.conductivity_mS_per_cm, abs=0.1)
    # The probe saw the culture grow, as the truth did.
    first, last = pairs[0], pairs[-1]
    grown = last[1].culture.vcd_e6_per_mL - first[1].culture.vcd_e6_per_mL
    assert grown > 10 * sigma * cell_factor
    seen = last[0]["viable_cell_density"].value - first[0]["viable_cell_density"].value
    assert seen == pytest.approx(grown, abs=12 * sigma * cell_factor)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "quality", "reason"),
    [
        (Fault.PROBE_ERROR, Quality.BAD, "status 0x10"),
        (Fault.BUBBLES, Quality.UNCERTAIN, "status 0x01"),
        (Fault.EXCEPTION_RESPONSES, Quality.BAD, "exception 4 (device failure)"),
    ],
)
async def test_probe_faults_set_the_quality_and_clear(
    tmp_path: Path, fault: Fault, quality: Quality, reason: str
) -> None:
    plan = plan_for(tmp_path, **line(free_port()))
    async with running(plan) as (gateway, _):
        probe = probe_of(plan)
        await wait_for(lambda: has_latest(gateway, "permittivity"), what="a first reading")
        await wait_for(
            lambda: Quality(latest(gateway, "permittivity")[4]) is Quality.GOOD, what="good"
        )
        if fault is Fault.BUBBLES:
            probe.inject(fault, probability=1.0)
        else:
            probe.inject(fault)
        await wait_for(
            lambda: Quality(latest(gateway, "conductivity")[4]) is quality, what=f"{quality}"
        )
        row = latest(gateway, "conductivity")
        assert row[6] == reason
        if fault is Fault.BUBBLES:
            # What made it unstable: the bubble's dip, far below the culture's conductivity.
            count = int(latest(gateway, "measurement_count")[5])
            true = next(t for t in probe.truth if t.count == count)
            assert row[5] < 0.85 * true.conductivity_mS_per_cm
        if fault is Fault.PROBE_ERROR:
            # The probe's own temperature sensor still works: its sample stays good.
            assert Quality(latest(gateway, "temperature")[4]) is Quality.GOOD
        probe.clear(fault)
        await wait_for(
            lambda: all(
                Quality(latest(gateway, name)[4]) is Quality.GOOD
                for name in ("permittivity", "conductivity", "viable_cell_density")
            ),
            what="recovery",
        )


@pytest.mark.asyncio
async def test_fouling_drifts_the_probe_vcd_at_its_rate_while_its_status_stays_clean(
    tmp_path: Path,
) -> None:
    rate = 8.0  # pF/cm per process hour: eight noise widths per measurement (0.1 h)
    config = line(
        free_port(),
        probe={
            "faults": [{"fault": "fouling", "after_s": 0, "rate_per_h": rate, "max_offset": 30}]
        },
    )
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        probe = probe_of(plan)
        await wait_for(lambda: probe.model.fouling is not None, what="fouling scheduled")
        ramp = probe.model.fouling
        assert ramp is not None
        # Past the cap: the offset grows for 7.5 process hours, then stays.
        await wait_for(lambda: probe.hours() > ramp.onset_h + 9, within=30, what="the cap")
        await wait_for(lambda: gateway.stats.committed > 0, what="committed samples")
        truth = list(probe.truth)
        sigma = probe.model.params.permittivity_noise
    pairs = paired(tmp_path / "store.sqlite", truth)
    assert len(pairs) >= 20
    offsets = []
    for poll, true in pairs:
        assert poll["status"].value == 0  # the probe does not know it is fouled
        assert poll["permittivity"].quality is Quality.GOOD
        offset = poll["permittivity"].value - true.permittivity_pF_per_cm
        assert abs(offset - ramp.at(true.hours)) < 6 * sigma
        offsets.append(offset)
    assert max(offsets) > 30 - 6 * sigma and min(offsets) < 30 / 2


@pytest.mark.asyncio
async def test_the_cell_factor_is_written_through_the_driver(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, **line(free_port()))
    async with running(plan) as (gateway, _):
        probe = probe_of(plan)
        driver = plan.instruments[0].driver
        await wait_for(lambda: has_latest(gateway, "permittivity"), what="a first reading")
        await driver.write("cell_factor", 0.6)
        assert await driver.read_back("cell_factor") == pytest.approx(0.6)
        assert probe.model.cell_factor == pytest.approx(0.6)
        with pytest.raises(WriteRefusedError, match="exception 3"):
            await driver.write("cell_factor", 0.0)
        with pytest.raises(WriteRefusedError, match="not writable"):
            await driver.write("permittivity", 10.0)
        assert probe.model.cell_factor == pytest.approx(0.6)
        count = probe.model.count

        def rescaled() -> bool:
            if int(latest(gateway, "measurement_count")[5]) <= count:
                return False
            vcd, permittivity = (
                latest(gateway, n)[5] for n in ("viable_cell_density", "permittivity")
            )
            # One poll reads both in one request: the same measurement.
            return math.isclose(vcd, permittivity * 0.6, rel_tol=1e-6)

        await wait_for(rescaled, what="the VCD of the new cell factor")


@pytest.mark.asyncio
async def test_a_probe_listed_before_its_process_cannot_start(tmp_path: Path) -> None:
    config = line(free_port())
    config["emulators"].reverse()
    plan = plan_for(tmp_path, **config)
    with pytest.raises(GatewayError, match="no bioreactor process 'run' is running"):
        async with running(plan):
            pass


def test_check_names_the_bad_probe_option(tmp_path: Path) -> None:
    config = {"area": "reactor1", "store": {"path": str(tmp_path / "s.sqlite")}} | line(1502)
    config["emulators"][1]["options"]["faults"] = [{"fault": "fouling", "after_s": 1}]
    result = patgw("check", str(write_config(tmp_path / "g.yaml", config)))
    assert result.returncode == 2
    assert "emulators[1].options.faults[0]" in result.stderr
    assert "fouling needs rate_per_h" in result.stderr


def test_patgw_emulate_capacitance_probe_serves_a_constant_culture() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "emulate",
            "capacitance_probe",
            "--port",
            str(port),
            "--option",
            "vcd_e6_per_mL=12",
            "--option",
            "interval_s=0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()  # printed once it listens
        assert endpoint == f"127.0.0.1:{port}", endpoint or proc.stderr.read()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        values = _read_vcd(port)
        # 12e6 cells/mL of cells of the calibration's diameter in fresh medium: the probe reads
        # 12 give or take its noise (a diameter drift per wall day is nothing here).
        params = ProbeParams()
        sigma = params.permittivity_noise * calibrated_cell_factor(params)
        assert values and all(abs(v - 12.0) < 6 * sigma for v in values), values
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _read_vcd(port: int) -> list[float]:
    async def read() -> list[float]:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        assert await client.connect()
        try:
            out = []
            deadline = time.monotonic() + 10
            while len(out) < 3 and time.monotonic() < deadline:
                response = await client.read_input_registers(4, count=2, device_id=1)
                assert not response.isError(), response
                out.append(struct.unpack(">f", struct.pack(">2H", *response.registers))[0])
                await asyncio.sleep(0.1)
            return out
        finally:
            client.close()

    return asyncio.run(read())


@pytest.mark.asyncio
async def test_rtu_framing_through_a_pyserial_socket_url(tmp_path: Path) -> None:
    """The probe behind a serial device server: RTU frames over TCP, the driver's RTU transport."""
    port = free_port()
    config = line(port, probe={"framing": "rtu"})
    config["instruments"][0]["options"] = {
        "transport": "rtu",
        "serial_port": f"socket://127.0.0.1:{port}",
        "profile": "capacitance_probe",
        "timeout_s": 0.5,
    }
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        probe = probe_of(plan)
        await wait_for(
            lambda: (
                has_latest(gateway, "measurement_count")
                and int(latest(gateway, "measurement_count")[5]) > 2
            ),
            what="readings over RTU",
        )
        count = int(latest(gateway, "measurement_count")[5])
        permittivity = latest(gateway, "permittivity")
        truth = next(t for t in probe.truth if t.count == count)
        sigma = probe.model.params.permittivity_noise
    assert Quality(permittivity[4]) is Quality.GOOD
    # One request reads the counter and the permittivity: the same measurement.
    assert abs(permittivity[5] - truth.permittivity_pF_per_cm) < 6 * sigma
