"""The ``opcua`` driver reads the identity nodes of the emulated bioreactor controller over
loopback, through the real runtime, and the gateway keeps and shows it."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from conftest import free_port, wait_for
from test_opcua_driver_emulator import NAMESPACE, NODES, gateway_with_controller, instrument

from gateway import DeviceIdentity
from gateway.metrics import health_report
from gateway.store import SampleStore
from plugins.opcua.options import OpcUaOptions

IDENTITY = {
    "manufacturer": "dcu:BioreactorController.Identification.Manufacturer",
    "model": "dcu:BioreactorController.Identification.Model",
    "serial_number": f"nsu={NAMESPACE};s=BioreactorController.Identification.SerialNumber",
    "firmware_revision": "dcu:BioreactorController.Identification.SoftwareRevision",
    # Not on this controller: the field stays unknown, the rest is read.
    "hardware_revision": "dcu:BioreactorController.Identification.NoSuchNode",
}


@pytest.mark.asyncio
async def test_the_controllers_identity_nodes_become_the_instruments_identity(
    tmp_path: Path,
) -> None:
    port = free_port()
    block = instrument("dcu", port, NODES[:2])
    block["options"]["identity"] = IDENTITY
    with structlog.testing.capture_logs() as logged:
        async with gateway_with_controller(tmp_path, block, port=port) as (_, gateway):
            runner = gateway.runners[0]
            await wait_for(lambda: runner.identity is not None, within=15, what="the identity")
            assert runner.identity == DeviceIdentity(
                "PAT Gateway emulator", "Fed-batch controller", "EMU-reactor", "3.2.0", None
            )
            shown = health_report(gateway, 1.0)["instruments"]["dcu"]["identity"]
            assert shown["serial_number"] == "EMU-reactor" and shown["source"] == "driver"
    [incomplete] = [e for e in logged if e["event"] == "opcua.identity_incomplete"]
    assert incomplete["problems"] == {"hardware_revision": "BadNodeIdUnknown"}
    store = SampleStore(tmp_path / "store.sqlite", read_only=True)
    try:
        [record] = store.identities("dcu")
    finally:
        store.close()
    assert record.identity.firmware_revision == "3.2.0"


def test_identity_nodes_are_checked_like_the_nodes() -> None:
    with pytest.raises(ValueError, match=r"serial_number: node 'x:Serial'.*alias 'x'"):
        OpcUaOptions.model_validate(
            {
                "url": "opc.tcp://127.0.0.1:4840",
                "nodes": [{"name": "t", "node": "i=2258", "unit": "s"}],
                "identity": {"serial_number": "x:Serial"},
            }
        )


@pytest.mark.asyncio
async def test_a_server_answering_fewer_identity_values_than_asked_leaves_it_unknown(
    tmp_path: Path,
) -> None:
    # A broken server answers the identity Read with fewer values than nodes asked: no value
    # can be matched to its field, so the identity stays unknown (logged), never a crash of
    # the connect. The stand-in is asyncua's client, not ours: two calls, the second broken.
    from types import SimpleNamespace

    from gateway import PluginContext
    from plugins.opcua.driver import OpcUaDriver

    options = OpcUaOptions.model_validate(
        {
            "url": "opc.tcp://127.0.0.1:4840",
            "nodes": [{"name": "t", "node": "i=2258", "unit": "s"}],
            "identity": {"manufacturer": "i=2263", "serial_number": "i=2261"},
        }
    )
    driver = OpcUaDriver(options, PluginContext("controller", tmp_path))

    async def namespaces() -> list[str]:
        return ["http://opcfoundation.org/UA/"]

    async def read_attributes(nodes: list[object], attribute: object) -> list[object]:
        return nodes[:1]  # one "value" for two nodes

    broken = SimpleNamespace(
        get_namespace_array=namespaces, uaclient=SimpleNamespace(read_attributes=read_attributes)
    )
    with structlog.testing.capture_logs() as logs:
        assert await driver._read_identity(broken) is None  # type: ignore[arg-type]
    assert [e["problems"] for e in logs if e["event"] == "opcua.identity_incomplete"] == [
        {"read": "1 values answered for 2 nodes"}
    ]
