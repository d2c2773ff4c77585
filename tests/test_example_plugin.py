"""The example vendor distribution (examples/mtsics_balance) as a plant installs it: ``pip install
-e`` into a fresh venv, discovered by ``patgw plugins``, run by ``patgw run``, its samples
exported, and its own tests passing with the ``gateway.testing`` kit only.

The fresh venv and the install: tests/example_venv.py (decision 0039).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, free_port, write_config
from example_venv import assert_type_clean, count_tests, install_example, run_own_tests
from example_venv import run as _run

EXAMPLE = REPO / "examples" / "mtsics_balance"


@pytest.fixture(scope="module")
def example_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh venv with the example installed editable; its python and the example's copy."""
    return install_example(EXAMPLE, tmp_path_factory.mktemp("example"))


def test_patgw_plugins_lists_the_example(example_venv: tuple[Path, Path], tmp_path: Path) -> None:
    python, _ = example_venv
    listed = _run(python, "-m", "gateway", "plugins", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    mine = {
        (row["kind"], row["name"], row["distribution"], row["version"])
        for row in json.loads(listed.stdout)
        if row["distribution"] == "mtsics-balance"
    }
    version = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["version"]
    assert mine == {
        ("driver", "mtsics_balance", "mtsics-balance", version),
        ("emulator", "mtsics_balance", "mtsics-balance", version),
    }


def test_patgw_emulate_prints_where_the_example_emulator_serves(
    example_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    python, _ = example_venv
    served = _run(
        python,
        *("-m", "gateway", "emulate", "mtsics_balance", "--port", "0", "--for", "0.5"),
        cwd=tmp_path,
    )
    assert served.returncode == 0, served.stderr
    host, _, port = served.stdout.strip().partition(":")
    assert host == "127.0.0.1" and int(port) > 0, served.stdout


def test_a_config_using_it_runs_and_exports(
    example_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    python, _ = example_venv
    port = free_port()
    config = write_config(
        tmp_path / "balance.yaml",
        {
            "area": "lab",
            "store": {"path": "balance.sqlite", "commit_interval_ms": 50},
            "data_dir": "data",
            "emulators": [
                {
                    "id": "balance_emulator",
                    "type": "mtsics_balance",
                    "options": {"port": port, "load_g": 12.5},
                }
            ],
            "instruments": [
                {
                    "id": "balance",
                    "driver": "mtsics_balance",
                    "poll_interval_s": 0.1,
                    "options": {"port": port},
                    "signals": [{"id": "weight", "unit": "mg"}, {"id": "stable"}],
                }
            ],
        },
    )
    ran = _run(python, "-m", "gateway", "run", str(config), "--for", "2", "--no-view", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    exported = _run(
        python, "-m", "gateway", "export", str(config), "--format", "jsonl", cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    weights = [r for r in rows if r["signal"] == "lab/balance/weight"]
    assert weights, exported.stdout[:2000]
    assert {(r["value"], r["unit"], r["quality"]) for r in weights} == {(12500.0, "mg", "good")}
    assert [r["seq"] for r in weights] == list(range(len(weights)))
    assert {r["value"] for r in rows if r["signal"] == "lab/balance/stable"} == {1}


def test_the_examples_own_tests_pass_with_the_kit(example_venv: tuple[Path, Path]) -> None:
    python, source = example_venv
    tested = run_own_tests(python, source)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    # The kit's fixtures came from the installed gateway's pytest11 entry point.
    plugins = next(line for line in tested.stdout.splitlines() if line.startswith("plugins:"))
    assert "pat-gateway-0.1.0" in plugins, plugins
    written = count_tests(source / "tests")
    assert f" {written} passed" in tested.stdout, tested.stdout[-2000:]


def test_the_example_type_checks_against_the_installed_gateway(
    example_venv: tuple[Path, Path],
) -> None:
    assert_type_clean(*example_venv)
