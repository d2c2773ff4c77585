"""The ``ocean_obp`` driver against the emulated Raman spectrometer (``firmware_stubs/raman``),
on a real pseudo-terminal and over TCP, alone and inside the real runtime.

Driver and emulator share no code: the axis the driver computes from the coefficients it reads
is checked against the emulator's own pixel wavelengths.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from conftest import connected, wait_for, write_config

from firmware_stubs.raman import Fault, RamanEmulator
from gateway import (
    InstrumentError,
    PluginContext,
    Quality,
    Spectrum,
    build_registry,
    load_plan,
)
from gateway.runtime import Gateway
from gateway.store import SampleStore
from gateway.testing import RecordingIO
from plugins.ocean_obp.driver import ObpSpectrometer
from plugins.ocean_obp.options import ObpOptions

LASER_NM = 785.0
EMULATOR_DARK_PIXELS = 16


def make_driver(port: str, tmp_path: Path, **options: Any) -> ObpSpectrometer:
    config = {
        "port": port,
        "laser_wavelength_nm": LASER_NM,
        "integration_time_ms": 10,
        "timeout_s": 0.5,
        "dark_pixels": EMULATOR_DARK_PIXELS,
        **options,
    }
    return ObpSpectrometer(ObpOptions.model_validate(config), PluginContext("raman", tmp_path))


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["pty", "tcp"])
async def test_spectra_on_the_emulators_own_axis(
    tmp_path: Path, transport: Literal["pty", "tcp"]
) -> None:
    async with RamanEmulator(transport=transport, pixels=2048) as raman:
        driver = make_driver(raman.endpoint, tmp_path)
        io = RecordingIO(driver, "raman")
        async with connected(driver):
            await driver.poll(io)
            await driver.poll(io)
        raw = make_driver(raman.endpoint, tmp_path, dark_pixels=0)
        uncorrected = RecordingIO(raw, "raman")
        async with connected(raw):
            await raw.poll(uncorrected)
        expected_nm = np.asarray(raman.device.wavelengths_nm, dtype=np.float64)
    assert driver.serial_number == raman.device.serial_number
    first, second = io.samples("spectrum")
    assert first.quality is Quality.GOOD and second.quality is Quality.GOOD
    spectrum: Spectrum = second.value
    assert len(spectrum) == 2048 - EMULATOR_DARK_PIXELS
    assert spectrum.axis is first.value.axis  # built once
    assert spectrum.axis.unit == "cm-1"
    np.testing.assert_allclose(
        spectrum.axis.values,
        1e7 / LASER_NM - 1e7 / expected_nm[EMULATOR_DARK_PIXELS:],
        rtol=0,
        atol=1e-6,
    )
    # Dark correction removes the masked pixels' level (the same scene, another acquisition).
    counts = uncorrected.samples("spectrum")[0].value.values.astype(np.float64)
    assert len(counts) == 2048
    dark_level = counts[:EMULATOR_DARK_PIXELS].mean()
    expected_mean = counts[EMULATOR_DARK_PIXELS:].mean() - dark_level
    # Noise and the cooling detector's dark current differ between the two: far less than the
    # dark level that was taken off.
    assert dark_level > 100
    assert abs(float(spectrum.values.mean()) - expected_mean) < 0.1 * dark_level
    [temperature] = io.samples("detector_temperature")[-1:]
    assert temperature.quality is Quality.GOOD and -60 < temperature.value < 40
    assert io.samples("integration_time")[-1].value == 10.0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "params", "reason"),
    [
        (Fault.NACK, {}, r"^device NACK: device not ready \(7\), in reply to get raw spectrum$"),
        (Fault.NACK, {"error": 13}, r"^device NACK: internal device error \(13\)"),
        (Fault.BAD_CHECKSUM, {}, r"^bad MD5 checksum in reply to get raw spectrum$"),
        (Fault.TRUNCATED, {}, r"^no reply to get raw spectrum within 0\.51 s \(truncated frame"),
        (Fault.SILENCE, {}, r"^no reply to get raw spectrum within 0\.51 s$"),
    ],
)
async def test_faults_give_a_reason_and_a_fresh_connection_recovers(
    tmp_path: Path, fault: Fault, params: dict[str, Any], reason: str
) -> None:
    async with RamanEmulator(transport="pty", pixels=1024) as raman:
        driver = make_driver(raman.endpoint, tmp_path)
        io = RecordingIO(driver, "raman")
        async with connected(driver):
            await driver.poll(io)
            raman.inject(fault, **params)
            with pytest.raises(InstrumentError, match=reason):
                await driver.poll(io)
        raman.clear_faults()
        async with connected(driver):
            await driver.poll(io)
    assert [p.quality for p in io.samples("spectrum")] == [Quality.GOOD, Quality.GOOD]


@pytest.mark.asyncio
async def test_garbage_on_the_line_is_skipped(tmp_path: Path) -> None:
    async with RamanEmulator(transport="pty", pixels=1024) as raman:
        raman.inject(Fault.GARBAGE, size=64)
        driver = make_driver(raman.endpoint, tmp_path)
        io = RecordingIO(driver, "raman")
        async with connected(driver):
            for _ in range(3):
                await driver.poll(io)
            assert driver._link is not None
            skipped = driver._link.discarded_bytes
    assert [p.quality for p in io.samples("spectrum")] == [Quality.GOOD] * 3
    assert skipped >= 3 * 64  # the garbage did reach the driver, which resynchronised


# -- inside the runtime -----------------------------------------------------------------------


def samples(store_path: Path, glob: str) -> list[Any]:
    store = SampleStore(store_path)
    try:
        return list(store.samples(glob))
    finally:
        store.close()


#: The two requests of a poll, either of which a fault may hit first.
EITHER = "(raw spectrum|detector temperature)"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        # Whichever request of the poll is in flight when the fault begins fails: the
        # spectrum, or the detector temperature read after it.
        (Fault.NACK, r"device NACK: device not ready \(7\), in reply to get " + EITHER),
        (Fault.BAD_CHECKSUM, r"bad MD5 checksum in reply to get " + EITHER),
        (
            Fault.TRUNCATED,
            r"no reply to get (raw spectrum within 0\.305 s \(truncated frame"
            r"|detector temperature within 0\.3 s)",
        ),
        (Fault.SILENCE, r"no reply to get " + EITHER + r" within 0\.30?5? s"),
    ],
)
async def test_in_the_runtime_bad_while_down_then_back(
    tmp_path: Path, fault: Fault, reason: str
) -> None:
    """Every fault: the signals turn bad saying why, and the same gateway recovers."""
    registry = build_registry()  # the installed entry points, as `patgw run` uses them
    async with RamanEmulator(transport="pty", pixels=1024) as raman:
        config = {
            "area": "reactor1",
            "store": {"path": str(tmp_path / "store.sqlite"), "commit_interval_ms": 20},
            "data_dir": str(tmp_path / "data"),
            "instruments": [
                {
                    "id": "raman",
                    "driver": "ocean_obp",
                    "poll_interval_s": 0.05,
                    "backoff": {"initial_s": 0.05, "max_s": 0.2},
                    "options": {
                        "port": raman.endpoint,
                        "laser_wavelength_nm": LASER_NM,
                        "integration_time_ms": 5,
                        "timeout_s": 0.3,
                        "dark_pixels": EMULATOR_DARK_PIXELS,
                    },
                }
            ],
        }
        plan = load_plan(write_config(tmp_path / "gateway.yaml", config), registry)
        gateway = Gateway(plan)
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop), name="test.gateway")
        try:
            runner = await wait_for(lambda: gateway.runners and gateway.runners[0])

            def spectra() -> int:
                output = next(o for o in gateway.outputs if o.signal.id.endswith("/spectrum"))
                return int(output.seq)

            await wait_for(lambda: spectra() >= 3, what="three spectra")
            raman.inject(fault)
            await wait_for(lambda: runner.failures >= 1, what=f"{fault} to take it down")
            raman.clear_faults()
            down_at = spectra()
            await wait_for(lambda: spectra() >= down_at + 3, what="spectra after recovery")
        finally:
            stop.set()
            await task
    stored = samples(tmp_path / "store.sqlite", "*/raman/spectrum")
    good = [s for s in stored if s.quality is Quality.GOOD]
    bad = [s for s in stored if s.quality is Quality.BAD]
    assert len(good) >= 6
    assert all(isinstance(s.value, Spectrum) and s.unit == "{counts}" for s in good)
    assert good[0].value.axis.unit == "cm-1"
    assert len(good[0].value) == 1024 - EMULATOR_DARK_PIXELS
    assert bad and bad[0].value is None
    assert re.match(f"unreachable: {reason}", bad[0].reason or ""), bad[0].reason
    seqs = [s.seq for s in stored]
    assert seqs == list(range(len(seqs)))  # bad while down, no gap
    temperatures = samples(tmp_path / "store.sqlite", "*/raman/detector_temperature")
    assert any(s.quality is Quality.GOOD and s.unit == "Cel" for s in temperatures)
