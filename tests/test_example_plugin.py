"""The example vendor distribution (examples/mtsics_balance) as a plant installs it: ``pip install
-e`` into a fresh venv, discovered by ``patgw plugins``, run by ``patgw run``, its samples
exported, and its own tests passing with the ``gateway.testing`` kit only.

The fresh venv has no pip and no packages of its own: a ``.pth`` file adds this project's venv
(the gateway, its dependencies, pytest and pip) as a site folder behind it, so nothing is
downloaded and it takes seconds (decision 0039). The example is copied to ``tmp_path`` first, so
its build leaves nothing in the repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, free_port, write_config

EXAMPLE = REPO / "examples" / "mtsics_balance"


def _run(
    python: Path, *args: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def example_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh venv with the example installed editable; its python and the example's copy."""
    root = tmp_path_factory.mktemp("example")
    source = root / "mtsics_balance"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root)
    ours = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "_project_venv.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n"
    )
    installed = _run(
        python,
        *("-m", "pip", "install", "--disable-pip-version-check", "--no-deps"),
        *("--no-build-isolation", "--no-index", "-e", str(source)),
        cwd=root,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python, source


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
    # Its own temporary folders inside this test's: never beside another pytest run's.
    basetemp = f"--basetemp={source.parent / 'pytest-tmp'}"
    tested = _run(python, "-m", "pytest", "-p", "no:cacheprovider", basetemp, cwd=source)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    # The kit's fixtures came from the installed gateway's pytest11 entry point.
    plugins = next(line for line in tested.stdout.splitlines() if line.startswith("plugins:"))
    assert "pat-gateway-0.1.0" in plugins, plugins
    written = (source / "tests" / "test_balance.py").read_text().count("\ndef test_")
    written += (source / "tests" / "test_balance.py").read_text().count("\nasync def test_")
    assert f" {written} passed" in tested.stdout, tested.stdout[-2000:]


def test_the_example_type_checks_against_the_installed_gateway(
    example_venv: tuple[Path, Path],
) -> None:
    # From the plugin's own folder, as its author runs it: gateway is found through the venv
    # (decision 0039), so its types are checked, not skipped as missing.
    python, source = example_venv
    checked = _run(python, "-m", "mypy", "--strict", "--no-incremental", "src", "tests", cwd=source)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("Success: no issues found"), checked.stdout
