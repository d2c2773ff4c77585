"""A configuration of emulators only (no instrument) runs and stops cleanly: the way to serve
the emulated line from one process while a gateway in another reads it (the continuous
benchmark measures the gateway's own CPU and memory so)."""

from __future__ import annotations

from pathlib import Path

from conftest import free_port, patgw, write_config


def test_a_config_of_emulators_only_runs_and_stops_cleanly(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "emulators.yaml",
        {
            "version": 1,
            "site": "test",
            "area": "emulators",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "emulators": [
                {"id": "pump", "type": "feed_pump", "options": {"port": free_port()}},
            ],
            "instruments": [],
        },
    )
    result = patgw("run", str(config), "--for", "1", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Set of Tasks/Futures is empty" not in result.stderr
    assert "gateway.stopped" in result.stdout + result.stderr
