"""Tubing wear on the emulated feed pump, seen in the real runtime: the demo's emulated
bioreactor, feed pump and Raman spectrometer, the gateway reading them, the soft sensor's
glucose and lactate correcting the ``twin``, and the ``anomaly`` processor's check on the twin's
feed efficiency raising an alarm that names the pump.

The pump runs at a fixed speed (no glucose loop hides the missing feed) and its own readings
stay perfect: only the twin, from the soft sensor's glucose against the volume the pump reports,
can see that less arrives. The emulator's truth is read by nothing here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import running, stored_by_signal, wait_for
from test_twin import twin_config

from gateway import build_registry, load_plan

#: Process seconds per wall second: a process hour every 3 wall seconds.
TIME_SCALE = 1200.0
#: Feed, mL per process hour (400 g/L into 2 L: +0.2 g/L/h), and the pump speed that gives it.
FEED_ML_PER_H = 1.0
PUMP_RPM = FEED_ML_PER_H * TIME_SCALE / 60 / 0.8
ONSET_H = 4.0
ALARM = "reactor1/anomaly/feed_pump_wear"
AGE = "reactor1/controller/batch_age"


def _config(tmp_path: Path, wear: dict[str, Any] | None) -> Path:
    config = twin_config(tmp_path)
    doc = yaml.safe_load(config.read_text())
    for emulator in doc["emulators"]:
        if emulator["id"] == "reactor":
            emulator["options"]["time_scale"] = TIME_SCALE
        if emulator["id"] == "pump_emulator":
            emulator["options"]["setpoint_rpm"] = PUMP_RPM
            if wear is not None:
                onset_s = ONSET_H * 3600 / TIME_SCALE
                emulator["options"]["faults"] = [{"after_s": onset_s, **wear}]
    for instrument in doc["instruments"]:
        if instrument["id"] == "raman":
            instrument["poll_interval_s"] = 1.0
        if instrument["id"] == "controller":
            instrument["options"]["nodes"].append(
                {"name": "batch_age", "node": "ctl:BioreactorController.Batch.Age", "unit": "h"}
            )
    # The northbound OPC UA server is not what this is about.
    doc["sinks"] = [s for s in doc["sinks"] if s["type"] != "opcua_server"]
    time_base = {"time_scale": TIME_SCALE, "age": "controller/batch_age"}
    for processor in doc["processors"]:
        if processor["id"] == "twin":
            processor["time_base"] = time_base
    doc["processors"] += [
        {
            "id": "anomaly",
            "type": "anomaly",
            "time_base": time_base,
            "options": {
                "checks": [
                    {
                        "name": "feed_pump_wear",
                        "kind": "drift",
                        "signal": "twin/feed_efficiency",
                        "instrument": "feed_pump",
                        "target": 1.0,
                        "sd": 0.02,
                        "direction": "low",
                        "message": "delivered feed {deviation_pct:.0f} % below reported"
                        " (tubing wear?)",
                    }
                ]
            },
        },
    ]
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


#: Seconds between reads of the whole store while waiting: each read holds the event loop the
#: emulators and the gateway run on, and the store grows to tens of thousands of samples.
STORE_POLL_S = 0.5

#: A clean run goes this far (process hours) without the alarm.
CLEAN_TO_H = 30.0


@pytest.mark.asyncio
@pytest.mark.timeout(240)
async def test_tubing_wear_on_the_emulated_pump_raises_an_alarm_naming_the_pump(
    tmp_path: Path,
) -> None:
    wear = {"fault": "tubing_wear", "rate_per_h": 0.03, "max_loss": 0.5}
    plan = load_plan(_config(tmp_path, wear), build_registry())
    store = Path(plan.config.store.path)
    raised: list[Any] = []

    def alarm() -> bool:
        raised[:] = [s for s in stored_by_signal(store).get(ALARM, []) if s.value]
        return bool(raised)

    async with running(plan):
        await wait_for(
            alarm, CLEAN_TO_H * 3600 / TIME_SCALE + 30, STORE_POLL_S, what="the pump's wear alarm"
        )
    samples = stored_by_signal(store)
    first = raised[0]
    age = [s.value for s in samples[AGE] if s.source_ts <= first.source_ts]
    # Raised after the wear began, and it names the pump.
    assert age and ONSET_H <= age[-1] <= CLEAN_TO_H, age[-3:]
    assert first.reason is not None and first.reason.startswith("feed_pump:"), first.reason
    assert "tubing wear" in first.reason


@pytest.mark.asyncio
@pytest.mark.timeout(240)
async def test_the_same_run_without_wear_raises_no_alarm(tmp_path: Path) -> None:
    plan = load_plan(_config(tmp_path, None), build_registry())
    store = Path(plan.config.store.path)
    async with running(plan):
        await wait_for(
            lambda: any(s.value > CLEAN_TO_H for s in stored_by_signal(store).get(AGE, [])),
            CLEAN_TO_H * 3600 / TIME_SCALE + 30,
            STORE_POLL_S,
            what=f"the batch past {CLEAN_TO_H} h",
        )
    samples = stored_by_signal(store)
    # The check ran all along (its alarm signal published), and never raised.
    assert len(samples.get(ALARM, [])) > 20
    assert not [s for s in samples[ALARM] if s.value], samples[ALARM][-3:]
