"""Writes from OPC UA clients go through the gateway's write path: a running gateway with the
emulated feed pump (Modbus, loopback) and its northbound OPC UA server; clients log in with the
configuration's users over Basic256Sha256."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from conftest import (
    free_port,
    make_client_cert,
    plan_for,
    pump_instrument,
    running,
    secure_client,
    wait_for,
)
from test_controlled_writes import HASHES, PASSWORDS, audit_records

from gateway.loader import Plan
from plugins.opcua_server._ua import StatusCodes
from plugins.opcua_server.sink import OpcUaServerSink

TARGET = "reactor1/pump/speed_setpoint"


class Bench:
    def __init__(self, plan: Plan, sink: OpcUaServerSink, tmp_path: Path) -> None:
        self.plan = plan
        self.sink = sink
        self.client_cert = make_client_cert(tmp_path / "client", "scada")
        shutil.copy(self.client_cert.cert, sink.trusted_dir / self.client_cert.cert.name)

    @property
    def pump_setpoint(self) -> float:
        return float(self.plan.emulators[0].instance.emulator.model.setpoint_rpm)

    async def write(self, user: str, node: str, value: Any) -> int:
        client = await secure_client(
            self.sink.endpoint_url,
            self.client_cert,
            self.sink.own_certificate.cert_path,
            user,
            PASSWORDS[user],
        )
        async with client:
            index = await client.get_namespace_index(self.sink.namespace_uri or "")
            request = ua.WriteParameters(
                NodesToWrite=[
                    ua.WriteValue(
                        NodeId=ua.NodeId(node, index),
                        AttributeId=ua.AttributeIds.Value,
                        Value=ua.DataValue(value),
                    )
                ]
            )
            try:
                (result,) = await client.uaclient.write(request)
            except ua.UaStatusCodeError as exc:  # the whole service refused
                return int(exc.code)
            return int(result.value)


@pytest_asyncio.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    pump_port = free_port()
    config: dict[str, Any] = {
        "emulators": [
            {"id": "pump", "type": "feed_pump", "options": {"port": pump_port, "setpoint_rpm": 2}}
        ],
        "instruments": [pump_instrument("pump", pump_port)],
        "sinks": [{"id": "ua", "type": "opcua_server", "options": {"port": free_port()}}],
        "security": {
            "users": [
                {"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS
            ]
        },
        "writes": [{"target": TARGET, "min": 0, "max": 10, "max_step": 5}],
    }
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        runner = gateway.runners[0]
        await wait_for(lambda: runner.state.value == "connected", 10, what="the pump connected")
        sink = plan.sinks[0].instance
        assert isinstance(sink, OpcUaServerSink)
        yield Bench(plan, sink, tmp_path)


@pytest.mark.asyncio
async def test_an_operator_write_over_opcua_moves_the_pump_and_is_audited(bench: Bench) -> None:
    status = await bench.write("operator", TARGET, ua.Variant(4.0, ua.VariantType.Double))
    assert status == StatusCodes.Good
    assert bench.pump_setpoint == 4
    writes = [r for r in audit_records(bench.plan) if r["action"].startswith("write.")]
    assert [(r["action"], r["outcome"], r["user"]) for r in writes] == [
        ("write.requested", "accepted", "operator"),
        ("write.executed", "ok", "operator"),
        ("write.read_back", "ok", "operator"),
    ]
    assert writes[0]["details"]["interface"] == "opcua"
    assert writes[0]["reason"] == "written over OPC UA by operator"
    logins = [r for r in audit_records(bench.plan) if r["action"] == "login"]
    assert logins and logins[-1]["details"]["interface"] == "opcua"


@pytest.mark.parametrize(
    ("user", "value", "status"),
    [
        ("viewer", 4.0, StatusCodes.BadUserAccessDenied),  # the Write service itself
        ("admin", 4.0, StatusCodes.BadUserAccessDenied),
        ("engineer", 11.0, StatusCodes.BadOutOfRange),  # engineer qualifies; above max
        ("operator", 11.0, StatusCodes.BadOutOfRange),  # above max
        ("operator", 9.0, StatusCodes.BadOutOfRange),  # a step of 7 > 5
    ],
)
@pytest.mark.asyncio
async def test_refused_writes_over_opcua_change_nothing(
    bench: Bench, user: str, value: float, status: int
) -> None:
    got = await bench.write(user, TARGET, ua.Variant(value, ua.VariantType.Double))
    assert got == status
    assert bench.pump_setpoint == 2


@pytest.mark.asyncio
async def test_only_declared_targets_are_writable_over_opcua(bench: Bench) -> None:
    got = await bench.write(
        "operator", "reactor1/pump/flow", ua.Variant(1.0, ua.VariantType.Double)
    )
    assert got == StatusCodes.BadUserAccessDenied
    got = await bench.write("operator", TARGET, ua.Variant("five", ua.VariantType.String))
    assert got == StatusCodes.BadTypeMismatch
    assert bench.pump_setpoint == 2
