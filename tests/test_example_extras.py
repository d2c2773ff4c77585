"""The second example distribution (examples/plant_extras: a sink, a processor, a command and a
model kind) as a plant installs it: ``pip install -e`` into a fresh venv (tests/example_venv.py),
listed by ``patgw plugins``, its own tests passing with the ``gateway.testing`` kit only, and
type-clean against the installed gateway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO
from example_venv import assert_type_clean, count_tests, install_example, run, run_own_tests

EXAMPLE = REPO / "examples" / "plant_extras"


@pytest.fixture(scope="module")
def extras_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh venv with the example installed editable; its python and the example's copy."""
    return install_example(EXAMPLE, tmp_path_factory.mktemp("extras"))


def test_patgw_plugins_lists_each_kind_it_registers(
    extras_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    python, _ = extras_venv
    listed = run(python, "-m", "gateway", "plugins", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    mine = {
        (row["kind"], row["name"], row["api"])
        for row in json.loads(listed.stdout)
        if row["distribution"] == "plant-extras"
    }
    assert mine == {
        ("sink", "csv_file", "1.0"),
        ("processor", "moving_average", "1.0"),
        ("command", "csv-summary", "1.0"),
        ("model", "linear", "1.0"),
    }


def test_patgw_schema_markdown_documents_the_vendors_options(
    extras_venv: tuple[Path, Path], tmp_path: Path
) -> None:
    python, _ = extras_venv
    printed = run(python, "-m", "gateway", "schema", "--markdown", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    sink = printed.stdout.split("### `csv_file`", 1)[1].split("\n### ", 1)[0]
    assert "(from `plant-extras`)" in sink
    assert "| `fsync` | boolean | `false` | fsync after every batch (slower, safer). |" in sink
    processor = printed.stdout.split("### `moving_average`", 1)[1].split("\n### ", 1)[0]
    assert "| `window` | integer | `5` | Values averaged. |" in processor


def test_the_examples_own_tests_pass_with_the_kit(extras_venv: tuple[Path, Path]) -> None:
    python, source = extras_venv
    tested = run_own_tests(python, source)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert f" {count_tests(source / 'tests')} passed" in tested.stdout, tested.stdout[-2000:]


def test_the_example_type_checks_against_the_installed_gateway(
    extras_venv: tuple[Path, Path],
) -> None:
    assert_type_clean(*extras_venv)
