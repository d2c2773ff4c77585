"""The ``patgw csv-summary`` command and the ``linear`` model kind, run as a user runs them:
``patgw`` in a subprocess, which finds them through the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway import PluginKind, Registry


def patgw(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_plugin_registers_each_kind_from_its_distribution(patgw_registry: Registry) -> None:
    for kind, name in (
        (PluginKind.SINK, "csv_file"),
        (PluginKind.PROCESSOR, "moving_average"),
        (PluginKind.COMMAND, "csv-summary"),
        (PluginKind.MODEL, "linear"),
    ):
        registration = patgw_registry.get(kind, name)
        assert registration is not None, f"{kind} {name} not registered"
        assert (registration.distribution, registration.api) == ("plant-extras", "1.0")


def test_csv_summary_counts_each_sample_once(tmp_path: Path) -> None:
    csv_file = tmp_path / "samples.csv"
    csv_file.write_text(
        "signal,value,unit,source_ts,quality,reason,seq,historical\n"
        "lab/pump/flow,1.0,mL/min,2026-12-07T10:00:00.000000000Z,good,,0,0\n"
        "lab/pump/flow,,mL/min,2026-12-07T10:00:01.000000000Z,bad,sensor fault,1,0\n"
        "lab/pump/flow,,mL/min,2026-12-07T10:00:01.000000000Z,bad,sensor fault,1,1\n"
        "lab/pump/flow,3.0,mL/min,2026-12-07T10:00:02.000000000Z,good,,2,1\n"
    )
    summary = patgw("csv-summary", str(csv_file), "--json")
    assert summary.returncode == 0, summary.stderr
    assert json.loads(summary.stdout) == {
        "lab/pump/flow": {"samples": 3, "good": 2, "last": 3.0, "unit": "mL/min"}
    }
    text = patgw("csv-summary", str(csv_file))
    assert text.stdout == "lab/pump/flow: 3 samples, 2 good, last 3.0 mL/min\n"


def test_csv_summary_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = patgw("csv-summary", str(tmp_path / "none.csv"))
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"patgw csv-summary: {tmp_path / 'none.csv'}: ")


def test_linear_model_fit_show_and_check(tmp_path: Path) -> None:
    model = tmp_path / "level.json"
    fitted = patgw(
        "model", "fit", "linear", "--point", "4=0", "--point", "20=100", "--output", str(model)
    )
    assert fitted.returncode == 0, fitted.stderr
    assert json.loads(model.read_text()) == {"kind": "linear", "slope": 6.25, "offset": -25.0}
    shown = patgw("model", "show", str(model))
    assert shown.stdout == f"{model}: linear, y = 6.25 * x + -25\n"
    assert patgw("model", "check", str(model), "--point", "12=50").returncode == 0
    off = patgw("model", "check", str(model), "--point", "12=51", "--tolerance", "0.5")
    assert off.returncode == 2 and "largest error 1" in off.stdout
    one = patgw("model", "fit", "linear", "--point", "4=0", "--output", str(model))
    assert one.returncode == 2 and "give two --point" in one.stderr
