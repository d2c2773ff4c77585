"""Emulator faults seen by the ``anomaly`` processor in the real runtime: the emulated bioreactor
behind its OPC UA controller, the feed pump feeding it at a fixed speed, the gateway reading
the controller, and the processor's batch-evolution model raising its alarm after the fault.

The model is fitted here, as an engineer would for this recipe: on normal runs of the same
process at the same fixed feed (the emulator's own process model, other noise seeds), played
offline by ``benchmarks/anomaly_data.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, plan_for, running, stored_by_signal, wait_for
from test_anomaly_mspc import DATA

from plugins.anomaly.mspc import Run, fit_pca, save_model

#: Process seconds per wall second: 1 process hour per wall second.
TIME_SCALE = 3600.0
#: Feed, mL per process hour, and the pump speed that gives it at TIME_SCALE (0.8 mL/rev).
FEED_ML_PER_H = 0.3
PUMP_RPM = FEED_ML_PER_H * TIME_SCALE / 60 / 0.8
ONSET_H = 30.0
ALARM = "reactor1/anomaly/mspc_alarm"
#: Seconds between reads of the whole store while waiting: each read holds the event loop the
#: emulators and the gateway run on.
STORE_POLL_S = 0.5


def _fit_recipe_model(path: Path) -> None:
    data = DATA
    runs = []
    for seed in range(6):
        run = data.NormalRun(f"fixed-feed-{seed}", 1000 + seed, 0.0, 0.5, 400.0, FEED_ML_PER_H)
        hours, values = data.play(run, 100.0, 0.1)
        runs.append(Run(run.name, hours, values))
    model = fit_pca(
        runs,
        signals=[s for s, _, _ in data.SIGNALS],
        units=[u for _, u, _ in data.SIGNALS],
        model_id="fixed-feed",
        version=1,
    )
    save_model(model, path)


def _config(tmp_path: Path, fault: dict[str, Any]) -> dict[str, Any]:
    opcua_port = free_port()
    pump_port = free_port()
    model = tmp_path / "model.json"
    _fit_recipe_model(model)
    nodes = [
        ("ph", "pH.PV", "[pH]"),
        ("dissolved_oxygen", "DissolvedOxygen.PV", "%"),
        ("temperature", "Temperature.PV", "Cel"),
        ("o2_flow", "GasFlows.O2", "L/min"),
        ("base_total", "Pumps.BaseTotal", "mL"),
        ("batch_age", "Batch.Age", "h"),
    ]
    return {
        "emulators": [
            {
                "id": "reactor",
                "type": "bioreactor",
                "options": {
                    "seed": 77,
                    "time_scale": TIME_SCALE,
                    "log_every_s": 0,
                    "port": opcua_port,
                    "faults": [{"after_s": ONSET_H * 3600 / TIME_SCALE, **fault}],
                },
            },
            {
                "id": "pump_emulator",
                "type": "feed_pump",
                "options": {"port": pump_port, "setpoint_rpm": PUMP_RPM, "process": "reactor"},
            },
        ],
        "instruments": [
            {
                "id": "controller",
                "driver": "opcua",
                "options": {
                    "url": f"opc.tcp://127.0.0.1:{opcua_port}",
                    "namespaces": {"ctl": "urn:pat-gateway:emulator:bioreactor-controller"},
                    "sampling_interval_ms": 200,
                    "publishing_interval_ms": 200,
                    "nodes": [
                        {"name": n, "node": f"ctl:BioreactorController.{node}", "unit": u}
                        for n, node, u in nodes
                    ],
                },
            }
        ],
        "processors": [
            {
                "id": "anomaly",
                "type": "anomaly",
                "time_base": {"time_scale": TIME_SCALE, "age": "controller/batch_age"},
                "options": {"model": str(model)},
            }
        ],
    }


@pytest.mark.asyncio
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("fault", "within_h"),
    [
        ({"fault": "growth_upset", "factor": 0.3}, 40.0),
        ({"fault": "ph_probe_drift", "rate_per_h": 0.01}, 40.0),
    ],
    ids=["growth_upset", "ph_probe_drift"],
)
async def test_a_process_fault_raises_the_model_alarm(
    tmp_path: Path, fault: dict[str, Any], within_h: float
) -> None:
    plan = plan_for(tmp_path, **_config(tmp_path, fault))
    store = Path(plan.config.store.path)
    alarmed: list[Any] = []

    def alarm_after_onset() -> bool:
        # The alarm active now, from the sample that raised it on (an earlier one that cleared
        # is not this one).
        samples = stored_by_signal(store).get(ALARM, [])
        current: list[Any] = []
        for sample in reversed(samples):
            if not sample.value:
                break
            current.insert(0, sample)
        alarmed[:] = current
        return bool(current)

    async with running(plan):
        ages = lambda: stored_by_signal(store).get("reactor1/controller/batch_age", [])  # noqa: E731
        await wait_for(
            lambda: any(s.value and s.value > ONSET_H for s in ages()),
            ONSET_H * 3600 / TIME_SCALE + 30,
            STORE_POLL_S,
            what="the batch past the fault's onset",
        )
        await wait_for(
            alarm_after_onset,
            within_h * 3600 / TIME_SCALE + 30,
            STORE_POLL_S,
            what=f"the model's alarm within {within_h} h of the onset",
        )
    samples = stored_by_signal(store)
    age = samples["reactor1/controller/batch_age"]
    raised_at = alarmed[0].source_ts
    # The process age when the alarm now active was raised: after the onset.
    before = [s.value for s in age if s.source_ts <= raised_at]
    assert before and before[-1] >= ONSET_H - 1.0
    assert alarmed[-1].reason is not None and "contributions" in alarmed[-1].reason
