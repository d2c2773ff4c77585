"""Issue 13's done-when on the demo configuration: the shipped demo users write the feed pump's
setpoint with `patgw write` through the local API; the change shows in the exported setpoint
signal and in `patgw audit export`; a value above the limit or a viewer is refused with exit 2
and audited; tampering with the trail makes `patgw audit verify` exit 2 naming the record."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import demo_copy, patgw, running, wait_for

from gateway import build_registry, load_plan

TARGET = "reactor1/feed_pump/speed_setpoint"


def write(config: Path, user: str, value: str, reason: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "write",
            str(config),
            TARGET,
            value,
            "--user",
            user,
            "--reason",
            reason,
        ],
        input=f"{user}-password\n",  # the documented demo secrets
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.asyncio
async def test_the_demo_writes_the_pump_audits_it_and_detects_tampering(tmp_path: Path) -> None:
    config, _ = demo_copy(tmp_path)
    plan = load_plan(config, build_registry())
    async with running(plan) as (gateway, _):
        pump = next(r for r in gateway.runners if r.instrument_id == "feed_pump")
        await wait_for(lambda: pump.state.value == "connected", 30, "the pump connected")
        done = await asyncio.to_thread(write, config, "operator", "5", "raise the glucose feed")
        assert done.returncode == 0, done.stderr
        setpoint = next(o for o in gateway.outputs if o.signal.id == TARGET)
        first = setpoint.seq
        await wait_for(lambda: setpoint.seq >= first + 2, 10, "the setpoint polled again")
        above = await asyncio.to_thread(write, config, "operator", "50", "too much")
        assert above.returncode == 2 and "outside the limits 0..10" in above.stderr
        viewer = await asyncio.to_thread(write, config, "viewer", "4", "not mine to do")
        assert viewer.returncode == 2 and "needs the role 'operator'" in viewer.stderr
        assert plan.emulators[1].instance.emulator.model.setpoint_rpm == 5

    exported = patgw("export", str(config), "--signal", TARGET)
    assert exported.returncode == 0, exported.stderr
    values = [json.loads(line)["value"] for line in exported.stdout.splitlines()]
    assert values[0] == 2 and values[-1] == 5

    audit = patgw("audit", "export", str(config), "--format", "jsonl")
    assert audit.returncode == 0, audit.stderr
    records = [json.loads(line) for line in audit.stdout.splitlines()]
    writes = [r for r in records if r["action"].startswith("write.")]
    assert [(r["action"], r["user"], r["outcome"]) for r in writes] == [
        ("write.requested", "operator", "accepted"),
        ("write.executed", "operator", "ok"),
        ("write.read_back", "operator", "ok"),
        ("write.refused", "operator", "refused"),
        ("write.refused", "viewer", "refused"),
    ]
    for record in writes[:3]:
        assert (record["old"], record["new"], record["reason"]) == (2, 5, "raise the glucose feed")
    assert writes[3]["details"]["rule"] == "limit" and writes[4]["details"]["rule"] == "role"
    assert {"gateway.started", "gateway.stopped", "login"} <= {r["action"] for r in records}

    verified = patgw("audit", "verify", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # One edited row: verify names it.
    victim = writes[0]["seq"]
    with sqlite3.connect(plan.config.audit.path) as db:
        db.execute("UPDATE audit_record SET new = '9' WHERE seq = ?", (victim,))
    tampered = patgw("audit", "verify", str(config))
    assert tampered.returncode == 2
    assert f"record {victim}" in tampered.stdout + tampered.stderr
