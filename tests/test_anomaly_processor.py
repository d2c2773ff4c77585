"""The ``anomaly`` processor in the real runtime: alarms raised after the persistence rule,
published as signals naming the instrument, acknowledged through the local API, cleared with
hysteresis, every transition in the audit trail; and refusals at load."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from conftest import free_port, patgw, running, stored_by_signal, wait_for, write_config
from pydantic import BaseModel, ConfigDict
from test_controlled_writes import HASHES, PASSWORDS, api_call, audit_records

import plugins.anomaly.plugin as anomaly_plugin
from gateway import (
    Channel,
    ConfigError,
    InstrumentIO,
    PluginContext,
    Registry,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.loader import Plan
from gateway.runtime import Gateway

ROOT = Path(__file__).resolve().parent.parent
ALARM = "t/watch/feed_pump_wear"


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dial:
    """A device whose reading the test sets: ``efficiency`` (1 = pump delivers what it says)."""

    value: ClassVar[float] = 1.0
    published: ClassVar[int] = 0

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        pass

    def channels(self) -> Sequence[Channel]:
        return [Channel("efficiency", "1")]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        while True:
            io.output("efficiency").publish(Dial.value)
            Dial.published += 1
            await asyncio.sleep(0.01)


class Plugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("dial", Dial, NoOptions)


CHECK = {
    "name": "feed_pump_wear",
    "kind": "level",
    "signal": "dev/efficiency",
    "instrument": "feed_pump",
    "low": 0.92,
    "target": 1.0,
    "message": "delivered feed {deviation_pct:.0f} % below reported (tubing wear?)",
    "persistence": {"k": 3, "n": 5, "clear_ratio": 0.99, "clear_points": 5},
}


def config(tmp_path: Path, http_port: int, **options: Any) -> dict[str, Any]:
    return {
        "area": "t",
        "data_dir": str(tmp_path / "data"),
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [{"id": "dev", "driver": "dial"}],
        "processors": [
            {"id": "watch", "type": "anomaly", "options": {"checks": [CHECK], **options}}
        ],
        "http": {"host": "127.0.0.1", "port": http_port, "api": True},
        "security": {
            "users": [
                {"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS
            ]
        },
    }


def plan(tmp_path: Path, document: dict[str, Any]) -> Plan:
    registry = build_registry([Plugin(), anomaly_plugin], entry_points=False)
    return load_plan(write_config(tmp_path / "g.yaml", document), registry)


class Bench:
    def __init__(self, plan: Plan, port: int, gateway: Gateway) -> None:
        self.plan, self.port, self.gateway = plan, port, gateway

    async def acknowledge(self, user: str, **body: Any) -> tuple[int, dict[str, Any]]:
        body.setdefault("reason", "seen it")
        return await asyncio.to_thread(
            api_call,
            self.port,
            "POST",
            "/api/v1/processors/watch/acknowledge",
            user,
            PASSWORDS[user],
            body,
        )

    async def status(self) -> dict[str, Any]:
        code, answer = await asyncio.to_thread(
            api_call, self.port, "GET", "/api/v1/processors/watch", "viewer", "viewer-password"
        )
        assert code == 200
        return answer

    def records(self) -> list[dict[str, Any]]:
        return [r for r in audit_records(self.plan) if r["action"].startswith("alarm.")]

    def has(self, action: str) -> bool:
        return any(r["action"] == action for r in self.records())


@pytest_asyncio.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    Dial.value = 1.0
    port = free_port()
    the_plan = plan(tmp_path, config(tmp_path, port))
    async with running(the_plan) as (gateway, _):
        yield Bench(the_plan, port, gateway)


@pytest.mark.asyncio
async def test_an_alarm_is_raised_acknowledged_and_cleared_and_each_step_audited(
    bench: Bench,
) -> None:
    await wait_for(lambda: Dial.published > 10, 10, what="the dial publishing")
    # Nothing to acknowledge yet: 409, and nothing recorded.
    code, answer = await bench.acknowledge("operator", alarm="feed_pump_wear")
    assert code == 409 and "nothing to acknowledge" in answer["error"]
    Dial.value = 0.9
    await wait_for(lambda: bench.has("alarm.raised"), 10, what="alarm.raised in the trail")
    (raised,) = bench.records()
    assert raised["user"] == "watch" and raised["target"] == "watch/feed_pump_wear"
    assert raised["new"] == 2
    assert raised["reason"].startswith("feed_pump: dev/efficiency 0.9 below 0.92")
    assert raised["reason"].endswith("; delivered feed 10 % below reported (tubing wear?)")
    status = await bench.status()
    assert "active, unacknowledged" in json.dumps(status)
    # A viewer may not acknowledge; an operator may; an unknown alarm is bad input.
    code, answer = await bench.acknowledge("viewer", alarm="feed_pump_wear")
    assert code == 403
    code, answer = await bench.acknowledge("operator", alarm="nothing_such")
    assert code == 400 and "feed_pump_wear" in answer["error"]
    code, answer = await bench.acknowledge("operator", alarm="feed_pump_wear", reason="on it")
    assert code == 200 and answer["state"] == "active, acknowledged"
    code, answer = await bench.acknowledge("operator", alarm="feed_pump_wear")
    assert code == 409
    # Back at the limit's edge: inside the limit but not past the hysteresis: stays raised.
    Dial.value = 0.925
    seen = Dial.published
    await wait_for(lambda: Dial.published > seen + 30, 10, what="30 more readings")
    assert not bench.has("alarm.cleared")
    Dial.value = 1.0
    await wait_for(lambda: bench.has("alarm.cleared"), 10, what="alarm.cleared in the trail")
    actions = [(r["action"], r["user"]) for r in bench.records()]
    assert actions == [
        ("alarm.raised", "watch"),
        ("alarm.acknowledged", "operator"),
        ("alarm.cleared", "watch"),
    ]
    ack = bench.records()[1]
    assert ack["reason"] == "on it" and ack["target"] == "watch/feed_pump_wear"
    assert "tubing wear" in ack["details"]["why"]


@pytest.mark.asyncio
async def test_an_acknowledgement_the_audit_trail_cannot_record_is_not_taken(
    bench: Bench,
) -> None:
    Dial.value = 0.9
    await wait_for(lambda: bench.has("alarm.raised"), 10, what="alarm.raised in the trail")
    assert bench.gateway.audit is not None
    bench.gateway.audit.trail.close()  # as if its file had gone: every append fails
    code, answer = await bench.acknowledge("operator", alarm="feed_pump_wear", reason="on it")
    assert code == 409 and "audit" in answer["error"].lower(), answer
    assert "active, unacknowledged" in json.dumps(await bench.status())


@pytest.mark.asyncio
async def test_the_alarm_signal_carries_severity_and_cause(tmp_path: Path) -> None:
    Dial.value = 1.0
    the_plan = plan(tmp_path, config(tmp_path, free_port()))
    async with running(the_plan):
        await wait_for(lambda: Dial.published > 10, 10)
        Dial.value = 0.85
        await wait_for(lambda: any(r["action"] == "alarm.raised" for r in audit_records(the_plan)))
    samples = stored_by_signal(Path(the_plan.config.store.path))[ALARM]
    values = [s.value for s in samples]
    first = values.index(2)
    assert set(values[:first]) == {0}
    # Raised on the third point under the limit (3 of 5), not on the first.
    dial = stored_by_signal(Path(the_plan.config.store.path))["t/dev/efficiency"]
    low = [s.source_ts for s in dial if s.value < 0.92]
    assert samples[first].source_ts == low[2]
    assert samples[first].reason is not None
    assert samples[first].reason.startswith("feed_pump: dev/efficiency 0.85 below 0.92")
    assert "15 % below reported" in samples[first].reason


def test_a_model_for_other_signals_is_refused_at_check(tmp_path: Path) -> None:
    """The shipped model reads reactor1/controller/...; a configuration without those signals
    (or with them in another unit) is an error at patgw check, exit 2, naming them."""
    document = config(tmp_path, free_port())
    document["processors"][0]["options"] = {
        "model": str(ROOT / "configs/models/reactor1-normal-pca.json")
    }
    with pytest.raises(ConfigError, match="reactor1/controller/ph"):
        plan(tmp_path, document)


def test_patgw_check_refuses_the_model_on_another_signal_set(tmp_path: Path) -> None:
    demo = (ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8")
    model = ROOT / "configs" / "models" / "reactor1-normal-pca.json"
    processor = (
        "  - id: watch\n    type: anomaly\n"
        f"    options: {{model: {model},"
        " signals: {reactor1/controller/ph: controller/agitation}}\n"
    )
    text = demo.replace("\nsinks:", "\n" + processor + "\nsinks:", 1)
    path = tmp_path / "configs" / "demo.yaml"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    (tmp_path / "configs" / "models").symlink_to(ROOT / "configs" / "models")
    result = patgw("check", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "controller/agitation" in result.stderr and "[pH]" in result.stderr
    # The demo's own signals suit it.
    path.write_text(
        demo.replace(
            "\nsinks:",
            f"\n  - id: watch\n    type: anomaly\n    options: {{model: {model}}}\n\nsinks:",
            1,
        ),
        encoding="utf-8",
    )
    result = patgw("check", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
