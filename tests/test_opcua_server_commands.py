"""Device commands as OPC UA Methods of the northbound server: a running gateway with the
emulated feed pump (Modbus, loopback) whose stop and start are declared commands; clients log in
with the configuration's users over Basic256Sha256 and Call them, as themselves, through the
gateway's write path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from conftest import (
    free_port,
    plan_for,
    pump_instrument,
    running,
    secure_client,
    wait_for,
)
from test_controlled_writes import HASHES, PASSWORDS, audit_records
from test_opcua_server_writes import Bench as WritesBench

from plugins.opcua_server._ua import StatusCodes
from plugins.opcua_server.sink import OpcUaServerSink

STOP = "reactor1/pump/stop"
START = "reactor1/pump/start"


class Bench(WritesBench):
    """The writes' bench (the gateway, its OPC UA server, a trusted client certificate)."""

    @property
    def running(self) -> bool:
        return bool(self.plan.emulators[0].instance.emulator.model.running)

    def command_records(self) -> list[dict[str, Any]]:
        return [r for r in audit_records(self.plan) if r["action"].startswith("command.")]

    async def call(self, user: str, method: str, *arguments: Any) -> tuple[int, list[Any]]:
        """Call ``method`` on the pump's object as ``user``: the status and output values."""
        client = await secure_client(
            self.sink.endpoint_url,
            self.client_cert,
            self.sink.own_certificate.cert_path,
            user,
            PASSWORDS[user],
        )
        async with client:
            index = await client.get_namespace_index(self.sink.namespace_uri or "")
            request = ua.CallMethodRequest(
                ObjectId=ua.NodeId("reactor1/pump", index),
                MethodId=ua.NodeId(method, index),
                InputArguments=[ua.Variant(a) for a in arguments],
            )
            try:
                (result,) = await client.uaclient.call([request])
            except ua.UaStatusCodeError as exc:  # the whole service refused
                return int(exc.code), []
            return int(result.StatusCode.value), [v.Value for v in result.OutputArguments]

    async def browse_methods(self) -> dict[str, list[str]]:
        """The pump object's methods, each with its input arguments' names."""
        client = await secure_client(
            self.sink.endpoint_url,
            self.client_cert,
            self.sink.own_certificate.cert_path,
            "viewer",
            PASSWORDS["viewer"],
        )
        async with client:
            index = await client.get_namespace_index(self.sink.namespace_uri or "")
            pump = client.get_node(ua.NodeId("reactor1/pump", index))
            found = {}
            for method in await pump.get_methods():
                name = (await method.read_browse_name()).Name
                inputs = await method.get_child("0:InputArguments")
                found[name] = [a.Name for a in await inputs.read_value()]
            return found


@pytest_asyncio.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    pump_port = free_port()
    config: dict[str, Any] = {
        "emulators": [{"id": "pump", "type": "feed_pump", "options": {"port": pump_port}}],
        "instruments": [pump_instrument("pump", pump_port)],
        "sinks": [{"id": "ua", "type": "opcua_server", "options": {"port": free_port()}}],
        "security": {
            "users": [
                {"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS
            ]
        },
        "commands": [{"target": STOP}, {"target": START, "signature": "required"}],
    }
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        runner = gateway.runners[0]
        await wait_for(lambda: runner.state.value == "connected", 10, what="the pump connected")
        sink = plan.sinks[0].instance
        assert isinstance(sink, OpcUaServerSink)
        yield Bench(plan, sink, tmp_path)


@pytest.mark.asyncio
async def test_an_operator_calls_the_stop_method_and_it_is_audited_as_theirs(
    bench: Bench,
) -> None:
    assert await bench.browse_methods() == {"start": ["Reason"], "stop": ["Reason"]}
    status, outputs = await bench.call("operator", STOP, "bottle change")
    assert status == StatusCodes.Good
    assert json.loads(outputs[0]) == {"channel": "running", "value": 0}
    assert not bench.running
    records = bench.command_records()
    assert [(r["action"], r["user"], r["reason"]) for r in records] == [
        ("command.requested", "operator", "bottle change"),
        ("command.executed", "operator", "bottle change"),
    ]
    assert records[0]["details"]["interface"] == "opcua"


@pytest.mark.asyncio
async def test_calls_that_may_not_run_are_refused_and_audited(bench: Bench) -> None:
    viewer, _ = await bench.call("viewer", STOP, "r")
    assert viewer == StatusCodes.BadUserAccessDenied
    no_reason, _ = await bench.call("operator", STOP, "")
    assert no_reason == StatusCodes.BadInvalidArgument
    missing, _ = await bench.call("operator", STOP)
    assert missing == StatusCodes.BadArgumentsMissing
    unsigned, _ = await bench.call("operator", START, "r")  # no signature over OPC UA
    assert unsigned == StatusCodes.BadUserAccessDenied
    assert bench.running
    # A refusal the server decides alone (no identity, a Call without its arguments) is noted
    # behind the path's own records: wait for all four, in any order.
    refused = await wait_for(
        lambda: len(records := bench.command_records()) == 4 and records,
        10,
        what="four refusals on record",
    )
    assert {r["action"] for r in refused} == {"command.refused"}
    assert sorted((r["user"], r["details"]["rule"], r["target"]) for r in refused) == [
        ("operator", "arguments", STOP),
        ("operator", "reason", STOP),
        ("operator", "signature", START),
        ("viewer", "role", "(OPC UA Call request)"),
    ]
