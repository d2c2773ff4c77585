"""Residence-time traceability from the outside: ``patgw model fit/check/show rtd`` on exported
step tests, ``patgw check`` refusing what cannot be traced, and a gateway run on a scripted line
with operator decisions through the local API and the genealogy exported after the stop."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import traceline
from conftest import fake_distribution, free_port, patgw, running, wait_for, write_config
from scipy.special import gammainc
from test_controlled_writes import HASHES, PASSWORDS, api_call, audit_records

import plugins.traceability.plugin as traceability_plugin
from gateway import Quality, Sample, build_registry, load_plan, sample_to_json
from gateway.timefmt import parse_iso_ns
from plugins.softsensor.model import content_hash
from plugins.traceability.rtd import RtdModel, rtd_model_to_dict, save_rtd_model

HERE = Path(__file__).resolve().parent
T0 = 1_800_000_000_000_000_000
HOUR_NS = 3_600_000_000_000
STEP = ["--inlet", "*/harvest_cond", "--outlet", "*/feed_cond", "--flow", "*/feed_flow"]


def step_export(
    path: Path,
    n_tanks: int = 4,
    volume_mL: float = 600.0,
    dead_mL: float = 40.0,
    *,
    points: int = 720,
    step: float = 10.0,
    noise: float = 0.05,
    by_exception: bool = False,
) -> Path:
    """A tracer step through a unit, as ``patgw export`` writes it: the flow changes (and
    stops for a while), the outlet answers in volume flowed, with sensor noise. ``by_exception``:
    the inlet and the flow are written only when they change, noise-free (as an OPC UA
    subscription reports a set value)."""
    rng = random.Random(11)
    lines: list[str] = []
    volume = 0.0
    step_volume: float | None = None
    last_h = 0.0
    sent: dict[str, float] = {}
    for k in range(points):
        h = k * 6.0 / points  # six hours
        flow = 10.0 if h < 2 else 0.0 if h < 2.5 else 4.0 if h < 4 else 12.0  # mL/min
        volume += flow * 60 * (h - last_h)
        last_h = h
        inlet = 1.0 + (step if h >= 0.5 else 0.0)
        if h >= 0.5 and step_volume is None:
            step_volume = volume
        after = 0.0 if step_volume is None else volume - step_volume - dead_mL
        outlet = 1.0 + step * float(gammainc(n_tanks, max(after, 0.0) * n_tanks / volume_mL))
        ts = T0 + round(h * HOUR_NS)
        for signal, value, unit in (
            ("a/skid/harvest_cond", inlet + rng.gauss(0, noise), "mS/cm"),
            ("a/skid/feed_cond", outlet + rng.gauss(0, noise), "mS/cm"),
            ("a/skid/feed_flow", flow, "mL/min"),
        ):
            if by_exception and signal != "a/skid/feed_cond":
                value = inlet if signal.endswith("harvest_cond") else flow
                if sent.get(signal) == value:
                    continue
                sent[signal] = value
            lines.append(sample_to_json(Sample(signal, value, unit, ts, ts, Quality.GOOD, k)))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fit_recovers_the_tanks_and_volumes_of_a_noisy_step_with_a_changing_flow(
    tmp_path: Path,
) -> None:
    data = step_export(tmp_path / "step.jsonl")
    model = tmp_path / "surge.json"
    fit = patgw(
        "model", "fit", "rtd", "--data", str(data), *STEP, "--unit", "surge_tank",
        "--output", str(model), "--id", "surge", "--model-version", "1", "--json",
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    report = json.loads(fit.stdout)
    assert report["n_tanks"] == 4
    assert report["volume_mL"] == pytest.approx(600.0, rel=0.03)
    assert report["dead_volume_mL"] == pytest.approx(40.0, abs=15.0)
    assert report["fit"]["r2"] > 0.99
    # The file is the model kind's: show and check find it by its kind.
    shown = patgw("model", "show", str(model), "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["unit"] == "surge_tank"
    other = step_export(tmp_path / "step2.jsonl", points=500)
    check = patgw("model", "check", str(model), "--data", str(other), *STEP, "--json")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["fit"]["r2"] > 0.99


def test_fit_takes_an_inlet_and_a_flow_reported_only_when_they_change(tmp_path: Path) -> None:
    """An OPC UA subscription sends the tracer's inlet twice (before and at the step) and the
    flow at each change: each value holds until the next (not a ramp between two reports)."""
    data = step_export(tmp_path / "step.jsonl", by_exception=True)
    inlet_lines = sum("harvest_cond" in line for line in data.read_text().splitlines())
    assert inlet_lines == 2
    fit = patgw(
        "model", "fit", "rtd", "--data", str(data), *STEP, "--unit", "surge_tank",
        "--output", str(tmp_path / "m.json"), "--id", "m", "--model-version", "1", "--json",
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    report = json.loads(fit.stdout)
    assert report["n_tanks"] == 4
    assert report["volume_mL"] == pytest.approx(600.0, rel=0.03)
    assert report["dead_volume_mL"] == pytest.approx(40.0, abs=15.0)


def test_fit_converts_an_age_signal_to_hours(tmp_path: Path) -> None:
    """A batch age in minutes is minutes: the volumes come out the same as from the clock."""
    data = step_export(tmp_path / "step.jsonl")
    lines = data.read_text().splitlines()
    ages = []
    for line in lines:
        row = json.loads(line)
        if row["signal"] == "a/skid/feed_flow":
            ts = parse_iso_ns(row["source_ts"])
            minutes = (ts - T0) / HOUR_NS * 60
            age = Sample("a/ctl/batch_age", minutes, "min", ts, ts, Quality.GOOD, len(ages))
            ages.append(sample_to_json(age))
    data.write_text("\n".join(lines + ages) + "\n")
    fit = patgw(
        "model", "fit", "rtd", "--data", str(data), *STEP, "--age", "*/batch_age",
        "--unit", "surge_tank", "--output", str(tmp_path / "m.json"), "--id", "m",
        "--model-version", "1", "--json",
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    report = json.loads(fit.stdout)
    assert report["volume_mL"] == pytest.approx(600.0, rel=0.03)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": 12}, "12 good samples of --outlet"),
        ({"step": 0.0}, "no step in the inlet a/skid/harvest_cond"),
    ],
)
def test_fit_refuses_data_without_a_usable_step(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    data = step_export(tmp_path / "step.jsonl", **kwargs)
    out = tmp_path / "m.json"
    fit = patgw(
        "model", "fit", "rtd", "--data", str(data), *STEP, "--unit", "u",
        "--output", str(out), "--id", "m", "--model-version", "1",
    )  # fmt: skip
    assert fit.returncode == 2 and message in fit.stderr, fit.stderr
    assert fit.stderr.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(
    ("parameter", "value", "message"),
    [
        ("n_tanks", 0, "parameters.n_tanks: 0 is not a whole number 1..50"),
        ("n_tanks", 2.5, "parameters.n_tanks: 2.5 is not a whole number"),
        ("volume_mL", -1.0, "parameters.volume_mL: -1.0 outside"),
        ("dead_volume_mL", 1e12, "parameters.dead_volume_mL: 1000000000000.0 outside"),
    ],
)
def test_absurd_parameters_are_refused_naming_the_member(
    tmp_path: Path, parameter: str, value: float, message: str
) -> None:
    doc = rtd_model_to_dict(RtdModel("m", "1", "surge_tank", 3, 300.0, 10.0))
    doc["parameters"][parameter] = value
    doc["sha256"] = content_hash(doc)  # a consistent file: only the parameter is wrong
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    shown = patgw("model", "show", str(path))
    assert shown.returncode == 2 and message in shown.stderr, shown.stderr
    good = json.dumps(rtd_model_to_dict(RtdModel("m", "1", "surge_tank", 3, 300.0, 10.0)))
    path.write_text(good.replace('"volume_mL": 300.0', '"volume_mL": NaN'))
    shown = patgw("model", "show", str(path))
    assert shown.returncode == 2 and "not a finite number" in shown.stderr


# --- patgw check, a gateway run, patgw genealogy ------------------------------------------------


def scripted_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(HERE / "traceline.py", site / "traceline.py")
    return fake_distribution(site, "scripted-line", "0.1", {"scripted_line": "traceline"})


def gateway_config(tmp_path: Path, http_port: int, **options: Any) -> dict[str, Any]:
    model = tmp_path / "surge-rtd.json"
    if not model.exists():
        save_rtd_model(RtdModel("surge", "1", "surge_tank", **traceline.SURGE), model)  # type: ignore[arg-type]
    trace = traceline.options(str(model), **options)
    return {
        "area": "a",
        "data_dir": str(tmp_path / "data"),
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [{"id": "line", "driver": "scripted_line"}],
        "processors": [
            {
                "id": "trace",
                "type": "rtd_trace",
                "time_base": {"time_scale": 36000},
                "options": trace,
            }
        ],
        "http": {"host": "127.0.0.1", "port": http_port, "api": True},
        "security": {
            "users": [
                {"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS
            ]
        },
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unit": "hold_loop"}, "fitted on unit 'hold_loop', not 'surge_tank'"),
        (
            {"pools": [{"name": "b1", "fractions": [1, 5]}, {"name": "b2", "fractions": [5, 9]}]},
            "pools: b1 [1, 5] and b2 [5, 9] overlap",
        ),
    ],
)
def test_patgw_check_refuses_what_cannot_be_traced(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    env = scripted_env(tmp_path)
    document = gateway_config(tmp_path, free_port(), **{k: v for k, v in change.items()
                                                        if k != "unit"})  # fmt: skip
    if "unit" in change:
        save_rtd_model(
            RtdModel("surge", "1", change["unit"], **traceline.SURGE),  # type: ignore[arg-type]
            tmp_path / "surge-rtd.json",
        )
    config = write_config(tmp_path / "g.yaml", document)
    ok_or_not = patgw("check", str(config), env=env)
    assert ok_or_not.returncode == 2, ok_or_not.stdout + ok_or_not.stderr
    assert "processors[0].options" in ok_or_not.stderr and message in ok_or_not.stderr


@pytest.mark.asyncio
async def test_decisions_through_the_local_api_are_audited_and_exported_after_the_stop(
    tmp_path: Path,
) -> None:
    port = free_port()
    document = gateway_config(tmp_path, port, pools=[{"name": "batch-1", "fractions": [3, 5]}])
    config = write_config(tmp_path / "g.yaml", document)
    plan = load_plan(config, build_registry([traceline, traceability_plugin], entry_points=False))
    genealogy_file = tmp_path / "data" / "traceability" / "trace.genealogy.jsonl"

    def traced() -> list[dict[str, Any]]:
        if not genealogy_file.exists():
            return []
        lines = [json.loads(x) for x in genealogy_file.read_text().splitlines()]
        return [x for x in lines if x["type"] == "fraction"]

    def call(user: str, route: str, body: Any = None) -> Any:
        method = "GET" if body is None else "POST"
        return asyncio.to_thread(api_call, port, method, route, user, PASSWORDS[user], body)

    async with running(plan):
        await wait_for(lambda: len(traced()) >= 5, 30, what="five fractions traced")
        route = "/api/v1/processors/trace/decide"
        code, answer = await call("viewer", route, {"fraction": 3, "decision": "divert",
                                                    "reason": "r"})  # fmt: skip
        assert code == 403
        code, answer = await call("operator", route, {"fraction": 3, "decision": "keep",
                                                      "reason": "r"})  # fmt: skip
        assert code == 400 and "divert" in answer["error"]
        code, answer = await call("operator", route, {"fraction": 999, "decision": "divert",
                                                      "reason": "r"})  # fmt: skip
        assert code == 400 and "no fraction 999" in answer["error"]
        code, answer = await call(
            "operator", route, {"fraction": 3, "decision": "release", "reason": "QA: in spec"}
        )
        assert code == 200 and answer["decision"] == "release" and answer["previous"] is None
        code, answer = await call(
            "operator", route, {"fraction": 3, "decision": "divert", "reason": "on second look"}
        )
        assert code == 200 and answer["previous"] == "release"
        code, live = await call("viewer", "/api/v1/processors/trace/genealogy",
                                {"fraction": 3, "reason": "review"})  # fmt: skip
        assert code == 200 and live["fractions"][0]["decision"] == "divert"
        code, status = await call("viewer", "/api/v1/processors/trace")
        assert code == 200 and "last_fraction" in json.dumps(status)
    records = audit_records(plan)
    decisions = [r for r in records if r["action"] == "trace.decision"]
    assert [(r["user"], r["old"], r["new"], r["reason"]) for r in decisions] == [
        ("operator", None, "release", "QA: in spec"),
        ("operator", "release", "divert", "on second look"),
    ]
    recommended = {r["details"]["fraction"] for r in records
                   if r["action"] == "trace.divert_recommended"}  # fmt: skip
    assert recommended == {f["fraction"] for f in traced() if f["recommendation"]["divert"]}
    assert {1, 2} <= recommended  # the columns loading when tracing started

    # After the stop: the export reads the data folder the configuration names.
    env = scripted_env(tmp_path)
    exported = patgw("genealogy", str(config), "--format", "json", env=env)
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)
    by_number = {f["fraction"]: f for f in doc["fractions"]}
    assert by_number[3]["decision"] == "divert" and len(by_number[3]["decisions"]) == 2
    assert [p["pool"] for p in doc["pools"]] == ["batch-1"]
    out = tmp_path / "genealogy.csv"
    as_csv = patgw("genealogy", str(config), "--format", "csv", "-o", str(out), env=env)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [int(r["fraction"]) for r in rows] == [f["fraction"] for f in doc["fractions"]]
    row = next(r for r in rows if r["fraction"] == "3")
    assert (row["decision"], row["decided_by"], row["decision_reason"]) == (
        "divert", "operator", "on second look",
    )  # fmt: skip
    assert float(row["vcd_min"]) <= float(row["vcd_mean"]) <= float(row["vcd_max"])
    missing = patgw("genealogy", str(config), "--processor", "nosuch", env=env)
    assert missing.returncode == 2 and "rtd_trace processors: trace" in missing.stderr
    assert np.isfinite(float(row["affected_share"]))
