"""The northbound OPC UA server shows each instrument's device identity as the OPC UA Devices
(DI, OPC 10000-100) identification properties of its object, read by a real asyncua client."""

from __future__ import annotations

from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.ua.status_codes import StatusCodes
from conftest import access_for, free_port

from gateway import DeviceIdentity, PluginContext, Quality, Sample, Signal
from plugins.opcua_server.address_space import DI_NAMESPACE
from plugins.opcua_server.options import OpcUaServerOptions
from plugins.opcua_server.sink import OpcUaServerSink

SIGNALS = [
    Signal("reactor1/feed_pump/flow", "mL/min", instrument="feed_pump"),
    Signal("reactor1/raman/integration", "ms", instrument="raman"),
]
PUMP = DeviceIdentity("Emulated Pumps Ltd", "FP-200", "FP2-00042", "2.7.1", "B")
SWAPPED = DeviceIdentity("Emulated Pumps Ltd", "FP-200", "FP2-00099", "2.7.1")


async def identification(client: Client, instrument: str) -> dict[str, object]:
    """The instrument object's DI properties, browsed by their DI browse names."""
    di = await client.get_namespace_index(DI_NAMESPACE)
    ns = await client.get_namespace_index("urn:pat-gateway:site:reactor1")
    parent = client.get_node(ua.NodeId(f"reactor1/{instrument}", ns))
    out: dict[str, object] = {}
    for name in ("Manufacturer", "Model", "SerialNumber", "SoftwareRevision", "HardwareRevision"):
        child = await parent.get_child(ua.QualifiedName(name, di))
        value = await child.read_data_value(raise_on_bad_status=False)
        if value.StatusCode.is_good():
            shown = value.Value.Value
            out[name] = shown.Text if isinstance(shown, ua.LocalizedText) else shown
        else:
            out[name] = value.StatusCode.value
    return out


def sample(signal: str, value: float) -> Sample:
    return Sample(signal, value, "mL/min", 1, 2, Quality.GOOD, 0)


@pytest.mark.asyncio
async def test_the_server_shows_each_instruments_identity_as_di_properties(
    tmp_path: Path,
) -> None:
    options = OpcUaServerOptions(port=free_port(), allow_insecure=True)
    access = access_for({"reader": ("reader-secret", ["viewer"])})
    sink = OpcUaServerSink(options, PluginContext("northbound", tmp_path, access=access))
    sink.bind(SIGNALS)
    # Told before the server started (the pump connected before the sink was up).
    sink.device_identified("feed_pump", PUMP)
    async with sink:
        client = Client(sink.endpoint_url, timeout=5)
        client.set_user("reader")
        client.set_password("reader-secret")
        async with client:
            assert await identification(client, "feed_pump") == {
                "Manufacturer": "Emulated Pumps Ltd",
                "Model": "FP-200",
                "SerialNumber": "FP2-00042",
                "SoftwareRevision": "2.7.1",
                "HardwareRevision": "B",
            }
            # Not identified yet: waiting, not empty strings.
            waiting = await identification(client, "raman")
            assert set(waiting.values()) == {StatusCodes.BadWaitingForInitialData}

            # A swapped pump, told while running: shown with the next batch; a field the
            # device does not tell is BadNotFound.
            sink.device_identified("feed_pump", SWAPPED)
            await sink.send([sample("reactor1/feed_pump/flow", 1.0)])
            shown = await identification(client, "feed_pump")
            assert shown["SerialNumber"] == "FP2-00099"
            assert shown["HardwareRevision"] == StatusCodes.BadNotFound
