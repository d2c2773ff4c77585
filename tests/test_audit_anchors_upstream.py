"""The audit trail's signed head leaves the edge PC: published retained over MQTT (a real
Mosquitto) and served by the northbound OPC UA server, each copy verifiable against the trail
with the gateway's public key; and the wall-clock watch that goes into the trail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from conftest import (
    free_port,
    plan_for,
    pump_instrument,
    running,
    trusted_client,
    wait_for,
)
from mosquitto import Mosquitto, Subscriber
from test_controlled_writes import audit_path, audit_records

from gateway import hash_password
from gateway.audit import verify
from gateway.runtime.clock import ClockStep, ClockWatch


def _pump(tmp_path: Path, sinks: list[dict[str, Any]]) -> dict[str, Any]:
    port = free_port()
    return {
        "site": "s1",
        "emulators": [{"id": "pump_emulator", "type": "feed_pump", "options": {"port": port}}],
        "instruments": [pump_instrument("pump", port)],
        "sinks": sinks,
        "audit": {"sign_interval_s": 0.2},
    }


def _check_anchor(plan: Any, anchor: dict[str, Any], tmp_path: Path) -> None:
    """The copy names a record the trail holds, with its hash, and verifies as an anchor."""
    by_seq = {r["seq"]: r for r in audit_records(plan)}
    assert by_seq[anchor["seq"]]["hash"] == anchor["hash"]
    copy = tmp_path / "upstream-anchors.jsonl"
    copy.write_text(json.dumps(anchor) + "\n")
    report = verify(audit_path(plan), anchor_files=[copy])
    assert report.ok, report.problem


@pytest.mark.asyncio
async def test_the_anchor_is_published_retained_over_mqtt(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sink = {"id": "up", "type": "mqtt", "options": {"url": mosquitto.url}}
    plan = plan_for(tmp_path, **_pump(tmp_path, [sink]))
    topic = "pat/s1/gateway/patgw-s1-up/audit"
    async with running(plan), Subscriber(mosquitto, topic) as subscriber:
        await wait_for(lambda: subscriber.on(topic), 15, what="an anchor on the audit topic")
    anchor = json.loads(subscriber.on(topic)[-1].payload)
    assert {"seq", "hash", "signature", "key_id"} <= anchor.keys()
    _check_anchor(plan, anchor, tmp_path)
    # Retained: a client that subscribes later still gets the last one.
    async with Subscriber(mosquitto, topic) as late:
        await wait_for(lambda: late.on(topic), 10, what="the retained anchor")
    assert late.on(topic)[-1].retain


@pytest.mark.asyncio
async def test_the_anchor_is_served_by_the_opcua_server(tmp_path: Path) -> None:
    sink = {"id": "ua", "type": "opcua_server", "options": {"port": free_port()}}
    config = _pump(tmp_path, [sink])
    config["security"] = {
        "users": [
            {
                "name": "viewer",
                "password_hash": hash_password("pw"),
                "roles": ["viewer"],
            }
        ]
    }
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        await wait_for(lambda: gateway.audit and gateway.audit.anchors, 15, what="an anchor")
        server = plan.sinks[0].instance
        client = await trusted_client(server, tmp_path / "client", "viewer", "pw")
        async with client:
            index = await client.get_namespace_index(server.namespace_uri)
            node = client.get_node(ua.NodeId("reactor1/gateway/audit_anchor", index))
            text = await node.read_value()
            level = await node.get_user_access_level()
    assert level == {ua.AccessLevel.CurrentRead}
    _check_anchor(plan, json.loads(text), tmp_path)


def test_a_wall_clock_step_is_reported_with_its_size() -> None:
    wall = [1_000_000_000_000]
    mono = [5_000_000_000]
    steps: list[ClockStep] = []
    watch = ClockWatch(steps.append, _wall=lambda: wall[0], _mono=lambda: mono[0])
    before = (wall[0], mono[0])
    wall[0] += 1_000_000_000  # one second of both: no step
    mono[0] += 1_000_000_000
    before = watch.check(*before)
    assert steps == []
    wall[0] += 1_000_000_000 - 30_000_000_000  # set back 30 s during one second
    mono[0] += 1_000_000_000
    watch.check(*before)
    assert [round(s.step_s) for s in steps] == [-30]
    assert watch.health()["steps"] == 1 and watch.health()["last_step_s"] == -30.0
    assert watch.health()["sync"] in {"synchronized", "unsynchronized", "unknown"}


@pytest.mark.asyncio
async def test_pruning_and_sink_losses_are_recorded_as_summaries(tmp_path: Path) -> None:
    """A store budget of 0.5 s prunes every check; an MQTT sink whose broker never answers,
    with a retention of 20 samples (drop_oldest), gives up all but the newest 20: both show in
    the trail as summary records (per tick), not one record per sample."""
    sink = {
        "id": "up",
        "type": "mqtt",
        "retention": {"max_samples": 20, "policy": "drop_oldest"},
        "options": {"url": f"mqtt://127.0.0.1:{free_port()}"},  # nothing listens
    }
    config = _pump(tmp_path, [sink])
    config["store"] = {
        "path": str(tmp_path / "store.sqlite"),
        "commit_interval_ms": 20,
        "budget": {"max_age_s": 0.5, "check_interval_s": 0.2},
    }
    plan = plan_for(tmp_path, **config)

    def actions() -> list[str]:
        return [r["action"] for r in audit_records(plan)]

    async with running(plan) as (_, task):
        await wait_for(lambda: "store.pruned" in actions(), 20, what="a prune on record")
        await wait_for(lambda: "data.lost" in actions(), 20, what="a loss summary on record")
    dropped = task.result().sinks["up"]["dropped"]
    records = audit_records(plan)
    pruned = [r for r in records if r["action"] == "store.pruned"]
    assert all(r["details"]["samples"] > 0 for r in pruned)
    losses = [r for r in records if r["action"] == "data.lost" and r["target"] == "sink:up"]
    # The summaries add up (each tick's, up to the last tick: not more than the run gave up).
    total = sum(r["details"]["dropped_since_last"] for r in losses)
    assert 0 < total <= dropped
    assert losses[-1]["details"]["dropped_total"] == total
    assert len(losses) < total  # summaries, not one per sample
