"""Issue 14's review: when the gateway process dies (SIGKILL, no chance to clean up) while its
loop drives the feed pump hard, the pump's own watchdog must take over. The emulated pump runs in
its own ``patgw emulate`` process, the gateway in a ``patgw run`` process; the test reads the
pump over Modbus with pymodbus' own client, no gateway code."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, write_config
from test_controlled_writes import HASHES, PASSWORDS
from test_feed_pump_emulator import f32, make_client, poll_registers, read_all

HEARTBEAT, WATCHDOG_S, TRIPPED = 15, 16, 19
SETPOINT = 0  # float32 at registers 0-1
WATCHDOG = 3  # s
SAFE_RPM = 5.0


def gateway_config(tmp_path: Path, pump_port: int) -> Path:
    """A loop that drives the pump towards 80 rpm (its measurement, the pump's own flow, far
    below the setpoint) and beats the pump's watchdog every second."""
    return write_config(
        tmp_path / "gateway.yaml",
        {
            "area": "r",
            "data_dir": str(tmp_path / "data"),
            "store": {"path": str(tmp_path / "s.sqlite")},
            "instruments": [
                {
                    "id": "pump",
                    "driver": "modbus",
                    "poll_interval_s": 0.2,
                    "options": {
                        "host": "127.0.0.1",
                        "port": pump_port,
                        "profile": "feed_pump",
                        "timeout_s": 1.0,
                    },
                    "signals": [
                        {"id": "flow", "unit": "mL/min"},
                        {"id": "speed_setpoint", "unit": "{rev}/min"},
                        {"id": "heartbeat"},
                    ],
                }
            ],
            "processors": [
                {
                    "id": "loop",
                    "type": "pi_control",
                    "options": {
                        "measurement": "pump/flow",
                        "measurement_unit": "mL/min",
                        "setpoint": 1000.0,
                        "target": "r/pump/speed_setpoint",
                        "output_unit": "{rev}/min",
                        "readback": "pump/speed_setpoint",
                        "kp": 1.0,
                        "ti_h": 1.0,
                        "out_max": 80,
                        "fallback": [[0, 0]],
                        "heartbeat": "r/pump/heartbeat",
                        "heartbeat_s": 1.0,
                    },
                }
            ],
            "security": {
                "users": [{"name": n, "password_hash": HASHES[n], "roles": [n]} for n in PASSWORDS]
            },
            "writes": [
                {"target": "r/pump/speed_setpoint", "min": 0, "max": 100, "role": "operator"},
                {
                    "target": "r/pump/heartbeat",
                    "min": 0,
                    "max": 65535,
                    "heartbeat": True,
                    "role": "operator",
                },
            ],
        },
    )


def patgw_process(*args: str) -> subprocess.Popen[bytes]:
    """``patgw ARGS`` started in its own process, its output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@pytest.mark.asyncio
async def test_a_killed_gateway_leaves_the_pump_to_its_watchdog(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    options = ["setpoint_rpm=0", f"watchdog_s={WATCHDOG}", f"safe_rpm={SAFE_RPM}"]
    arguments = [arg for option in options for arg in ("--option", option)]
    processes.append(patgw_process("emulate", "feed_pump", "--port", str(port), *arguments))
    client = make_client(port)
    for _ in range(300):  # the emulator's start: up to 30 s on a loaded machine
        if await client.connect():
            break
        await asyncio.sleep(0.1)
    assert client.connected, "the emulator did not start"
    try:
        config = gateway_config(tmp_path, port)
        gateway = patgw_process("run", str(config))
        processes.append(gateway)
        # The loop drives the pump hard and beats its watchdog.
        driven = await poll_registers(client, lambda w: f32(w, SETPOINT) >= 40.0, 60.0)
        assert driven[WATCHDOG_S] == WATCHDOG and driven[TRIPPED] == 0
        beat = driven[HEARTBEAT]
        await poll_registers(client, lambda w: w[HEARTBEAT] != beat, 30.0)
        gateway.kill()  # SIGKILL: no stop, no last write, no release
        await asyncio.to_thread(gateway.wait, 30)
        tripped = await poll_registers(client, lambda w: w[TRIPPED] == 1, 30.0)
        assert f32(tripped, SETPOINT) == SAFE_RPM
        # And it stays safe: nobody beats, the speed head follows the safe setpoint.
        await poll_registers(client, lambda w: abs(f32(w, 2) - SAFE_RPM) < 1e-6, 30.0)
        words = await read_all(client)
        assert (words[TRIPPED], f32(words, SETPOINT)) == (1, SAFE_RPM)
    finally:
        client.close()
