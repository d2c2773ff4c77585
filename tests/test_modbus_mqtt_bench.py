"""``benchmarks/modbus_mqtt.py`` end to end at a tiny load (one device, 1,000 values/s, 2 s):
real emulator processes, a real Mosquitto, ``patgw run`` as a subprocess, the subscriber process.
Checks that a run reports every figure, that values were delivered and counted once, that the
driver read the device's 100 registers in one request per poll, and that the gateway stopped
cleanly. No figure is judged: the load is too small and the machine shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

RUN_FIELDS = {
    "payload", "load", "devices", "offered_values_per_s", "first_value_s",
    "produced_values_per_s", "delivered_values_per_s", "produced_in_window",
    "delivered_in_window", "delivered_fraction", "received_values", "duplicates", "messages",
    "latency_p50_ms", "latency_p99_ms", "latency_max_ms", "backlog", "keeps_up",
    "modbus_requests", "values_per_request", "cpu_pct", "gateway_cpu_pct_per_1000_values_s",
    "subscriber_cpu_s", "rss_mb", "stop",
}  # fmt: skip


@pytest.mark.timeout(120)
def test_modbus_mqtt_benchmark_runs_and_reports(tmp_path: Path) -> None:
    command = [
        sys.executable, str(REPO / "benchmarks" / "modbus_mqtt.py"),
        "--payload", "sample,batch", "--loads", "1000",
        "--seconds", "2", "--warmup-s", "0.5", "--settle-s", "0.5",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    *runs, summary = lines
    assert [run["payload"] for run in runs] == ["sample", "batch"]
    for run in runs:
        assert run.keys() >= RUN_FIELDS, RUN_FIELDS - run.keys()
        assert run["devices"] == 1
        assert run["offered_values_per_s"] == 1000
        assert run["delivered_values_per_s"] > 0
        assert run["received_values"] > 0
        assert run["produced_in_window"] > 0
        assert 0 <= run["duplicates"] < run["received_values"]
        assert run["latency_p50_ms"] is not None and run["latency_p50_ms"] >= 0
        assert {"gateway", "broker", "emulators"} <= run["cpu_pct"].keys()
        assert run["rss_mb"]["end"] > 0
        # 100 contiguous registers: one read request per poll (a request per register: 1).
        assert run["values_per_request"] > 50
        assert run["stop"]["exited"] and run["stop"]["returncode"] == 0, run["stop"]
        # Every seq between a signal's first and last committed sample is there.
        assert run["stop"]["unaccounted_seq_gaps"] == 0, run["stop"]
    # One message per value, one per instrument and delivery.
    sample, batch = runs
    assert sample["messages"] == sample["received_values"]
    assert batch["messages"] < batch["received_values"]
    assert set(summary["summary"]) == {"sample", "batch"}
    assert summary["machine"]["cpus"] >= 1
