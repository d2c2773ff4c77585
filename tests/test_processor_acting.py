"""Processors that act (issue 14's controllers and alarms): their time base, their audit
records, their writes through the controlled write path as their own identity, owning a target,
heartbeats, and commands users send them through the local API. An inline plugin: a device
with writable values in memory, and a processor whose commands make it act."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from conftest import free_port, running, wait_for, write_config
from pydantic import BaseModel, ConfigDict
from test_controlled_writes import HASHES, PASSWORDS, api_call, audit_records

from gateway import (
    Channel,
    CommandCall,
    ConfigError,
    InstrumentError,
    InstrumentIO,
    PluginContext,
    ProcessorCommand,
    ProcessorIO,
    Registry,
    Sample,
    Signal,
    TargetLimits,
    WriteRefusedError,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.loader import Plan
from gateway.metrics import health_report
from gateway.runtime import Gateway

SETPOINT = "t/dev/setpoint"
BEAT = "t/dev/beat"
#: The batch age the clock instrument publishes, h, at its source time AGE_TS.
AGE_H = 100.0
AGE_TS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Memory:
    """A device holding writable values; ``down`` makes every request fail."""

    devices: ClassVar[dict[str, Memory]] = {}
    #: Wall seconds before the first age sample (a clock instrument that connects later).
    age_delay_s: ClassVar[float] = 0.0

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        self.values = {"setpoint": 2.0, "beat": 0.0}
        self.writes: list[tuple[str, float]] = []
        self.down = False
        Memory.devices[context.id] = self

    def channels(self) -> Sequence[Channel]:
        return [
            Channel("setpoint", "1", writable=True),
            Channel("beat", "1", writable=True),
            Channel("age", "h"),
        ]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        age_from = time.monotonic() + Memory.age_delay_s
        while True:
            for name in ("setpoint", "beat"):
                io.output(name).publish(self.values[name])
            if time.monotonic() >= age_from:
                io.output("age").publish(AGE_H, AGE_TS)
            await asyncio.sleep(0.02)

    async def write(self, channel: str, value: float) -> None:
        if self.down:
            raise InstrumentError("no answer")
        self.values[channel] = value
        self.writes.append((channel, value))

    async def read_back(self, channel: str) -> float:
        if self.down:
            raise InstrumentError("no answer")
        return self.values[channel]


class ActorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    controls: list[str] = [SETPOINT, BEAT]
    widest: float | None = None  # bind_controls refuses a target whose max is above it
    fail_runs: int = 0
    inputs: list[str] = []


class Actor:
    """Acts only when told, through its commands: write, claim, release, beat, record."""

    last: Actor | None = None

    def __init__(self, options: ActorOptions, context: PluginContext) -> None:
        self.options = options
        self.io: ProcessorIO | None = None
        self.runs = 0
        self.bound: Mapping[str, TargetLimits] = {}
        self.seen_h: list[float] = []  # process time of each input sample, as processed
        Actor.last = self

    def inputs(self) -> Sequence[str]:
        return self.options.inputs

    def channels(self) -> Sequence[Channel]:
        return [Channel("out", "1")]

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        pass

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        self.seen_h.append(io.process_time_h(AGE_TS))

    def controls(self) -> Sequence[str]:
        return self.options.controls

    def bind_controls(self, targets: Mapping[str, TargetLimits]) -> None:
        widest = self.options.widest
        for limits in targets.values():
            if widest is not None and limits.max > widest:
                raise ValueError(f"{limits.target}: max {limits.max:g} above {widest:g}")
        self.bound = targets

    async def run(self, io: ProcessorIO) -> None:
        self.runs += 1
        if self.runs <= self.options.fail_runs:
            raise RuntimeError(f"run {self.runs} fails")
        self.io = io
        await asyncio.Event().wait()

    def commands(self) -> Mapping[str, ProcessorCommand]:
        return {
            "set": ProcessorCommand("write", self._set, "write the setpoint"),
            "claim": ProcessorCommand("write", self._claim, "own the setpoint"),
            "release": ProcessorCommand("write", self._release, "give it up"),
            "beat": ProcessorCommand("write", self._beat, "one heartbeat"),
            "mode": ProcessorCommand("configure", self._mode, "record a mode change"),
        }

    def status(self) -> Mapping[str, Any]:
        io = self.io
        return {"process_time_h": None if io is None else io.process_time_h(time.time_ns())}

    def _io(self) -> ProcessorIO:
        if self.io is None:
            raise ValueError("not running")
        return self.io

    async def _set(self, call: CommandCall) -> Mapping[str, Any]:
        outcome = await self._io().write(SETPOINT, float(call.body["value"]), call.reason)
        return outcome.as_dict()

    async def _claim(self, call: CommandCall) -> Mapping[str, Any]:
        self._io().claim(SETPOINT)
        return {"claimed": SETPOINT}

    async def _release(self, call: CommandCall) -> Mapping[str, Any]:
        self._io().release(SETPOINT)
        return {"released": SETPOINT}

    async def _beat(self, call: CommandCall) -> Mapping[str, Any]:
        try:
            await self._io().heartbeat(BEAT, float(call.body["value"]))
        except (InstrumentError, WriteRefusedError) as exc:
            return {"beat": False, "error": str(exc)}
        return {"beat": True}

    async def _mode(self, call: CommandCall) -> Mapping[str, Any]:
        mode = call.body.get("mode")
        if mode not in ("auto", "manual"):
            raise ValueError('"mode" must be "auto" or "manual"')
        record = await self._io().record(
            "control.mode",
            target=SETPOINT,
            old="auto",
            new=mode,
            reason=call.reason,
            user=call.user,
        )
        return {"mode": mode, "record": record}


class Plugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("memory", Memory, NoOptions)

    @hookimpl
    def pat_gateway_register_processors(self, registry: Registry) -> None:
        registry.add_processor("actor", Actor, ActorOptions)


def config(tmp_path: Path, http_port: int, **processor: Any) -> dict[str, Any]:
    return {
        "area": "t",
        "data_dir": str(tmp_path / "data"),
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [{"id": "dev", "driver": "memory"}],
        "processors": [{"id": "actor", "type": "actor", **processor}],
        "http": {"host": "127.0.0.1", "port": http_port, "api": True},
        "security": {
            "users": [
                {"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS
            ]
        },
        "writes": [
            {"target": SETPOINT, "min": 0, "max": 10, "role": "operator"},
            {"target": BEAT, "min": 0, "max": 65535, "role": "operator", "heartbeat": True},
        ],
    }


def plan(tmp_path: Path, document: Mapping[str, Any]) -> Plan:
    registry = build_registry([Plugin()], entry_points=False)
    return load_plan(write_config(tmp_path / "g.yaml", dict(document)), registry)


class Bench:
    def __init__(self, gateway: Gateway, plan: Plan, port: int) -> None:
        self.gateway, self.plan, self.port = gateway, plan, port

    @property
    def device(self) -> Memory:
        return Memory.devices["dev"]

    async def call(
        self, method: str, route: str, user: str = "operator", body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        return await asyncio.to_thread(
            api_call, self.port, method, route, user, PASSWORDS[user], body
        )

    async def command(
        self, name: str, user: str = "operator", **body: Any
    ) -> tuple[int, dict[str, Any]]:
        body.setdefault("reason", "test")
        return await self.call("POST", f"/api/v1/processors/actor/{name}", user, body)

    def records(self, prefix: str) -> list[dict[str, Any]]:
        return [r for r in audit_records(self.plan) if r["action"].startswith(prefix)]


@pytest_asyncio.fixture
async def bench(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    port = free_port()
    the_plan = plan(tmp_path, config(tmp_path, port, **getattr(request, "param", {})))
    async with running(the_plan) as (gateway, _):
        await wait_for(lambda: Actor.last is not None and Actor.last.io is not None, 10)
        yield Bench(gateway, the_plan, port)


@pytest.mark.asyncio
async def test_a_processor_writes_through_the_write_path_as_itself(bench: Bench) -> None:
    status, answer = await bench.command("set", value=4, reason="raise the feed")
    assert status == 200, answer
    assert answer["outcome"] == "done" and answer["old"] == 2.0 and answer["read_back"] == 4.0
    assert bench.device.values["setpoint"] == 4.0
    records = bench.records("write.")
    assert [r["action"] for r in records] == [
        "write.requested",
        "write.executed",
        "write.read_back",
    ]
    assert {r["user"] for r in records} == {"actor"}
    assert {r["details"]["interface"] for r in records} == {"controller"}
    assert records[0]["reason"] == "raise the feed"
    # The target's limits hold for a processor as for a person.
    status, answer = await bench.command("set", value=50)
    assert answer["outcome"] == "refused" and answer["rule"] == "limit"
    assert bench.device.values["setpoint"] == 4.0


@pytest.mark.asyncio
async def test_a_claimed_target_refuses_everyone_else_until_released(bench: Bench) -> None:
    status, _ = await bench.command("claim")
    assert status == 200
    status, targets = await bench.call("GET", "/api/v1/targets")
    assert {t["target"]: t["owner"] for t in targets["targets"]}[SETPOINT] == "actor"
    assert health_report(bench.gateway, 1.0)["processors"]["actor"]["owns"] == [SETPOINT]
    body = {"target": SETPOINT, "value": 3, "reason": "by hand"}
    status, answer = await bench.call("POST", "/api/v1/writes", "operator", body)
    assert answer["outcome"] == "refused" and answer["rule"] == "owner", answer
    assert "actor" in answer["message"] and "manual" in answer["message"]
    assert bench.device.values["setpoint"] == 2.0
    # The owner itself still writes.
    status, answer = await bench.command("set", value=3)
    assert answer["outcome"] == "done"
    await bench.command("release")
    status, answer = await bench.call("POST", "/api/v1/writes", "operator", body | {"value": 4})
    assert status == 200 and answer["outcome"] == "done"
    refused = bench.records("write.refused")
    assert [r["details"]["rule"] for r in refused] == ["owner"]
    assert refused[0]["user"] == "operator"


@pytest.mark.asyncio
async def test_heartbeats_reach_the_device_and_only_transitions_are_recorded(
    bench: Bench,
) -> None:
    for n in (1, 2, 3):
        _, answer = await bench.command("beat", value=n)
        assert answer == {"beat": True}
    assert bench.device.values["beat"] == 3.0
    bench.device.down = True
    for n in (4, 5):
        _, answer = await bench.command("beat", value=n)
        assert answer["beat"] is False and "no answer" in answer["error"]
    bench.device.down = False
    _, answer = await bench.command("beat", value=6)
    assert answer == {"beat": True}
    actions = [(r["action"], r["outcome"]) for r in bench.records("heartbeat.")]
    assert actions == [
        ("heartbeat.started", "ok"),
        ("heartbeat.failed", "failed"),
        ("heartbeat.recovered", "ok"),
    ]
    assert bench.records("heartbeat.recovered")[0]["details"]["failed_beats"] == 2
    # Nobody writes a heartbeat target through the ordinary path, not even its controller's
    # role holders.
    body = {"target": BEAT, "value": 9, "reason": "poke"}
    _, answer = await bench.call("POST", "/api/v1/writes", "operator", body)
    assert answer["outcome"] == "refused" and answer["rule"] == "heartbeat"
    assert bench.device.values["beat"] == 6.0


@pytest.mark.asyncio
async def test_commands_are_checked_and_recorded_as_their_user(bench: Bench) -> None:
    status, answer = await bench.command("mode", "engineer", mode="manual", reason="tuning")
    assert status == 200 and answer["mode"] == "manual"
    (record,) = bench.records("control.mode")
    assert record["seq"] == answer["record"]
    assert (record["user"], record["new"], record["reason"]) == ("engineer", "manual", "tuning")
    assert record["details"]["processor"] == "actor"
    # configure is an engineer's; an operator may not.
    status, answer = await bench.command("mode", "operator", mode="auto")
    assert status == 403 and "configure" in answer["error"]
    status, answer = await bench.command("set", "viewer", value=1)
    assert status == 403
    status, answer = await bench.command("mode", "engineer", mode="sideways")
    assert status == 400 and "auto" in answer["error"]
    status, answer = await bench.command("fly")
    assert status == 404 and "claim" in answer["error"]
    status, answer = await bench.call(
        "POST", "/api/v1/processors/actor/set", "operator", {"value": 1}
    )
    assert status == 400 and "reason" in answer["error"]
    status, answer = await bench.call("GET", "/api/v1/processors/nobody")
    assert status == 404 and "actor" in answer["error"]
    assert bench.device.values["setpoint"] == 2.0


@pytest.mark.asyncio
async def test_the_processor_list_shows_state_commands_and_time(bench: Bench) -> None:
    status, answer = await bench.call("GET", "/api/v1/processors", "viewer")
    assert status == 200
    (entry,) = answer["processors"]
    assert entry["id"] == "actor" and entry["controls"] == sorted([SETPOINT, BEAT])
    assert entry["commands"]["mode"]["permission"] == "configure"
    # No time base configured: process time counts from the start, at scale 1 (seconds).
    assert 0 <= entry["status"]["process_time_h"] < 60 / 3600


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "bench", [{"time_base": {"time_scale": 3600, "age": "dev/age"}}], indirect=True
)
async def test_the_time_base_follows_the_batch_age_signal_scaled(bench: Bench) -> None:
    runner = bench.gateway.processors[0]
    await wait_for(lambda: runner.process_time_h(AGE_TS) == AGE_H, 10, what="an age sample")
    # One wall second is one process hour at 3600x, counted from the age's own source time.
    assert runner.process_time_h(AGE_TS + 1_000_000_000) == pytest.approx(AGE_H + 1.0)
    assert runner.process_time_h(AGE_TS + 90_000_000_000) == pytest.approx(AGE_H + 90.0)


@pytest.mark.asyncio
async def test_inputs_before_the_first_age_sample_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock instrument heard after the inputs (it connected later): the inputs wait for the
    age, so none is processed on a process time counted from the gateway's start that would
    then jump to the batch's age (100 h here)."""
    monkeypatch.setattr(Memory, "age_delay_s", 1.0)
    document = config(
        tmp_path,
        free_port(),
        time_base={"time_scale": 3600, "age": "dev/age"},
        options={"inputs": ["dev/setpoint"]},
    )
    async with running(plan(tmp_path, document)):
        await wait_for(lambda: Actor.last is not None and len(Actor.last.seen_h) > 20, 20)
        assert Actor.last is not None
        assert Actor.last.seen_h[0] == pytest.approx(AGE_H), Actor.last.seen_h[:3]


@pytest.mark.asyncio
@pytest.mark.parametrize("bench", [{"options": {"fail_runs": 1}}], indirect=True)
async def test_a_run_that_raises_is_started_again(bench: Bench) -> None:
    assert Actor.last is not None and Actor.last.runs == 2
    assert bench.gateway.processors[0].restarts == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"options": {"controls": ["t/dev/nothing"]}},
            "processors[0].options: 't/dev/nothing' is not a writable target",
        ),
        ({"role": "viewer"}, "processors[0].role: role 'viewer' may not write t/dev/setpoint"),
        ({"role": "pilot"}, "processors[0].role: unknown role 'pilot'"),
        ({"options": {"widest": 5}}, "processors[0].options: t/dev/setpoint: max 10 above 5"),
        ({"id": "operator"}, "processors[0].id: 'operator' is also a user's name"),
        ({"time_base": {"age": "dev/nope"}}, "processors[0].time_base.age: 'dev/nope' is no"),
        (
            {"time_base": {"age": "dev/setpoint"}},
            "processors[0].time_base.age: t/dev/setpoint is in '1', not a time",
        ),
    ],
)
def test_a_processor_that_may_not_act_is_refused_at_load(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    document = config(tmp_path, free_port(), **change)
    with pytest.raises(ConfigError) as caught:
        plan(tmp_path, document)
    assert any(expected in line for line in caught.value.problems), caught.value.problems


def test_bind_controls_sees_each_target_s_limits(tmp_path: Path) -> None:
    plan(tmp_path, config(tmp_path, free_port()))
    assert Actor.last is not None
    bound = Actor.last.bound
    assert bound[SETPOINT] == TargetLimits(SETPOINT, "1", 0.0, 10.0, None, None, False)
    assert bound[BEAT].heartbeat is True


def patgw_command(config: Path, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``patgw command`` as a user runs it, the password on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "command", str(config), *args, "--user", user],
        input=f"{user}-password\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.asyncio
async def test_patgw_command_gives_a_processor_a_command(bench: Bench) -> None:
    config = bench.plan.source
    args = ("actor", "mode", "--set", "mode=manual", "--reason", "maintenance")
    result = await asyncio.to_thread(patgw_command, config, "engineer", *args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mode"] == "manual"
    (record,) = bench.records("control.mode")
    assert (record["user"], record["reason"]) == ("engineer", "maintenance")
    set_value = ("actor", "set", "--set", "value=3", "--reason", "by the book")
    result = await asyncio.to_thread(patgw_command, config, "operator", *set_value)
    assert result.returncode == 0, result.stderr
    assert bench.device.values["setpoint"] == 3.0
    refused = await asyncio.to_thread(patgw_command, config, "operator", *args)
    assert refused.returncode == 2
    assert "may not do this: it needs 'configure'" in refused.stderr
    bad = await asyncio.to_thread(
        patgw_command, config, "engineer", "actor", "mode", "--set", "reason=x", "--reason", "r"
    )
    assert bad.returncode == 2 and "--reason" in bad.stderr
