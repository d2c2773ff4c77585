"""The demo configuration end to end over OPC UA, both ways.

The bioreactor controller emulator serves the run; the ``opcua`` driver subscribes to it; the
store commits pH, dissolved oxygen and temperature with their units and the server's source
timestamps; the northbound ``opcua_server`` sink refuses anonymous and unsecured clients and
serves the demo user — with a trusted client certificate and the documented security policy —
every signal with its EUInformation.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import conftest
import pytest
from asyncua import Client, ua
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError
from conftest import demo_copy, make_client_cert, running, wait_for

from gateway import build_registry, load_plan
from gateway.store import SampleStore

DEMO_USER, DEMO_PASSWORD = "demo", "demo-password"  # as docs/configuration.md documents


@pytest.mark.asyncio
async def test_demo_controller_in_and_secure_server_out(
    tmp_path: Path,
) -> None:
    config, _ = demo_copy(tmp_path)  # its data/ is tmp_path/data, whatever the working dir
    plan = load_plan(config, build_registry())
    north = next(s.instance.options.port for s in plan.sinks if s.type == "opcua_server")
    client_cert = make_client_cert(tmp_path / "client", "demo-client")
    trusted = tmp_path / "data" / "opcua" / "pki" / "trusted"
    url = f"opc.tcp://127.0.0.1:{north}/pat-gateway"

    async with running(plan) as (gateway, _task):
        ph = next(o for o in gateway.outputs if o.signal.id == "reactor1/controller/ph")
        await wait_for(lambda: ph.seq >= 3, within=30, what="pH from the controller")
        server_cert = next((tmp_path / "data" / "opcua" / "pki" / "own").glob("*.der"))

        # No security at all: the server offers no None endpoint.
        endpoints = await Client(url, timeout=5).connect_and_get_server_endpoints()
        policies = {e.SecurityPolicyUri.rsplit("#", 1)[-1] for e in endpoints}
        assert policies == {"Basic256Sha256", "Aes256_Sha256_RsaPss"}
        insecure = Client(url, timeout=5)
        insecure.set_user(DEMO_USER)
        insecure.set_password(DEMO_PASSWORD)
        # The server refuses the session asyncua's client tries on the None channel.
        with pytest.raises(UaStatusCodeError) as refused:
            await insecure.connect()
        await insecure.disconnect()
        assert refused.value.code == StatusCodes.BadSecurityPolicyRejected

        def secure_client(user: str | None) -> Any:
            return conftest.secure_client(url, client_cert, server_cert, user, DEMO_PASSWORD)

        # Secure channel but an untrusted certificate, then trusted but anonymous: refused.
        untrusted = await secure_client(DEMO_USER)
        with pytest.raises(UaStatusCodeError) as refused:
            await untrusted.connect()
        await untrusted.disconnect()
        assert refused.value.code == StatusCodes.BadSecurityChecksFailed
        shutil.copy(client_cert.cert, trusted / client_cert.cert.name)
        anonymous = await secure_client(None)
        with pytest.raises(UaStatusCodeError) as refused:
            await anonymous.connect()
        await anonymous.disconnect()
        assert refused.value.code == StatusCodes.BadIdentityTokenRejected

        # The documented way in: Basic256Sha256, SignAndEncrypt, demo user, trusted cert.
        client = await secure_client(DEMO_USER)
        await client.connect()
        try:
            index = await client.get_namespace_index("urn:pat-gateway:demo-site:reactor1")
            expected = {
                "reactor1/controller/ph": (5321520, "pH"),  # Q30
                "reactor1/controller/dissolved_oxygen": (20529, "%"),  # P1
                "reactor1/controller/temperature": (4408652, "°C"),  # CEL
                "reactor1/feed_pump/flow": (13361, "ml/min"),  # 41
            }
            for signal_id, (unit_id, display) in expected.items():
                variable = client.get_node(ua.NodeId(signal_id, index))
                value = await variable.read_data_value()
                assert value.StatusCode.is_good(), signal_id
                assert isinstance(value.Value.Value, float), signal_id
                eu = await (await variable.get_child("0:EngineeringUnits")).read_value()
                assert (eu.UnitId, eu.DisplayName.Text) == (unit_id, display), signal_id
        finally:
            await client.disconnect()

    store = SampleStore(tmp_path / "data" / "demo.sqlite", read_only=True)
    try:
        units = {s.signal: s.unit for s in store.samples("reactor1/controller/*")}
        stored = [s for s in store.samples("reactor1/controller/ph")]
    finally:
        store.close()
    assert units["reactor1/controller/ph"] == "[pH]"
    assert units["reactor1/controller/dissolved_oxygen"] == "%"
    assert units["reactor1/controller/temperature"] == "Cel"
    # Source timestamps are the server's, kept as received (microseconds), not ours.
    assert all(s.source_ts % 1000 == 0 and s.source_ts <= s.gateway_ts for s in stored)
    assert any(s.source_ts != s.gateway_ts for s in stored)
