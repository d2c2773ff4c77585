"""The suite runs on pytest-xdist workers (``scripts/test``): what the workers share must not
collide. Each worker process hands out its own free ports; two workers never hand out the same
one (a port checked free by one worker may not be bound yet when another checks it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import conftest
import pytest

REPO = Path(__file__).resolve().parents[1]


def ports_of(worker: str, count: int, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """200 ports as the worker ``worker`` of ``count`` hands them out."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    monkeypatch.setattr(conftest, "_handed_out", set())
    return {conftest.free_port() for _ in range(200)}


def test_two_workers_never_hand_out_the_same_port(monkeypatch: pytest.MonkeyPatch) -> None:
    low, _ = conftest._ephemeral_range()
    first = ports_of("gw0", 2, monkeypatch)
    second = ports_of("gw1", 2, monkeypatch)
    assert len(first) == len(second) == 200
    assert first.isdisjoint(second)
    assert max(first) < min(second) and max(second) < low  # below the kernel's own


def test_one_process_uses_the_whole_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    low, _ = conftest._ephemeral_range()
    assert conftest._port_slice() == (max(1024, low - 12000), low)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "-n 3 --dist worksteal"),
        (["-k", "x"], "-n 3 --dist worksteal"),
        (["tests/test_unece.py"], ""),  # a file named: one process, as before
        (["tests/test_unece.py::test_x"], ""),
        (["-n", "2"], ""),  # -n given: as given
        (["tests"], "-n 3 --dist worksteal"),  # a folder: the workers
    ],
)
def test_scripts_test_adds_workers_unless_a_file_or_n_is_given(
    args: list[str], expected: str
) -> None:
    """scripts/test's choice, as it makes it: its last line run with printf for pytest."""
    script = (REPO / "scripts" / "test").read_text(encoding="utf-8")
    body = script[script.index("workers=(") :].replace(
        "exec .venv/bin/python -m pytest -p no:cacheprovider", "printf '%s\\n'"
    )
    shown = subprocess.run(
        ["bash", "-c", body, "scripts/test", *args],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert " ".join(shown[: len(shown) - len(args)]) == expected
    assert shown[len(shown) - len(args) :] == args
