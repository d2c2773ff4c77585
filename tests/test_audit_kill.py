"""kill -9 of a running gateway in the middle of controlled writes leaves an audit trail that
verifies: every record is whole, the chain unbroken (a write may end at its request or its
execution — the trail says how far it got)."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from conftest import free_port, patgw, write_config
from test_controlled_writes import PASSWORDS, TARGET, _config, api_call

from gateway.audit import read_records
from gateway.loader import read_config


def _ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:
                if json.loads(r.read())["ready"]:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not get ready in time")


def _write_until(port: int, stop: threading.Event, answers: list[int], round_: int) -> None:
    """Write 2, 3, 2, ... until ``stop`` or the gateway is gone; each answer's status."""
    value = 2.0
    while not stop.is_set():
        value = 3.0 if value == 2.0 else 2.0
        body = {"target": TARGET, "value": value, "reason": f"round {round_}"}
        try:
            status, _ = api_call(
                port, "POST", "/api/v1/writes", "operator", PASSWORDS["operator"], body
            )
        except (OSError, http.client.HTTPException, ValueError):
            return  # the gateway is gone (killed mid-answer, maybe)
        answers.append(status)


def test_a_gateway_killed_during_writes_leaves_a_verifiable_trail(tmp_path: Path) -> None:
    http_port = free_port()
    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "area": "reactor1",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "data_dir": str(tmp_path / "data"),
            **_config(tmp_path, free_port(), http_port),
        },
    )
    rng = random.Random(13)
    for round_ in range(3):
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", str(config), "--no-view"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _ready(http_port, time.monotonic() + 30)
            stop = threading.Event()
            answers: list[int] = []

            writer = threading.Thread(
                target=_write_until, args=(http_port, stop, answers, round_), name="test.writes"
            )
            writer.start()
            deadline = time.monotonic() + 20
            while answers.count(200) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)  # (the first writes may find the pump not connected yet)
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the middle of a write
            os.kill(gateway.pid, signal.SIGKILL)
            stop.set()
            writer.join(30)
            assert answers.count(200) >= 3, answers
        finally:
            gateway.kill()
            gateway.wait(30)
        verified = patgw("audit", "verify", str(config))
        assert verified.returncode == 0, verified.stdout + verified.stderr
    loaded = read_config(config)
    trail = loaded.audit.resolved(loaded.store.path, loaded.data_dir).path
    actions = [r.event.action for r in read_records(trail)]
    assert actions.count("gateway.started") == 3
    assert actions.count("write.read_back") >= 9
