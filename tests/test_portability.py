"""Windows, as far as this Linux machine can show it (tests/windows_sim.py says what is
simulated and what is not): every module of gateway/, plugins/ and firmware_stubs/ imports
where the POSIX-only modules and names are missing; a gateway runs, locks its store, writes its
audit trail and a JSON-lines file, and stops; COM port names pass config validation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REPO,
    demo_copy,
    free_port,
    patgw,
    pump_instrument,
    stored_by_signal,
    write_config,
)

from gateway import ConfigError, build_registry, load_plan


def simulated_windows(*args: str, cwd: Path) -> dict[str, Any]:
    """Run tests/windows_sim.py with ``args``; the report it prints last."""
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "windows_sim.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def test_every_module_imports_without_posix_only_modules(tmp_path: Path) -> None:
    config, _ = demo_copy(tmp_path)
    report = simulated_windows("imports", str(config), cwd=tmp_path)
    files = [
        path
        for package in ("gateway", "plugins", "firmware_stubs")
        for path in (REPO / package).rglob("*.py")
    ]
    assert len(report["modules"]) == len(files)  # every file of the three packages was tried
    assert report["failed"] == {}
    assert report["check"] == 0  # `patgw check` of the demo's configuration
    # The pseudo-terminal emulator needs POSIX: it says so when asked to start, not at import.
    assert report["pty_error"] is not None
    assert "needs a POSIX system" in report["pty_error"]
    assert "serial: false" in report["pty_error"]


def test_a_gateway_runs_and_stops_as_on_windows(tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "data" / "store.sqlite"
    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "area": "reactor1",
            "store": {"path": "data/store.sqlite", "commit_interval_ms": 50},
            "data_dir": "data",
            "emulators": [{"id": "pump_emulator", "type": "feed_pump", "options": {"port": port}}],
            "instruments": [pump_instrument("feed_pump", port)],
            "sinks": [{"id": "file", "type": "jsonl_file", "options": {"path": "data/s.jsonl"}}],
        },
    )
    report = simulated_windows("run", str(config), "3", cwd=tmp_path)
    assert report["exit"] == 0
    # Every data file the gateway opened itself was opened in binary mode (O_BINARY).
    assert report["text_mode"] == []
    stored = {(s.signal, s.seq) for samples in stored_by_signal(store).values() for s in samples}
    lines = (tmp_path / "data" / "s.jsonl").read_bytes().splitlines(keepends=True)
    assert lines and all(line.endswith(b"}\n") for line in lines)  # no "\r\n"
    # What the sink wrote was committed (what it had no time for at the stop stays in the store).
    written = [json.loads(line) for line in lines]
    assert {(w["signal"], w["seq"]) for w in written} <= stored
    audit = patgw("audit", "verify", str(config), cwd=tmp_path)
    assert audit.returncode == 0, audit.stderr


@pytest.mark.parametrize("port", ["COM3", "COM12", r"\\.\COM12"])
def test_windows_serial_port_names_pass_config_validation(tmp_path: Path, port: str) -> None:
    """pyserial opens ``COM3`` (and ``\\\\.\\COM12``) on Windows: the built-in serial drivers'
    options keep the name as written, neither refused nor turned into a path."""
    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "area": "r1",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "instruments": [
                {
                    "id": "raman",
                    "driver": "ocean_obp",
                    "options": {"port": port, "laser_wavelength_nm": 785},
                    "signals": [{"id": "spectrum"}],
                },
                {
                    "id": "balance",
                    "driver": "modbus",
                    "options": {"transport": "rtu", "serial_port": port, "profile": "feed_pump"},
                },
            ],
        },
    )
    try:
        plan = load_plan(config, build_registry())
    except ConfigError as exc:
        pytest.fail(f"{port!r} refused: {list(exc.problems)}")
    options = {ip.config.id: ip.driver.options for ip in plan.instruments}  # type: ignore[attr-defined]
    assert options["raman"].port == port
    assert options["balance"].serial_port == port
