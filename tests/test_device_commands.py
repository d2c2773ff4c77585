"""Device commands (``commands:``) end to end: the local API and ``patgw command`` against a
running gateway whose Modbus feed pump is the emulator, over loopback TCP; ``patgw check``'s
errors; and the serialisation of a command with a write to the same instrument. Each refusal is
checked to send nothing and to leave its ``command.refused`` record with the rule."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import (
    free_port,
    patgw,
    plan_for,
    pump_instrument,
    running,
    wait_for,
    write_config,
)
from pydantic import BaseModel, ConfigDict
from test_console import Console, _audited
from test_controlled_writes import PASSWORDS, _users, api_call, audit_records
from test_controlled_writes import Bench as WritesBench

from gateway import (
    Channel,
    ConfigError,
    DeviceCommand,
    InstrumentError,
    InstrumentIO,
    Registry,
    WriteRefusedError,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.audit import AuditEvent
from gateway.control import CommandRequest, CommandTarget, CommandTargetConfig, WritePath
from gateway.control.config import WriteTargetConfig
from gateway.control.path import WriteRequest, WriteTarget
from gateway.loader import Plan
from gateway.security import Authority, Identity
from gateway.security.config import SecurityConfig
from gateway.units import Conversion

STOP = "reactor1/pump/stop"
START = "reactor1/pump/start"
ACK = "reactor1/pump/acknowledge_fault"


def _config(pump_port: int, http_port: int, **stop: Any) -> dict[str, Any]:
    return {
        "emulators": [{"id": "pump_emulator", "type": "feed_pump", "options": {"port": pump_port}}],
        "instruments": [pump_instrument("pump", pump_port)],
        "http": {"host": "127.0.0.1", "port": http_port, "api": True},
        "security": {"users": _users()},
        "commands": [
            {"target": STOP, "role": "operator", **stop},
            {"target": START, "role": "operator"},
            {"target": ACK, "role": "engineer"},
        ],
    }


def _pump(plan: Plan) -> Any:
    """The emulated pump's state."""
    return plan.emulators[0].instance.emulator.model


class Bench(WritesBench):
    """The writes' bench: the running gateway, its plan and API port."""

    @property
    def pump(self) -> Any:
        return _pump(self.plan)

    async def command(
        self, user: str, body: dict[str, Any], password: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        secret = PASSWORDS.get(user, "x") if password is None else password
        return await asyncio.to_thread(
            api_call, self.http_port, "POST", "/api/v1/commands", user, secret, body
        )

    def command_records(self) -> list[dict[str, Any]]:
        return [r for r in audit_records(self.plan) if r["action"].startswith("command.")]


@pytest_asyncio.fixture
async def bench(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(free_port(), http_port, **getattr(request, "param", {})))
    async with running(plan) as (gateway, _):
        runner = gateway.runners[0]
        await wait_for(lambda: runner.state.value == "connected", 10, what="the pump connected")
        yield Bench(gateway, plan, http_port)


@pytest.mark.asyncio
async def test_an_operator_stops_and_starts_the_pump_and_each_command_is_audited(
    bench: Bench,
) -> None:
    assert bench.pump.running
    status, outcome = await bench.command(
        "operator", {"target": STOP, "reason": "change the feed bottle"}
    )
    assert status == 200, outcome
    assert outcome["outcome"] == "done"
    assert outcome["result"] == {"channel": "running", "value": 0}
    assert not bench.pump.running
    status, outcome = await bench.command("operator", {"target": START, "reason": "bottle on"})
    assert status == 200 and bench.pump.running, outcome
    records = bench.command_records()
    assert [(r["action"], r["outcome"], r["target"]) for r in records] == [
        ("command.requested", "accepted", STOP),
        ("command.executed", "ok", STOP),
        ("command.requested", "accepted", START),
        ("command.executed", "ok", START),
    ]
    assert records[0]["reason"] == "change the feed bottle" and records[0]["user"] == "operator"
    assert records[1]["details"]["result"] == {"channel": "running", "value": 0}
    assert records[1]["details"]["interface"] == "api"
    assert outcome["audit_records"] == [records[2]["seq"], records[3]["seq"]]


@pytest.mark.asyncio
async def test_the_declared_commands_are_listed(bench: Bench) -> None:
    status, answer = await asyncio.to_thread(
        api_call, bench.http_port, "GET", "/api/v1/commands", "viewer", PASSWORDS["viewer"]
    )
    assert status == 200, answer
    listed = {c["target"]: c for c in answer["commands"]}
    assert sorted(listed) == [ACK, START, STOP]
    assert listed[STOP]["instrument"] == "pump" and listed[STOP]["command"] == "stop"
    assert listed[STOP]["description"] == "Stop the pump" and listed[STOP]["changes_process"]
    assert listed[ACK]["role"] == "engineer" and not listed[ACK]["changes_process"]


@pytest.mark.parametrize(
    ("user", "body", "status", "rule"),
    [
        ("operator", {"target": "reactor1/pump/flush", "reason": "r"}, 404, "not-declared"),
        ("viewer", {"target": STOP, "reason": "r"}, 403, "role"),
        ("operator", {"target": ACK, "reason": "r"}, 403, "role"),
        ("operator", {"target": STOP, "reason": "  "}, 422, "reason"),
        ("operator", {"target": STOP, "reason": "r", "arguments": {"speed": 3}}, 422, "arguments"),
    ],
)
@pytest.mark.asyncio
async def test_each_refusal_sends_nothing_and_is_audited(
    bench: Bench, user: str, body: dict[str, Any], status: int, rule: str
) -> None:
    got, outcome = await bench.command(user, body)
    assert (got, outcome["outcome"], outcome["rule"]) == (status, "refused", rule), outcome
    assert bench.pump.running
    [record] = bench.command_records()
    assert (record["action"], record["outcome"], record["user"]) == (
        "command.refused",
        "refused",
        user,
    )
    assert record["details"]["rule"] == rule and record["target"] == body["target"]
    assert outcome["audit_records"] == [record["seq"]]


@pytest.mark.parametrize("bench", [{"signature": "required"}], indirect=True)
@pytest.mark.asyncio
async def test_a_command_needing_a_signature_refuses_without_it_and_records_the_signer(
    bench: Bench,
) -> None:
    status, outcome = await bench.command("operator", {"target": STOP, "reason": "r"})
    assert (status, outcome["rule"]) == (422, "signature") and bench.pump.running, outcome
    status, outcome = await bench.command(
        "operator", {"target": STOP, "reason": "r", "meaning": "performed"}
    )
    assert status == 200 and not bench.pump.running, outcome
    requested = [r for r in bench.command_records() if r["action"] == "command.requested"]
    assert requested[0]["details"]["signature"]["user"] == "operator"
    assert requested[0]["details"]["signature"]["meaning"] == "performed"


@pytest.mark.asyncio
async def test_a_command_the_device_refuses_is_a_failure_on_record(bench: Bench) -> None:
    bench.pump.trip()  # a latched fault: the pump refuses to start until acknowledged
    status, outcome = await bench.command("operator", {"target": START, "reason": "r"})
    assert status == 502 and outcome["outcome"] == "failed", outcome
    assert "refused" in outcome["message"] and not bench.pump.running
    records = bench.command_records()
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("command.requested", "accepted"),
        ("command.failed", "refused"),
    ]
    assert "exception" in records[1]["details"]["why"]
    status, outcome = await bench.command("engineer", {"target": ACK, "reason": "tubing swapped"})
    assert status == 200, outcome
    status, outcome = await bench.command("operator", {"target": START, "reason": "r"})
    assert status == 200 and bench.pump.running, outcome


@pytest.mark.asyncio
async def test_a_command_the_audit_trail_cannot_record_is_not_sent(bench: Bench) -> None:
    assert bench.gateway.audit is not None
    bench.gateway.audit.trail.close()  # as if its file had gone: every append fails
    status, outcome = await bench.command("operator", {"target": STOP, "reason": "r"})
    assert status == 503 and outcome["rule"] == "audit-unavailable", outcome
    assert bench.pump.running


@pytest.mark.asyncio
async def test_a_command_while_the_instrument_is_down_is_refused_and_audited(
    tmp_path: Path,
) -> None:
    http_port = free_port()
    config = _config(free_port(), http_port)
    config["emulators"] = []  # nothing listens on the pump's port
    plan = plan_for(tmp_path, **config)
    async with running(plan):
        status, outcome = await asyncio.to_thread(
            api_call,
            http_port,
            "POST",
            "/api/v1/commands",
            "operator",
            PASSWORDS["operator"],
            {"target": STOP, "reason": "r"},
        )
    assert status == 503 and outcome["rule"] == "instrument-down", outcome
    assert "not connected: nothing was sent" in outcome["message"]
    [record] = [r for r in audit_records(plan) if r["action"].startswith("command.")]
    assert record["action"] == "command.refused"
    assert record["details"]["rule"] == "instrument-down"


def patgw_command(
    config: Path, user: str, target: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``patgw command`` as a user runs it, the password on stdin."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "command", str(config), target),
            *("--user", user, "--reason", "from the CLI", *extra),
        ],
        input=f"{user}-password\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.asyncio
async def test_patgw_command_runs_a_device_command(bench: Bench) -> None:
    source = bench.plan.source
    viewer = await asyncio.to_thread(patgw_command, source, "viewer", STOP)
    assert viewer.returncode == 2 and "needs the role 'operator'" in viewer.stderr
    assert "command refused" in viewer.stderr and "[role]" in viewer.stderr
    assert bench.pump.running
    done = await asyncio.to_thread(patgw_command, source, "operator", STOP)
    assert done.returncode == 0, done.stderr
    assert f"{STOP} done" in done.stdout and not bench.pump.running
    assert "audit records:" in done.stderr
    record = bench.command_records()[-1]
    assert record["action"] == "command.executed" and record["reason"] == "from the CLI"
    no_slash = await asyncio.to_thread(patgw_command, source, "operator", "stop")
    assert no_slash.returncode == 2 and "<area>/<instrument>/<command>" in no_slash.stderr


def _check(tmp_path: Path, commands: list[dict[str, Any]], **extra: Any) -> list[str]:
    config = {
        "area": "reactor1",
        "store": {"path": str(tmp_path / "s.sqlite")},
        "instruments": [pump_instrument("pump", 1502)],
        "security": {"users": _users()},
        "commands": commands,
        **extra,
    }
    try:
        load_plan(write_config(tmp_path / "g.yaml", config), build_registry())
    except ConfigError as exc:
        return list(exc.problems)
    return []


def test_check_names_each_command_that_cannot_be_run(tmp_path: Path) -> None:
    problems = _check(
        tmp_path,
        [
            {"target": STOP},
            {"target": STOP},
            {"target": "reactor1/pump/flush"},
            {"target": "reactor1/mixer/stop"},
            {"target": "reactor2/pump/stop"},
            {"target": START, "role": "janitor"},
            {"target": "reactor1/pump"},
            {"target": "reactor1/pump/speed_setpoint"},
        ],
        writes=[{"target": "reactor1/pump/speed_setpoint", "min": 0, "max": 10}],
    )
    assert problems == [
        "commands[1].target: 'reactor1/pump/stop' is declared twice",
        "commands[2].target: driver 'modbus' of instrument 'pump' has no command 'flush'"
        " (commands: acknowledge_fault, start, stop)",
        "commands[3].target: no enabled instrument 'mixer' (instruments: pump)",
        "commands[4].target: 'reactor2/pump/stop' is not in this gateway's area 'reactor1'",
        "commands[5].role: unknown role 'janitor' (roles: viewer, operator, engineer, admin,"
        " controller)",
        "commands[6].target: 'reactor1/pump' is not '<area>/<instrument>/<command>'",
        "commands[7].target: 'reactor1/pump/speed_setpoint' is also a target under writes:",
    ]


def test_check_refuses_a_command_of_a_driver_without_commands(tmp_path: Path) -> None:
    registry = build_registry([_MixerPlugin()], entry_points=False)
    config = {
        "area": "reactor1",
        "store": {"path": str(tmp_path / "s.sqlite")},
        "instruments": [{"id": "mixer", "driver": "c41_plain", "signals": [{"id": "speed"}]}],
        "security": {"users": _users()},
        "commands": [{"target": "reactor1/mixer/stop"}],
    }
    with pytest.raises(ConfigError) as caught:
        load_plan(write_config(tmp_path / "g.yaml", config), registry)
    assert caught.value.problems == (
        "commands[0].target: driver 'c41_plain' of instrument 'mixer' offers no commands (it"
        " does not implement gateway.CommandDriver)",
    )


class _Plain:
    """A driver with no commands."""

    def __init__(self, options: Any, context: Any) -> None:
        pass

    def channels(self) -> Sequence[Channel]:
        return [Channel("speed", "1")]

    async def run(self, io: InstrumentIO) -> None:
        await asyncio.Event().wait()


class _NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _MixerPlugin:
    PAT_GATEWAY_API = "1.1"

    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("c41_plain", _Plain, _NoOptions, "a driver without commands")


class _SlowDevice:
    """A device whose write waits until the test lets it finish; it records what it did, in
    order (not the gateway's code: a stand-in instrument for the path's unit test)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.log: list[str] = []
        self.value = 0.0

    def channels(self) -> Sequence[Channel]:
        return [Channel("setpoint", "1", writable=True)]

    async def run(self, io: InstrumentIO) -> None:
        await asyncio.Event().wait()

    async def write(self, channel: str, value: float) -> None:
        self.log.append("write started")
        await self.release.wait()
        self.value = value
        self.log.append("write done")

    async def read_back(self, channel: str) -> float:
        return self.value

    def commands(self) -> Sequence[DeviceCommand]:
        return [DeviceCommand(name) for name in ("tare", "refuse", "lose", "report")]

    async def command(self, name: str, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        self.log.append(name)
        if name == "refuse":
            raise WriteRefusedError("not now: the weight is moving")
        if name == "lose":
            raise InstrumentError("no answer within 1 s")
        if name == "report":
            return {"curve": [1, 2], "nan": math.nan, "odd": object}
        return {"tare": 1.5}


def _path(device: _SlowDevice, records: list[AuditEvent]) -> WritePath:
    """The write path over ``device`` (instrument ``dev``, up), recording into ``records``."""

    async def record(event: AuditEvent) -> int:
        records.append(event)
        return len(records)

    security = SecurityConfig.model_validate({"users": _users()})
    write_target = WriteTarget(
        WriteTargetConfig(target="a/dev/setpoint", min=0, max=10),
        "1",
        "dev",
        "setpoint",
        Conversion(1.0, 0.0),
        Conversion(1.0, 0.0),
    )
    commands = {
        f"a/dev/{c.name}": CommandTarget(CommandTargetConfig(target=f"a/dev/{c.name}"), "dev", c)
        for c in device.commands()
    }
    return WritePath(
        {"a/dev/setpoint": write_target},
        Authority(security),
        record,
        {"dev": device},
        lambda instrument: True,
        commands=commands,
        commanded={"dev": device},
    )


@pytest.mark.asyncio
async def test_a_command_waits_for_a_write_to_the_same_instrument() -> None:
    device = _SlowDevice()
    records: list[AuditEvent] = []
    path = _path(device, records)
    operator = Identity("operator", "Operator", frozenset({"operator"}), _permissions("operator"))
    write = asyncio.create_task(
        path.submit(WriteRequest("a/dev/setpoint", 3.0, operator, "r", "test"))
    )
    await wait_for(lambda: device.log == ["write started"], what="the write under way")
    tare = asyncio.create_task(
        path.submit_command(CommandRequest("a/dev/tare", operator, "r", "t"))
    )
    # The command is queued behind the write: give the loop every chance to run it early.
    for _ in range(50):
        await asyncio.sleep(0)
    assert device.log == ["write started"]
    device.release.set()
    outcome = await tare
    assert (await write).ok
    assert device.log == ["write started", "write done", "tare"]
    assert outcome.ok and outcome.result == {"tare": 1.5}
    assert outcome.message == "a/dev/tare done: tare 1.5"
    assert [e.action for e in records] == [
        "write.requested",
        "write.executed",
        "write.read_back",
        "command.requested",
        "command.executed",
    ]


def _permissions(role: str) -> frozenset[Any]:
    return frozenset(SecurityConfig().role_permissions()[role])


@pytest.mark.asyncio
async def test_a_driver_that_raises_is_a_failure_on_record_and_its_report_is_kept() -> None:
    device = _SlowDevice()
    records: list[AuditEvent] = []
    path = _path(device, records)
    operator = Identity("operator", "Operator", frozenset({"operator"}), _permissions("operator"))

    async def run(name: str) -> Any:
        return await path.submit_command(CommandRequest(f"a/dev/{name}", operator, "r", "test"))

    refused, lost, report = await run("refuse"), await run("lose"), await run("report")
    assert (refused.outcome, lost.outcome, report.outcome) == ("failed", "failed", "done")
    assert refused.message == "the device refused refuse: not now: the weight is moving"
    assert lost.message == "lose failed, its outcome unknown: no answer within 1 s"
    assert report.result == {"curve": [1, 2], "nan": "nan", "odd": "<class 'object'>"}
    assert [(e.action, e.outcome, (e.details or {}).get("why")) for e in records] == [
        ("command.requested", "accepted", None),
        ("command.failed", "refused", "not now: the weight is moving"),
        ("command.requested", "accepted", None),
        ("command.failed", "unknown", "no answer within 1 s"),
        ("command.requested", "accepted", None),
        ("command.executed", "ok", None),
    ]
    assert json.loads(json.dumps(records[-1].details))["result"] == report.result
    assert device.log == ["refuse", "lose", "report"]


# --- the web console ----------------------------------------------------------------------------


@pytest_asyncio.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(free_port(), http_port, signature="required"))
    async with running(plan) as (gateway, _):
        runner = gateway.runners[0]
        await wait_for(lambda: runner.state.value == "connected", 10, what="the pump connected")
        yield Console(gateway, plan, http_port)


def _command_records(console: Console) -> list[dict[str, Any]]:
    return [r for r in console.records() if r["action"].startswith("command.")]


@pytest.mark.asyncio
async def test_the_console_shows_a_form_per_command_on_the_instruments_page(
    console: Console,
) -> None:
    cookie, _ = await console.login("operator")
    page = (await console.request("GET", "/signals?instrument=pump", cookie=cookie)).body.decode()
    forms = re.findall(r'<form method="post" action="/command".*?</form>', page, re.DOTALL)
    targets = re.findall(r'name="target" value="([^"]+)"', "".join(forms))
    assert targets == [ACK, START, STOP]
    stop = forms[2]
    assert "Stop the pump" in stop and "signature required" in stop
    assert 'name="signature_password"' in stop and ">Stop</button>" in stop
    assert 'name="signature_password"' not in forms[1]
    writes = (await console.request("GET", "/writes", cookie=cookie)).body.decode()
    assert writes.count('action="/command"') == 3
    engineer, _ = await console.login("engineer")
    configuration = await console.request("GET", "/configuration", cookie=engineer)
    assert b"<h2>Device commands</h2>" in configuration.body
    assert b"<td>reactor1/pump/stop</td><td>operator</td><td>required</td>" in configuration.body
    viewer, _ = await console.login("viewer")
    shown = await console.request("GET", "/signals?instrument=pump", cookie=viewer)
    assert shown.status == 200 and b'action="/command"' not in shown.body


@pytest.mark.asyncio
async def test_a_console_command_is_signed_run_and_audited(console: Console) -> None:
    cookie, csrf = await console.login("operator")
    form = {"target": STOP, "reason": "bottle change", "meaning": "performed"}
    forged = await console.request("POST", "/command", cookie=cookie, form=form)
    assert forged.status == 403 and _pump(console.plan).running  # no CSRF token: nothing done
    unsigned = await console.request("POST", "/command", cookie=cookie, form={"csrf": csrf, **form})
    assert unsigned.status == 422 and b"re-enter your password" in unsigned.body
    [refused] = await _audited(console, "command.refused")
    assert refused["details"]["rule"] == "signature" and refused["target"] == STOP
    assert _pump(console.plan).running
    signed_form = {"csrf": csrf, **form, "signature_password": PASSWORDS["operator"]}
    done = await console.request("POST", "/command", cookie=cookie, form=signed_form)
    assert done.status == 200, done.body
    assert b"reactor1/pump/stop done" in done.body and not _pump(console.plan).running
    records = _command_records(console)
    assert [r["action"] for r in records] == [
        "command.refused",
        "command.requested",
        "command.executed",
    ]
    assert records[1]["details"]["interface"] == "console"
    assert records[1]["details"]["signature"]["meaning"] == "performed"
    assert PASSWORDS["operator"] not in json.dumps(records)


def test_check_lists_the_declared_commands(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "g.yaml",
        {"area": "reactor1", **_config(free_port(), free_port()), "emulators": []},
    )
    result = patgw("check", str(config))
    assert result.returncode == 0, result.stderr
    assert f"device commands: {ACK}, {START}, {STOP}" in result.stdout.splitlines()


@pytest.mark.asyncio
async def test_the_capacitance_probe_is_zeroed_through_the_write_path(tmp_path: Path) -> None:
    port = free_port()
    plan = plan_for(
        tmp_path,
        emulators=[
            {
                "id": "probe",
                "type": "capacitance_probe",
                "options": {"port": port, "vcd_e6_per_mL": 10.0, "interval_s": 0.05, "seed": 1},
            }
        ],
        instruments=[
            {
                "id": "biomass",
                "driver": "modbus",
                "poll_interval_s": 0.05,
                "backoff": {"initial_s": 0.05, "max_s": 0.2},
                "options": {"port": port, "profile": "capacitance_probe", "timeout_s": 0.5},
                "signals": [{"id": "permittivity"}, {"id": "zero_offset"}],
            }
        ],
        security={"users": _users()},
        commands=[{"target": "reactor1/biomass/zero", "role": "engineer"}],
    )
    async with running(plan) as (gateway, _):
        probe = plan.emulators[0].instance.emulator
        runner = gateway.runners[0]
        await wait_for(
            lambda: runner.state.value == "connected" and probe.model.count >= 2,
            what="the probe measuring",
        )
        operator, engineer = (
            plan.access.authority.authenticate(name, PASSWORDS[name], interface="test")
            for name in ("operator", "engineer")
        )
        refused = await plan.access.command(
            CommandRequest("reactor1/biomass/zero", operator, "medium only", "test")
        )
        assert probe.model.zero_offset == 0.0
        before = probe.model.count
        outcome = await plan.access.command(
            CommandRequest("reactor1/biomass/zero", engineer, "medium only", "test")
        )
        await wait_for(lambda: probe.model.count >= before + 3, what="measurements after it")
        reading = probe.reading
    assert (refused.outcome, refused.rule) == ("refused", "role")
    assert outcome.ok and outcome.result == {"channel": "zero", "value": 1}, outcome.message
    assert len(outcome.records) == 2
    # About 21 pF/cm of cells: zeroed, the probe reads its noise around 0 (sigma 0.1 pF/cm).
    assert probe.model.zero_offset > 10.0
    assert reading is not None and abs(reading.permittivity_pF_per_cm) < 1.0
