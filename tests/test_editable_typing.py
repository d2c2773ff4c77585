"""The project's editable install is visible to type checkers (decision 0039): mypy, run from a
folder outside the repository as a plugin author's project runs it, finds ``gateway`` and its
types through the venv's site-packages (setuptools' default editable install hides it behind an
import hook that mypy cannot follow: "Cannot find implementation or library stub")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """\
from gateway import Channel, InstrumentIO, Quality


def publish(io: InstrumentIO) -> Channel:
    io.output("weight").publish(1.0, quality=Quality.GOOD)
    return Channel("weight", "g")


wrong: int = Channel("weight", "g")
"""


def test_mypy_outside_the_repository_sees_gateway(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(PROBE)
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "probe.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # Exactly the one planted error: gateway was found, typed (py.typed), and checked against.
    assert checked.stdout.splitlines() == [
        'probe.py:9: error: Incompatible types in assignment (expression has type "Channel",'
        ' variable has type "int")  [assignment]',
        "Found 1 error in 1 file (checked 1 source file)",
    ], checked.stdout + checked.stderr
