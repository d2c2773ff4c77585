"""The batch-evolution PCA model: limits on fresh normal runs, contributions, the model file and
``patgw model fit pca``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import patgw

from plugins.anomaly.checks import Alarm
from plugins.anomaly.commands import configure_check, configure_fit, configure_show
from plugins.anomaly.mspc import ModelFileError, Run, fit_pca, load_model, save_model

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "configs" / "models" / "reactor1-normal-pca.json"


def _load_data_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "anomaly_data", ROOT / "benchmarks" / "anomaly_data.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["anomaly_data"] = module
    spec.loader.exec_module(module)
    return module


DATA = _load_data_script()
SIGNALS = [s for s, _, _ in DATA.SIGNALS]
UNITS = [u for _, u, _ in DATA.SIGNALS]


def test_shipped_model_limits_on_fresh_normal_runs() -> None:
    """20 normal runs the model never saw (another plan seed than its training's): about 1 %
    of points over each 99 % limit; alarms after the 3-of-5 rule far rarer than points over."""
    model = load_model(SHIPPED)
    assert model.signals == tuple(SIGNALS)
    points = over_t2 = over_q = over_any = raised = 0
    for run in DATA.plan_runs(20, 5):
        hours, values = DATA.play(run, 240.0, 0.1)
        t2, q = model.score_many(hours, values)
        ratio = np.maximum(t2 / model.t2_limit, q / model.q_limit)
        alarm = Alarm("mspc", severity=2, k=3, n=5)
        for index, r in enumerate(ratio.tolist()):
            transition = alarm.update(r, index)
            raised += transition is not None and transition.action == "raised"
        points += len(hours)
        over_t2 += int((t2 > model.t2_limit).sum())
        over_q += int((q > model.q_limit).sum())
        over_any += int((ratio > 1).sum())
    assert 0.002 <= over_t2 / points <= 0.02
    assert 0.002 <= over_q / points <= 0.02
    assert raised > 0
    assert raised <= over_any / 10
    # Under one false alarm per 100 process hours (20 runs x 240 h).
    assert raised / (20 * 240) * 100 < 1.0


def test_scores_and_contributions_name_the_broken_signal() -> None:
    model = load_model(SHIPPED)
    run = DATA.plan_runs(1, 7)[0]
    hours, values = DATA.play(run, 120.0, 0.1)
    point = values[500].copy()
    clean = model.score(hours[500], point.tolist())
    # Vectorised and single-point scores agree; contributions add up to the statistics.
    t2s, qs = model.score_many(hours[500:501], point[np.newaxis, :])
    assert clean.t2 == pytest.approx(float(t2s[0])) and clean.q == pytest.approx(float(qs[0]))
    assert sum(clean.t2_contributions) == pytest.approx(clean.t2)
    assert sum(clean.q_contributions) == pytest.approx(clean.q)
    # DO reads 15 % high (a miscalibrated probe): over a limit, DO the top contributor to the
    # statistic furthest over (as the processor reports it).
    point[1] += 15.0
    broken = model.score(hours[500], point.tolist())
    t2_ratio, q_ratio = broken.t2 / model.t2_limit, broken.q / model.q_limit
    assert max(t2_ratio, q_ratio) > 1
    parts = broken.t2_contributions if t2_ratio >= q_ratio else broken.q_contributions
    assert int(np.argmax(np.abs(parts))) == 1
    assert not broken.beyond_maturity
    assert model.score(model.max_maturity_h + 1, point.tolist()).beyond_maturity


def _runs(count: int, seed: int, hours: float = 48.0) -> list[Run]:
    runs = []
    for run in DATA.plan_runs(count, seed):
        t, v = DATA.play(run, hours, 0.1)
        runs.append(Run(run.name, t, v))
    return runs


def test_model_file_round_trip_and_refusals(tmp_path: Path) -> None:
    model = fit_pca(_runs(4, 11), signals=SIGNALS, units=UNITS, model_id="t", version=3, bin_h=4.0)
    path = tmp_path / "m.json"
    save_model(model, path)
    again = load_model(path)
    assert again.sha256 and again.version == 3 and again.signals == tuple(SIGNALS)
    assert np.array_equal(again.loadings, model.loadings)
    doc = json.loads(path.read_text())
    doc["q_limit"] *= 2
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="sha256 does not match"):
        load_model(path)
    doc["kind"] = "pls"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="not a 'pca' model"):
        load_model(path)
    path.write_text(json.dumps({"format": "pat-gateway/pls-model"}))
    with pytest.raises(ModelFileError, match="not a PAT Gateway PCA model"):
        load_model(path)
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model(tmp_path / "absent.json")


def test_fit_refuses_too_little() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        fit_pca(_runs(2, 12), signals=SIGNALS, units=UNITS, model_id="t", version=1)
    with pytest.raises(ValueError, match="fewer than 2 points"):
        fit_pca(_runs(3, 12), signals=SIGNALS, units=UNITS, model_id="t", version=1, bin_h=0.1)


def test_fit_command_from_an_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    DATA.write_runs(tmp_path, DATA.plan_runs(4, 13), hours=48.0, every_h=0.25)
    parser = argparse.ArgumentParser()
    handler = configure_fit(parser)
    out = tmp_path / "fitted.json"
    argv = ["--data", str(tmp_path / "normal.jsonl"), "--signals", ",".join(SIGNALS)]
    argv += ["--output", str(out), "--id", "r1", "--model-version", "2", "--bin-h", "4", "--json"]
    assert handler(parser.parse_args(argv)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["id"] == "r1" and summary["version"] == 2
    assert len(summary["training"]["runs"]) == 4
    assert summary["maturity_h"] == 48.0
    show = argparse.ArgumentParser()
    show.add_argument("model", type=Path)  # patgw model adds FILE
    shown = configure_show(show)
    assert shown(show.parse_args([str(out), "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == summary["sha256"]
    check = argparse.ArgumentParser()
    check.add_argument("model", type=Path)
    checked = configure_check(check)
    assert checked(check.parse_args([str(out), "--data", argv[1], "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == summary["sha256"] and len(report["runs"]) == 4
    # On its own training runs: a fraction over each limit, never all.
    assert all(0 <= run["over_t2"] < 0.2 for run in report["runs"])
    # A signal the export does not have: exit 2, one line naming it.
    argv[3] = ",".join([*SIGNALS, "reactor1/controller/nothing"])
    assert handler(parser.parse_args(argv)) == 2
    assert "reactor1/controller/nothing" in capsys.readouterr().err


def test_patgw_model_fits_shows_and_checks_pca_files(tmp_path: Path) -> None:
    """The ``pca`` kind of ``patgw model``, as a user runs it."""
    DATA.write_runs(tmp_path, DATA.plan_runs(4, 14), hours=48.0, every_h=0.25)
    export = str(tmp_path / "normal.jsonl")
    out = tmp_path / "pca.json"
    fit = patgw(
        "model", "fit", "pca", "--data", export, "--signals", ",".join(SIGNALS),
        "--output", str(out), "--id", "r1-normal", "--model-version", "1", "--bin-h", "4",
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert "r1-normal" in fit.stdout
    show = patgw("model", "show", str(out), "--json")
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["id"] == "r1-normal"
    check = patgw("model", "check", str(out), "--data", export, "--json")
    assert check.returncode == 0, check.stderr
    assert len(json.loads(check.stdout)["runs"]) == 4
    doc = json.loads(out.read_text())
    doc["t2_limit"] = 1.0
    out.write_text(json.dumps(doc))
    shown = patgw("model", "show", str(out))
    assert shown.returncode == 2 and "sha256 does not match" in shown.stderr
