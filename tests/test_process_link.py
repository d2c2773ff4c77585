"""The emulators agree with each other the way a real process does: what the pump delivers goes
into the shared bioreactor run, and the Raman spectra the gateway acquires show its glucose.

Everything here runs through the installed plugins and the real runtime: a bioreactor process,
the feed pump on Modbus TCP, the spectrometer on a pseudo-terminal, both drivers, the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port, running, wait_for, write_config

from firmware_stubs.bioreactor import lookup
from gateway import GatewayError, Sample, Spectrum, build_registry, load_plan
from gateway.store import SampleStore


def reactor_config(tmp_path: Path, pump_port: int, setpoint_rpm: float) -> dict[str, Any]:
    link = tmp_path / "raman.tty"
    return {
        "area": "r1",
        "store": {"path": str(tmp_path / "store.sqlite"), "commit_interval_ms": 20},
        "data_dir": str(tmp_path / "data"),
        "emulators": [
            {"id": "run", "type": "bioreactor", "options": {"seed": 3, "log_every_s": 0}},
            {
                "id": "pump",
                "type": "feed_pump",
                "options": {"port": pump_port, "setpoint_rpm": setpoint_rpm, "process": "run"},
            },
            {
                "id": "spectrometer",
                "type": "raman",
                "options": {"serial": True, "link": str(link), "process": "run", "seed": 3},
            },
        ],
        "instruments": [
            {
                "id": "pump",
                "driver": "modbus",
                "poll_interval_s": 0.1,
                "options": {"port": pump_port, "profile": "feed_pump", "timeout_s": 0.5},
                "signals": [{"id": "total_volume", "unit": "mL"}],
            },
            {
                "id": "raman",
                "driver": "ocean_obp",
                "poll_interval_s": 0.1,
                "options": {
                    "port": str(link),
                    "laser_wavelength_nm": 785,
                    "integration_time_ms": 100,
                    "dark_pixels": 16,
                    "timeout_s": 1.0,
                },
                "signals": [{"id": "spectrum"}],
            },
        ],
    }


def glucose_band(sample: Sample) -> float:
    """Height of the 1125 cm⁻¹ glucose band above a straight baseline under it."""
    spectrum = sample.value
    assert isinstance(spectrum, Spectrum)
    x, y = spectrum.axis.values, spectrum.values.astype(np.float64)

    def mean(lo: float, hi: float) -> float:
        return float(y[(x >= lo) & (x <= hi)].mean())

    return mean(1115, 1135) - (mean(1085, 1095) + mean(1155, 1165)) / 2


@pytest.mark.asyncio
async def test_pumped_feed_raises_the_glucose_the_spectra_show(tmp_path: Path) -> None:
    # A fast pump (400 rpm x 0.8 mL/rev = 320 mL/min of 400 g/L glucose into 2 L) makes the
    # rise large against shot noise within seconds.
    config = reactor_config(tmp_path, free_port(), setpoint_rpm=400)
    plan = load_plan(write_config(tmp_path / "g.yaml", config), build_registry())
    async with running(plan) as (gateway, _task):
        process = lookup("run")
        start_glucose = process.snapshot().glucose_g_L
        spectra = next(o for o in gateway.outputs if o.signal.id == "r1/raman/spectrum")
        await wait_for(lambda: spectra.seq >= 2, what="first spectra")
        await wait_for(
            lambda: process.snapshot().glucose_g_L > start_glucose + 4, what="glucose +4 g/L"
        )
        seen = spectra.seq
        await wait_for(lambda: spectra.seq >= seen + 2, what="spectra of the fed broth")
        fed_ml = process.snapshot().fed_volume_L * 1000
        pump_ml = plan.emulators[1].instance.emulator.model.total_ml
    store = SampleStore(tmp_path / "store.sqlite", read_only=True)
    try:
        stored = [s for s in store.samples("r1/raman/spectrum") if s.value is not None]
        volumes = [s.value for s in store.samples("r1/pump/total_volume")]
    finally:
        store.close()
    before, after = glucose_band(stored[0]), glucose_band(stored[-1])
    # From ~6 to over 10 g/L: the band grows by more than half; 1.3x leaves room for noise.
    assert after > 1.3 * before > 0, (before, after)
    # Every millilitre the pump delivered reached the run (up to the pump's last tick), and
    # the driver's reading of the pump's volume counter tells the same story.
    assert fed_ml == pytest.approx(pump_ml, abs=0.5 * 320 / 60)
    assert volumes[-1] == pytest.approx(fed_ml, abs=320 / 60)


@pytest.mark.asyncio
async def test_an_emulator_listed_before_its_process_cannot_start(tmp_path: Path) -> None:
    config = reactor_config(tmp_path, free_port(), setpoint_rpm=10)
    config["emulators"] = config["emulators"][1:] + config["emulators"][:1]
    plan = load_plan(write_config(tmp_path / "g.yaml", config), build_registry())
    with pytest.raises(GatewayError, match="no bioreactor process 'run' is running"):
        async with running(plan):
            pass
