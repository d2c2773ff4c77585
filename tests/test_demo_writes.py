"""Issue 13's done-when on the demo configuration: the shipped demo users write the feed pump's
setpoint with `patgw write` through the local API; the change shows in the exported setpoint
signal and in `patgw audit export`; a value above the limit or a viewer is refused with exit 2
and audited; tampering with the trail makes `patgw audit verify` exit 2 naming the record."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import demo_copy, patgw, running, tamper_audit, wait_for
from test_controlled_writes import audit_path, patgw_with_password

from gateway import build_registry, load_plan

TARGET = "reactor1/feed_pump/speed_setpoint"


def write(config: Path, user: str, value: str, reason: str) -> subprocess.CompletedProcess[str]:
    """``patgw write`` of the demo's pump setpoint as ``user``, with the documented demo
    password."""
    return patgw_with_password(config, user, value, target=TARGET, reason=reason)


@pytest.mark.asyncio
async def test_the_demo_writes_the_pump_audits_it_and_detects_tampering(tmp_path: Path) -> None:
    config, _ = demo_copy(tmp_path)
    plan = load_plan(config, build_registry())
    async with running(plan) as (gateway, _):
        pump = next(r for r in gateway.runners if r.instrument_id == "feed_pump")
        await wait_for(lambda: pump.state.value == "connected", 30, what="the pump connected")
        done = await asyncio.to_thread(write, config, "operator", "5", "raise the glucose feed")
        assert done.returncode == 0, done.stderr
        setpoint = next(o for o in gateway.outputs if o.signal.id == TARGET)
        first = setpoint.seq
        await wait_for(lambda: setpoint.seq >= first + 2, 10, what="the setpoint polled again")
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

    check_tampering_is_named(config, audit_path(plan), records, writes)


def check_tampering_is_named(
    config: Path, path: Path, records: list[dict[str, Any]], writes: list[dict[str, Any]]
) -> None:
    """Each kind of tampering, on a copy of the trail as it was: verify names the first bad
    record."""
    pristine = path.read_bytes()
    victim, after = writes[0]["seq"], writes[1]["seq"]
    stopped = max(r["seq"] for r in records if r["action"] == "gateway.stopped")
    table = "audit_records"
    cases: dict[str, tuple[tuple[str, ...], int]] = {
        "edited": ((f"UPDATE {table} SET new = '9' WHERE seq = {victim}",), victim),
        "deleted": ((f"DELETE FROM {table} WHERE seq = {victim}",), victim),
        "swapped": (
            (
                f"UPDATE {table} SET seq = -1 WHERE seq = {victim}",
                f"UPDATE {table} SET seq = {victim} WHERE seq = {after}",
                f"UPDATE {table} SET seq = {after} WHERE seq = -1",
            ),
            victim,
        ),
        "tail cut": ((f"DELETE FROM {table} WHERE seq >= {stopped}",), stopped),
    }
    for case, (statements, first_bad) in cases.items():
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_bytes(pristine)
        tamper_audit(path, *statements)
        tampered = patgw("audit", "verify", str(config))
        said = tampered.stdout + tampered.stderr
        assert tampered.returncode == 2, (case, said)
        assert f"record {first_bad}" in said, (case, said)
