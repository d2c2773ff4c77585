"""Device identity end to end: the ``ocean_obp`` driver reads it from the emulated Raman
spectrometer over TCP, the runtime keeps it in the store beside the signal definitions, audits a
swapped instrument, and shows it on ``/health``, the console and the live view.

Also the parts on their own: :class:`~gateway.DeviceIdentity`, the store's identity history,
and an identity stated by the configuration for a device that reports none.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import jcamp
import pytest
from conftest import patgw, wait_for, write_config
from pydantic import BaseModel

from firmware_stubs.raman import Fault, RamanEmulator
from gateway import Channel, DeviceIdentity, InstrumentIO, PluginContext, hookimpl
from gateway.audit import read_records
from gateway.capabilities import capability_problems
from gateway.console.pages import device_label, overview_page
from gateway.metrics import health_report
from gateway.security import Identity
from gateway.store import SampleStore
from gateway.testing import GatewayRun, RecordingIO
from plugins.ocean_obp.driver import ObpSpectrometer
from plugins.ocean_obp.options import ObpOptions

SERIAL = "EMU-RAMAN-0001"
SWAPPED = "EMU-RAMAN-0002"


def test_identity_fields_label_and_filling() -> None:
    reported = DeviceIdentity(model="QE Pro", serial_number="QEP01234", firmware_revision="2.3")
    stated = DeviceIdentity(manufacturer="Ocean Insight", model="ignored: the device's wins")
    merged = reported.filled_from(stated)
    assert merged.fields() == {
        "manufacturer": "Ocean Insight",
        "model": "QE Pro",
        "serial_number": "QEP01234",
        "firmware_revision": "2.3",
        "hardware_revision": None,
    }
    assert merged.label() == "Ocean Insight QE Pro S/N QEP01234 fw 2.3"
    assert DeviceIdentity().is_empty() and not merged.is_empty()
    with pytest.raises(TypeError, match="serial_number must be a str"):
        DeviceIdentity(serial_number=1234)  # type: ignore[arg-type]


def test_a_sinks_device_identified_must_be_plain() -> None:
    class Shows:
        async def __aenter__(self) -> Shows:
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            pass

        async def send(self, samples: object) -> None:
            pass

        async def device_identified(self, instrument: str, identity: DeviceIdentity) -> None:
            pass

    assert capability_problems("sink", Shows) == [
        "device_identified must be a plain function, not async def"
    ]


def test_the_store_keeps_each_device_an_instrument_was(tmp_path: Path) -> None:
    first = DeviceIdentity("Acme", "FP-200", "A1")
    store = SampleStore(tmp_path / "s.sqlite")
    try:
        assert store.record_identity("pump", first, "driver", 10) == (True, None)
        started, previous = store.record_identity("pump", first.filled_from(None), "driver", 30)
        assert not started and previous is not None and previous.identity == first
        swapped = DeviceIdentity("Acme", "FP-200", "B2")
        started, previous = store.record_identity("pump", swapped, "driver", 40)
        assert started and previous is not None and previous.identity == first
        # Back to the first pump: a new record, the history stays in order.
        store.record_identity("pump", first, "driver", 50)
        store.record_identity("probe", DeviceIdentity(model="X"), "config", 60)
    finally:
        store.close()
    reader = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        history = [
            (r.identity.serial_number, r.first_seen_ns, r.last_seen_ns)
            for r in reader.identities("pump")
        ]
        assert history == [("A1", 10, 30), ("B2", 40, 40), ("A1", 50, 50)]
        [probe] = reader.identities("probe")
        assert (probe.identity.model, probe.source) == ("X", "config")
    finally:
        reader.close()


@pytest.mark.asyncio
async def test_the_obp_driver_reports_serial_and_revisions_from_the_emulator(
    tmp_path: Path,
) -> None:
    async with RamanEmulator(transport="tcp", pixels=1024) as raman:
        options = ObpOptions.model_validate(
            {"port": raman.endpoint, "laser_wavelength_nm": 785.0, "integration_time_ms": 10}
        )
        driver = ObpSpectrometer(options, PluginContext("raman", tmp_path))
        io = RecordingIO(driver, "raman")
        async with io.running():
            await io.wait_for_samples("spectrum", 1)
    assert io.identities == [
        DeviceIdentity(serial_number=SERIAL, firmware_revision="2.3", hardware_revision="1")
    ]
    assert io.identity == io.identities[0]


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return dict(json.load(answer))
    except urllib.error.HTTPError as exc:  # 503 while not ready still has the document
        return dict(json.load(exc))


def _config(tmp_path: Path, raman_endpoint: str) -> Path:
    return write_config(
        tmp_path / "gateway.yaml",
        {
            "site": "plant1",
            "area": "reactor1",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "http": {"host": "127.0.0.1", "port": 0},
            "instruments": [
                {
                    "id": "raman",
                    "driver": "ocean_obp",
                    "poll_interval_s": 0.1,
                    "backoff": {"initial_s": 0.05, "max_s": 0.2},
                    "identity": {"manufacturer": "Emulated Optics", "model": "RAMAN-785"},
                    "options": {
                        "port": raman_endpoint,
                        "laser_wavelength_nm": 785.0,
                        "integration_time_ms": 10,
                        "timeout_s": 0.3,
                    },
                },
            ],
        },
    )


@pytest.mark.asyncio
async def test_a_swapped_spectrometer_is_stored_audited_and_shown(tmp_path: Path) -> None:
    async with RamanEmulator(transport="tcp", pixels=1024) as raman:
        async with GatewayRun(_config(tmp_path, raman.endpoint)) as run:
            runner = run.instrument("raman")

            def spectra() -> int:
                return sum(s.value is not None for s in run.samples("*/raman/spectrum"))

            await wait_for(lambda: spectra() >= 1, what="a first spectrum")
            assert runner.identity is not None
            assert run.gateway.http_address is not None
            host, port = run.gateway.http_address
            health = await asyncio.to_thread(_get_json, f"http://{host}:{port}/health")
            assert health["instruments"]["raman"]["identity"] == {
                # The configuration's fields fill those the device does not tell.
                "manufacturer": "Emulated Optics",
                "model": "RAMAN-785",
                "serial_number": SERIAL,
                "firmware_revision": "2.3",
                "hardware_revision": "1",
                "source": "driver",
            }
            page = overview_page(
                health_report(run.gateway, 1.0),
                Identity("viewer", "Viewer", frozenset({"viewer"}), frozenset()),
                "csrf",
            )
            assert f"Emulated Optics RAMAN-785 S/N {SERIAL} fw 2.3 hw 1" in page

            # Another spectrometer on the same line: the link fails, the driver reconnects.
            raman.device.serial_number = SWAPPED
            raman.inject(Fault.SILENCE)
            await wait_for(lambda: runner.failures >= 1, what="the session to fail")
            raman.clear_faults()
            await wait_for(
                lambda: runner.identity is not None and runner.identity.serial_number == SWAPPED,
                what="the swapped device's identity",
            )
            keeper = run.gateway.identities
            assert keeper is not None
            await wait_for(lambda: keeper.changes == 1, what="the change to be recorded")
            before = spectra()
            await wait_for(lambda: spectra() > before, what="a spectrum from the other device")
        audit_path = run.plan.config.audit.resolved(
            run.plan.config.store.path, run.plan.config.data_dir
        ).path

    store = SampleStore(tmp_path / "store.sqlite", read_only=True)
    try:
        history = store.identities("raman")
    finally:
        store.close()
    assert [r.identity.serial_number for r in history] == [SERIAL, SWAPPED]
    assert history[0].last_seen_ns < history[1].first_seen_ns
    assert history[1].identity.manufacturer == "Emulated Optics"

    # JCAMP-DX names the device of each spectrum: the first spectrometer's, then the other's.
    jdx = tmp_path / "raman.jdx"
    args = ["--format", "jcamp", "--signal", "*/raman/spectrum", "-o", str(jdx)]
    exported = patgw("export", str(tmp_path / "gateway.yaml"), *args, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    blocks = jcamp.readfile(str(jdx))["children"]
    systems = [b["spectrometer/data system"] for b in blocks]
    assert systems[0] == f"Emulated Optics RAMAN-785 S/N {SERIAL} fw 2.3 hw 1"
    assert systems[-1] == f"Emulated Optics RAMAN-785 S/N {SWAPPED} fw 2.3 hw 1"
    assert systems == sorted(systems)  # never back to the first after the swap
    assert {b["$patgw device serial number"] for b in blocks} == {SERIAL, SWAPPED}

    events = [r.event for r in read_records(audit_path, action="device.*")]
    assert [e.action for e in events] == ["device.identified", "device.identity_changed"]
    changed = events[1]
    assert changed.target == "raman"
    assert changed.old["serial_number"] == SERIAL and changed.new["serial_number"] == SWAPPED
    assert changed.details is not None and changed.details["source"] == "driver"


class NoOptions(BaseModel):
    pass


class Mute:
    """A driver that reports no identity (a 4-20 mA transmitter behind a converter)."""

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        pass

    def channels(self) -> list[Channel]:
        return [Channel("level", "1")]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        io.output("level").publish(1.0)
        await asyncio.Event().wait()


class MutePlugin:
    PAT_GATEWAY_API = "1.0"  # written before identities: still loads, still works

    @hookimpl
    def pat_gateway_register_drivers(self, registry: Any) -> None:
        registry.add_driver("mute", Mute, NoOptions)


@pytest.mark.asyncio
async def test_a_stated_identity_stands_for_a_device_that_reports_none(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "site": "plant1",
            "area": "reactor1",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "instruments": [
                {
                    "id": "transmitter",
                    "driver": "mute",
                    "identity": {"manufacturer": "Acme", "serial_number": "T-77"},
                }
            ],
        },
    )
    async with GatewayRun(config, plugins=[MutePlugin()]) as run:
        runner = run.instrument("transmitter")
        await wait_for(lambda: runner.identity is not None, what="the stated identity")
        assert runner.identity_source == "config"
        report = health_report(run.gateway, 1.0)
        assert report["instruments"]["transmitter"]["identity"]["serial_number"] == "T-77"
        assert device_label(report["instruments"]["transmitter"]["identity"]) == (
            "Acme S/N T-77 (stated)"
        )
    store = SampleStore(tmp_path / "store.sqlite", read_only=True)
    try:
        [record] = store.identities("transmitter")
    finally:
        store.close()
    assert (record.identity.manufacturer, record.source) == ("Acme", "config")
