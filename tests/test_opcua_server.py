"""The ``opcua_server`` sink against a real asyncua client over loopback.

* The hardening matrix (docs: reliability.md, test 6): what the server answers to each way in,
  as the exact StatusCode a client receives.
* Values as a client reads them: value, type, StatusCode, both timestamps, EngineeringUnits;
  spectra with their axis; subscriptions.
* The server's own certificate: made on first start, reused on the next; stop is prompt.

asyncua builds its standard address space in ~2 s per server, so the secure server with default
options is shared by this module's tests (its event loop is the module's); servers with other
options start per test. Client certificates are made per test where a test's failures would
otherwise count against another's login throttle.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import pytest_asyncio
import structlog
from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError
from conftest import (
    ClientCert,
    access_for,
    assert_no_leftover_tasks,
    free_port,
    make_client_cert,
    wait_for,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from opcua_flood import read_until_closed

from gateway import (
    PluginContext,
    PluginKind,
    Quality,
    Registry,
    Sample,
    Signal,
    SignalKind,
    SpectralAxis,
    Spectrum,
    hash_password,
)
from gateway.unece import ucum_for_eu
from plugins.opcua_server import access, plugin
from plugins.opcua_server.options import OpcUaServerOptions
from plugins.opcua_server.sink import OpcUaServerSink

AREA = "reactor1"
NAMESPACE = "urn:pat-gateway:site:reactor1"
PASSWORDS = {"reader": "reader-secret", "operator": "operator-secret"}
SIGNALS = [
    Signal("reactor1/feed_pump/flow", "mL/min", description="Feed flow", instrument="feed_pump"),
    Signal("reactor1/dcu/temperature", "Cel", instrument="dcu"),
    Signal("reactor1/dcu/do", "%", instrument="dcu"),
    Signal("reactor1/dcu/ph", "[pH]", instrument="dcu"),
    Signal("reactor1/raman/spectrum", "{counts}", SignalKind.SPECTRUM, instrument="raman"),
    Signal("reactor1/raman/idle", "1", description="Never published", instrument="raman"),
]
BASIC256SHA256 = security_policies.SecurityPolicyBasic256Sha256
AES256_PSS = security_policies.SecurityPolicyAes256Sha256RsaPss
SIGN_AND_ENCRYPT = ua.MessageSecurityMode.SignAndEncrypt


def trust(sink: OpcUaServerSink, client: ClientCert) -> None:
    shutil.copy(client.cert, sink.trusted_dir / client.cert.name)


async def client_for(
    sink: OpcUaServerSink,
    who: ClientCert | None,
    policy: type[security_policies.SecurityPolicy] = BASIC256SHA256,
    mode: ua.MessageSecurityMode = SIGN_AND_ENCRYPT,
) -> Client:
    """A client (not connected) securing its channel with ``who``'s certificate (None: none)."""
    client = Client(sink.endpoint_url, timeout=5)
    if who is not None:
        assert sink.own_certificate is not None
        client.application_uri = who.uri
        await client.set_security(
            policy,
            str(who.cert),
            str(who.key),
            server_certificate=str(sink.own_certificate.cert_path),
            mode=mode,
        )
    return client


@contextlib.asynccontextmanager
async def session(
    sink: OpcUaServerSink,
    who: ClientCert | None,
    user: str | None = None,
    password: str | None = None,
    policy: type[security_policies.SecurityPolicy] = BASIC256SHA256,
    mode: ua.MessageSecurityMode = SIGN_AND_ENCRYPT,
) -> AsyncIterator[Client]:
    """A connected, activated client session (raises what the server answered)."""
    client = await client_for(sink, who, policy, mode)
    if user is not None:
        client.set_user(user)
    if password is not None:
        client.set_password(password)
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def refused(status_code: int, **kwargs: Any) -> None:
    """Assert that opening a session is refused with exactly ``status_code``."""
    with pytest.raises(UaStatusCodeError) as excinfo:
        async with session(**kwargs):
            pass
    assert excinfo.value.code == status_code, ua.StatusCode(excinfo.value.code).name


def node(client: Client, index: int, node_id: str) -> Any:
    return client.get_node(ua.NodeId(node_id, index))


@contextlib.contextmanager
def events() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


# --- the shared secure server -------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientCert]:
    folder = tmp_path_factory.mktemp("clients")
    return {name: make_client_cert(folder, name) for name in ("trusted", "stranger")}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, ClientCert]
) -> AsyncIterator[OpcUaServerSink]:
    data_dir = tmp_path_factory.mktemp("data")
    options = OpcUaServerOptions(port=free_port())
    access = access_for(
        {
            "reader": (PASSWORDS["reader"], ["viewer"]),
            "operator": (PASSWORDS["operator"], ["operator"]),
        },
        lockout=None,  # the server's own per-client throttle is what these tests check
    )
    sink = OpcUaServerSink(options, PluginContext("northbound", data_dir, access=access))
    sink.bind(SIGNALS)
    async with sink:
        trust(sink, pki["trusted"])
        yield sink
    # The autouse guard checks each test's own loop; this loop's leftovers are checked here.
    await assert_no_leftover_tasks("the shared server")


@pytest_asyncio.fixture(loop_scope="module")
async def fresh(server: OpcUaServerSink, tmp_path: Path) -> ClientCert:
    """A newly trusted client: its failed logins count against nobody else's throttle."""
    client = make_client_cert(tmp_path, f"client-{tmp_path.name[-12:]}")
    trust(server, client)
    return client


module_loop = pytest.mark.asyncio(loop_scope="module")


# --- hardening matrix ---------------------------------------------------------------------


@module_loop
async def test_endpoints_are_signed_or_encrypted_and_take_passwords_only(
    server: OpcUaServerSink,
) -> None:
    endpoints = await Client(server.endpoint_url, timeout=5).connect_and_get_server_endpoints()
    offered = {(e.SecurityPolicyUri.split("#")[1], e.SecurityMode.name) for e in endpoints}
    assert offered == {
        ("Basic256Sha256", "Sign"),
        ("Basic256Sha256", "SignAndEncrypt"),
        ("Aes256_Sha256_RsaPss", "Sign"),
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
    }
    for endpoint in endpoints:
        assert [t.TokenType for t in endpoint.UserIdentityTokens] == [ua.UserTokenType.UserName]
        assert endpoint.Server.ApplicationUri == server.application_uri
        assert endpoint.ServerCertificate == server.own_certificate.cert_path.read_bytes()


@module_loop
async def test_anonymous_is_rejected(server: OpcUaServerSink, fresh: ClientCert) -> None:
    await refused(StatusCodes.BadIdentityTokenRejected, sink=server, who=fresh)


@module_loop
async def test_wrong_password_is_rejected(server: OpcUaServerSink, fresh: ClientCert) -> None:
    with events() as logged:
        await refused(
            StatusCodes.BadUserAccessDenied,
            sink=server,
            who=fresh,
            user="reader",
            password="not-the-password",
        )
    refusal = next(e for e in logged if e["event"] == "opcua_server.login_refused")
    assert refusal["reason"] == "wrong password" and refusal["user"] == "reader"
    assert not any("not-the-password" in str(e) for e in logged)


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("admin", None),
        ("admin", ""),
        ("admin", "admin"),
        ("Admin", "x"),
        ("nobody", "reader-secret"),
    ],
)
@module_loop
async def test_admin_and_unknown_users_are_rejected(
    server: OpcUaServerSink, fresh: ClientCert, user: str, password: str | None
) -> None:
    with events() as logged:
        await refused(
            StatusCodes.BadUserAccessDenied, sink=server, who=fresh, user=user, password=password
        )
    assert any(e.get("reason") == "unknown user" for e in logged)


@module_loop
async def test_untrusted_certificate_is_rejected_and_kept_for_the_operator(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    stranger = pki["stranger"]
    await refused(
        StatusCodes.BadSecurityChecksFailed,
        sink=server,
        who=stranger,
        user="reader",
        password=PASSWORDS["reader"],
    )
    rejected = [p.read_bytes() for p in server.rejected_dir.iterdir()]
    assert stranger.der in rejected


@module_loop
async def test_moving_a_rejected_certificate_to_trusted_needs_no_restart(
    server: OpcUaServerSink, tmp_path: Path
) -> None:
    newcomer = make_client_cert(tmp_path, "newcomer")
    login = {"user": "reader", "password": PASSWORDS["reader"]}
    await refused(StatusCodes.BadSecurityChecksFailed, sink=server, who=newcomer, **login)
    (copy,) = [p for p in server.rejected_dir.iterdir() if p.read_bytes() == newcomer.der]
    copy.rename(server.trusted_dir / copy.name)
    async with session(server, newcomer, **login) as client:
        assert await client.nodes.server_state.read_value() == ua.ServerState.Running


@module_loop
async def test_trusted_client_with_password_reads_on_every_policy(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    for policy in (BASIC256SHA256, AES256_PSS):
        for mode in (ua.MessageSecurityMode.Sign, SIGN_AND_ENCRYPT):
            async with session(
                server, pki["trusted"], "reader", PASSWORDS["reader"], policy, mode
            ) as client:
                assert await client.nodes.server_state.read_value() == ua.ServerState.Running


async def _channel(sink: OpcUaServerSink, channel_cert: ClientCert | None) -> Client:
    """A client with a secure channel open with ``channel_cert`` (None: no security)."""
    client = await client_for(sink, channel_cert)
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    return client


async def _create_session(
    client: Client, sink: OpcUaServerSink, session_cert: ClientCert | None
) -> Client:
    """Create a session presenting ``session_cert`` (None: none), whatever secured the channel,
    as a hostile client could."""
    params = ua.CreateSessionParameters(
        ClientNonce=b"n" * 32,
        RequestedSessionTimeout=60000,
        EndpointUrl=sink.endpoint_url,
        SessionName="hostile",
        ClientCertificate=session_cert.der if session_cert else None,
        ClientDescription=ua.ApplicationDescription(
            ApplicationUri=session_cert.uri if session_cert else "urn:test:hostile",
            ApplicationType=ua.ApplicationType.Client,
        ),
    )
    result = await client.uaclient.create_session(params)
    client._server_nonce = result.ServerNonce
    return client


async def _channel_then_session(
    sink: OpcUaServerSink, channel_cert: ClientCert | None, session_cert: ClientCert | None
) -> Client:
    client = await _channel(sink, channel_cert)
    try:
        return await _create_session(client, sink, session_cert)
    except BaseException:
        client.disconnect_socket()
        raise


@module_loop
async def test_session_on_an_unsecured_channel_is_refused_even_with_the_right_password(
    server: OpcUaServerSink,
) -> None:
    # asyncua opens a None channel whatever the endpoints say (needed for GetEndpoints), and
    # would create and activate a session on it: refused at CreateSession.
    client = await _channel(server, None)
    try:
        with pytest.raises(UaStatusCodeError) as excinfo:
            await _create_session(client, server, None)
        assert excinfo.value.code == StatusCodes.BadSecurityPolicyRejected
        # Nor can it read without a session.
        with pytest.raises(UaStatusCodeError) as excinfo:
            await client.uaclient.read(read_params())
        assert excinfo.value.code == StatusCodes.BadUserAccessDenied
    finally:
        client.disconnect_socket()


@module_loop
async def test_another_channels_session_cannot_be_taken_over(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    # asyncua would let a new channel activate a live session by its token and bind it before
    # checking anything: a refused activation then still read as the session's user.
    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]) as victim:
        token = victim.uaclient.protocol.authentication_token
        assert token.NodeIdType == ua.NodeIdType.ByteString and len(token.Identifier) == 32
        thief = await _channel(server, pki["trusted"])
        try:
            thief.uaclient.protocol.authentication_token = token
            thief._server_nonce = b"n" * 32
            with pytest.raises(UaStatusCodeError) as excinfo:
                await thief.activate_session("reader", PASSWORDS["reader"])
            assert excinfo.value.code == StatusCodes.BadSessionIdInvalid
            with pytest.raises(UaStatusCodeError) as excinfo:
                await thief.uaclient.read(read_params())
            assert excinfo.value.code == StatusCodes.BadUserAccessDenied
        finally:
            thief.disconnect_socket()
        # The victim's session still works.
        assert await victim.get_namespace_index(NAMESPACE) >= 1


@module_loop
async def test_one_session_per_channel(server: OpcUaServerSink, pki: dict[str, ClientCert]) -> None:
    client = await _channel_then_session(server, pki["trusted"], pki["trusted"])
    try:
        with pytest.raises(UaStatusCodeError) as excinfo:
            await _create_session(client, server, pki["trusted"])
        assert excinfo.value.code == StatusCodes.BadTooManySessions
    finally:
        client.disconnect_socket()


def read_params() -> ua.ReadParameters:
    params = ua.ReadParameters()
    item = ua.ReadValueId()
    item.NodeId = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime)
    item.AttributeId = ua.AttributeIds.Value
    params.NodesToRead = [item]
    return params


@pytest.mark.parametrize("presented", ["trusted certificate", "no certificate"])
@module_loop
async def test_the_channel_certificate_is_checked_not_only_the_presented_one(
    server: OpcUaServerSink, pki: dict[str, ClientCert], presented: str
) -> None:
    # CreateSession validates only the certificate a client chooses to present; activation
    # checks the one that secured the channel.
    shown = pki["trusted"] if presented == "trusted certificate" else None
    client = await _channel_then_session(server, pki["stranger"], shown)
    try:
        with pytest.raises(UaStatusCodeError) as excinfo:
            await client.activate_session("reader", PASSWORDS["reader"])
        assert excinfo.value.code == StatusCodes.BadSecurityChecksFailed
    finally:
        client.disconnect_socket()


def write_request(index: int) -> ua.WriteParameters:
    """A Write of a signal, and of a standard node whose AccessLevel allows writing (its
    UserAccessLevel does not: asyncua 2.1.0 gives no user a writable standard node)."""
    targets = [
        (ua.NodeId("reactor1/feed_pump/flow", index), ua.Variant(1.0, ua.VariantType.Double)),
        (
            ua.NodeId(ObjectIds.Server_ServerDiagnostics_EnabledFlag),
            ua.Variant(True, ua.VariantType.Boolean),
        ),
    ]
    return ua.WriteParameters(
        NodesToWrite=[
            ua.WriteValue(
                NodeId=node_id, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(value)
            )
            for node_id, value in targets
        ]
    )


@module_loop
async def test_reader_cannot_write(server: OpcUaServerSink, pki: dict[str, ClientCert]) -> None:
    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]) as client:
        index = await client.get_namespace_index(NAMESPACE)
        # Refused as a whole: a reader may not use the Write service at all.
        with pytest.raises(UaStatusCodeError) as excinfo:
            await client.uaclient.write(write_request(index))
        assert excinfo.value.code == StatusCodes.BadUserAccessDenied


@module_loop
async def test_writer_cannot_write_any_node_yet(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    async with session(server, pki["trusted"], "operator", PASSWORDS["operator"]) as client:
        index = await client.get_namespace_index(NAMESPACE)
        # The service is allowed for the write role; every node refuses.
        results = await client.uaclient.write(write_request(index))
        assert [r.value for r in results] == [StatusCodes.BadUserAccessDenied] * 2
        for write in write_request(index).NodesToWrite:
            level = await client.get_node(write.NodeId).get_user_access_level()
            assert level == {ua.AccessLevel.CurrentRead}
        flow = await read(client, index, "reactor1/feed_pump/flow")
        assert flow.Value.Value != 1.0


@module_loop
async def test_failed_logins_throttle_that_client_only(
    server: OpcUaServerSink, fresh: ClientCert, pki: dict[str, ClientCert]
) -> None:
    for _ in range(access.MAX_FAILURES):
        await refused(
            StatusCodes.BadUserAccessDenied, sink=server, who=fresh, user="reader", password="x"
        )
    with events() as logged:
        await refused(
            StatusCodes.BadUserAccessDenied,
            sink=server,
            who=fresh,
            user="reader",
            password=PASSWORDS["reader"],
        )
    assert [e["event"] for e in logged if e["event"].startswith("opcua_server.login")] == [
        "opcua_server.login_throttled"
    ]
    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]):
        pass


@module_loop
async def test_register_server_is_refused_without_a_session(server: OpcUaServerSink) -> None:
    client = Client(server.endpoint_url, timeout=5)
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        with pytest.raises(UaStatusCodeError) as excinfo:
            await client.uaclient.register_server(
                ua.RegisteredServer(ServerUri="urn:evil", IsOnline=True)
            )
        assert excinfo.value.code == StatusCodes.BadServiceUnsupported
        assert [s.ApplicationUri for s in await client.find_servers()] == [server.application_uri]
    finally:
        client.disconnect_socket()


@module_loop
async def test_a_peer_announcing_a_huge_chunk_is_disconnected(server: OpcUaServerSink) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", urlparse(server.endpoint_url).port)
    try:
        header = b"MSGF" + (64 * 1024 * 1024).to_bytes(4, "little") + b"\0\0\0\0"
        writer.write(header + b"x" * 1000)
        await writer.drain()
        async with asyncio.timeout(3):
            answer = await read_until_closed(reader)  # closed by the server, not left buffering
        assert answer[:4] in (b"", b"ERRF")  # BadTcpMessageTooLarge, if not overtaken
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --- values -------------------------------------------------------------------------------

T0 = 1_795_000_000_123_456_789  # with nanoseconds below the microsecond, which OPC UA drops
T0_UTC = dt.datetime(2026, 11, 18, 11, 6, 40, 123456, dt.UTC)


def sample(
    signal: str,
    value: Any,
    unit: str,
    quality: Quality = Quality.GOOD,
    reason: str | None = None,
    seq: int = 0,
    offset: int = 0,
) -> Sample:
    return Sample(signal, value, unit, T0 + offset, T0 + offset + 2_500, quality, seq, reason)


async def read(client: Client, index: int, node_id: str) -> ua.DataValue:
    return await node(client, index, node_id).read_data_value(raise_on_bad_status=False)


async def units(client: Client, index: int, node_id: str) -> ua.EUInformation:
    eu: ua.EUInformation = await node(client, index, f"{node_id}/EngineeringUnits").read_value()
    return eu


@module_loop
async def test_scalars_with_quality_timestamps_and_units(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    await server.send(
        [
            sample("reactor1/feed_pump/flow", 48.25, "mL/min"),
            sample("reactor1/dcu/temperature", 36.9, "Cel", Quality.UNCERTAIN, "calibration due"),
            sample("reactor1/dcu/do", None, "%", Quality.BAD, "unreachable: connection refused"),
            sample("reactor1/dcu/ph", 7.01, "[pH]", Quality.BAD, "probe error bit set"),
        ]
    )
    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]) as client:
        index = await client.get_namespace_index(NAMESPACE)
        expected = {
            "reactor1/feed_pump/flow": (48.25, StatusCodes.Good, 13361, "mL/min"),
            "reactor1/dcu/temperature": (36.9, StatusCodes.Uncertain, 4408652, "Cel"),
            "reactor1/dcu/do": (None, StatusCodes.BadNoCommunication, 20529, "%"),
            "reactor1/dcu/ph": (None, StatusCodes.Bad, 5321520, "[pH]"),
        }
        for node_id, (value, status, unit_id, ucum) in expected.items():
            dv = await read(client, index, node_id)
            assert dv.Value.Value == value, node_id
            assert dv.StatusCode.value == status, node_id
            assert dv.SourceTimestamp == T0_UTC
            # gateway_ts is T0 + 2.5 µs: …123 459 289 ns, truncated to …123 459 µs.
            assert dv.ServerTimestamp == T0_UTC + dt.timedelta(microseconds=3)
            eu = await units(client, index, node_id)
            assert eu.UnitId == unit_id, node_id
            assert ucum_for_eu(eu.NamespaceUri, eu.UnitId, eu.DisplayName.Text) == ucum
        flow = node(client, index, "reactor1/feed_pump/flow")
        assert (await flow.read_data_type()) == ua.NodeId(ObjectIds.Double)
        assert (await flow.read_description()).Text == "Feed flow"
        eu = await units(client, index, "reactor1/feed_pump/flow")
        assert (eu.DisplayName.Text, eu.Description.Text) == ("ml/min", "millilitre per minute")


@module_loop
async def test_a_status_code_name_as_reason_is_passed_on(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    await server.send(
        [
            sample("reactor1/dcu/ph", None, "[pH]", Quality.BAD, "BadSensorFailure"),
            sample(
                "reactor1/dcu/temperature",
                37.0,
                "Cel",
                Quality.UNCERTAIN,
                "UncertainSensorNotAccurate",
            ),
            # A name of another severity is not believed.
            sample("reactor1/dcu/do", 40.0, "%", Quality.UNCERTAIN, "BadSensorFailure"),
        ]
    )
    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]) as client:
        index = await client.get_namespace_index(NAMESPACE)
        codes = [
            (await read(client, index, f"reactor1/dcu/{name}")).StatusCode.value
            for name in ("ph", "temperature", "do")
        ]
    assert codes == [
        StatusCodes.BadSensorFailure,
        StatusCodes.UncertainSensorNotAccurate,
        StatusCodes.Uncertain,
    ]


@module_loop
async def test_types_follow_the_first_value_and_stay(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    # Signals nobody declared: created on their first sample, under their instrument.
    await server.send(
        [
            sample("reactor1/feed_pump/running", True, "1"),
            sample("reactor1/feed_pump/fault_code", 3, "1"),
            sample("reactor1/feed_pump/mode", "auto", "1"),
        ]
    )
    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]) as client:
        index = await client.get_namespace_index(NAMESPACE)

        async def value_type_status(node_id: str) -> tuple[Any, ua.VariantType, int]:
            dv = await read(client, index, node_id)
            return dv.Value.Value, dv.Value.VariantType, dv.StatusCode.value

        assert await value_type_status("reactor1/feed_pump/running") == (
            True,
            ua.VariantType.Boolean,
            StatusCodes.Good,
        )
        assert await value_type_status("reactor1/feed_pump/fault_code") == (
            3,
            ua.VariantType.Int64,
            StatusCodes.Good,
        )
        assert await value_type_status("reactor1/feed_pump/mode") == (
            "auto",
            ua.VariantType.String,
            StatusCodes.Good,
        )
        # Lossless conversions are made; anything else is BadTypeMismatch, and the type stays.
        await server.send(
            [
                sample("reactor1/feed_pump/fault_code", 4.0, "1", seq=1),
                sample("reactor1/feed_pump/running", 0, "1", seq=1),
                sample("reactor1/feed_pump/flow", 12, "mL/min", seq=1),
            ]
        )
        assert (await value_type_status("reactor1/feed_pump/fault_code"))[:2] == (
            4,
            ua.VariantType.Int64,
        )
        assert (await value_type_status("reactor1/feed_pump/running"))[:2] == (
            False,
            ua.VariantType.Boolean,
        )
        assert (await value_type_status("reactor1/feed_pump/flow"))[:2] == (
            12.0,
            ua.VariantType.Double,
        )
        await server.send([sample("reactor1/feed_pump/fault_code", 2.5, "1", seq=2)])
        assert await value_type_status("reactor1/feed_pump/fault_code") == (
            None,
            ua.VariantType.Null,
            StatusCodes.BadTypeMismatch,
        )
        fault_code = node(client, index, "reactor1/feed_pump/fault_code")
        assert await fault_code.read_data_type() == ua.NodeId(ObjectIds.Int64)
        parent = await fault_code.get_parent()
        assert parent.nodeid == ua.NodeId("reactor1/feed_pump", index)


@module_loop
async def test_spectrum_with_its_axis(server: OpcUaServerSink, pki: dict[str, ClientCert]) -> None:
    axis = SpectralAxis(np.linspace(200.0, 1800.0, 16), "cm-1")
    values = np.linspace(0.0, 1.0, 16, dtype=np.float32) * np.float32(1000.3)
    await server.send(
        [
            sample(
                "reactor1/raman/spectrum",
                Spectrum(values, axis),
                "{counts}",
                Quality.UNCERTAIN,
                "saturated: 1 pixels",
            )
        ]
    )
    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]) as client:
        index = await client.get_namespace_index(NAMESPACE)
        dv = await read(client, index, "reactor1/raman/spectrum")
        assert dv.Value.VariantType == ua.VariantType.Double and dv.Value.is_array
        assert dv.Value.Value == values.tolist()  # float32 values, exactly, as doubles
        assert dv.StatusCode.value == StatusCodes.Uncertain
        assert dv.SourceTimestamp == T0_UTC
        spectrum = node(client, index, "reactor1/raman/spectrum")
        assert await spectrum.read_value_rank() == ua.ValueRank.OneDimension
        assert (await units(client, index, "reactor1/raman/spectrum")).UnitId == -1
        assert (
            await units(client, index, "reactor1/raman/spectrum")
        ).DisplayName.Text == "{counts}"
        axis_dv = await read(client, index, "reactor1/raman/spectrum/Axis")
        assert axis_dv.Value.Value == axis.values.tolist()
        assert axis_dv.StatusCode.value == StatusCodes.Good
        axis_eu = await units(client, index, "reactor1/raman/spectrum/Axis")
        assert (axis_eu.UnitId, axis_eu.Description.Text) == (4536624, "reciprocal centimetre")
        (child,) = [
            c for c in await spectrum.get_children() if (await c.read_browse_name()).Name == "Axis"
        ]
        assert child.nodeid == ua.NodeId("reactor1/raman/spectrum/Axis", index)

        # A new calibration: the axis follows, in nm now.
        new_axis = SpectralAxis(np.linspace(790.0, 930.0, 16), "nm")
        await server.send(
            [
                sample(
                    "reactor1/raman/spectrum",
                    Spectrum(values, new_axis),
                    "{counts}",
                    seq=1,
                    offset=10**9,
                )
            ]
        )
        axis_dv = await read(client, index, "reactor1/raman/spectrum/Axis")
        assert axis_dv.Value.Value == new_axis.values.tolist()
        assert axis_dv.SourceTimestamp == T0_UTC + dt.timedelta(seconds=1)
        axis_eu = await units(client, index, "reactor1/raman/spectrum/Axis")
        assert axis_eu.UnitId == 4404277  # C45, nanometre
        # A scalar where a spectrum belongs is refused, not stored.
        await server.send([sample("reactor1/raman/spectrum", 3.0, "{counts}", seq=2)])
        assert (await read(client, index, "reactor1/raman/spectrum")).StatusCode.value == (
            StatusCodes.BadTypeMismatch
        )


@module_loop
async def test_declared_signals_exist_before_data_in_the_lads_like_tree(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    assert server.namespace_uri == NAMESPACE
    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]) as client:
        index = await client.get_namespace_index(NAMESPACE)
        idle = await read(client, index, "reactor1/raman/idle")
        assert idle.StatusCode.value == StatusCodes.BadWaitingForInitialData
        idle_node = node(client, index, "reactor1/raman/idle")
        assert await idle_node.read_data_type() == ua.NodeId(ObjectIds.BaseDataType)
        assert (await idle_node.read_description()).Text == "Never published"
        area = await client.nodes.objects.get_child(f"{index}:{AREA}")
        instruments = {(await c.read_browse_name()).Name for c in await area.get_children()}
        assert {"feed_pump", "dcu", "raman"} <= instruments
        raman = await area.get_child(f"{index}:raman")
        names = {(await c.read_browse_name()).Name for c in await raman.get_children()}
        assert {"spectrum", "idle"} <= names


@module_loop
async def test_signals_declared_after_start_appear_at_the_next_send(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    server.bind([Signal("reactor1/analyser/glucose", "g/L", instrument="analyser")])
    await server.send([])
    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]) as client:
        index = await client.get_namespace_index(NAMESPACE)
        glucose = await read(client, index, "reactor1/analyser/glucose")
        assert glucose.StatusCode.value == StatusCodes.BadWaitingForInitialData
        assert (await units(client, index, "reactor1/analyser/glucose")).UnitId == 18252  # GL


@module_loop
async def test_subscribers_are_notified(
    server: OpcUaServerSink, pki: dict[str, ClientCert]
) -> None:
    received: list[Any] = []

    class Handler:
        def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
            received.append(value)

    async with session(server, pki["trusted"], "reader", PASSWORDS["reader"]) as client:
        index = await client.get_namespace_index(NAMESPACE)
        subscription = await client.create_subscription(20, Handler())
        await subscription.subscribe_data_change(node(client, index, "reactor1/feed_pump/flow"))
        await server.send([sample("reactor1/feed_pump/flow", 50.5, "mL/min", seq=5)])
        await wait_for(lambda: 50.5 in received, within=5, what="the data change")
        await subscription.delete()


# --- options and lifecycle ----------------------------------------------------------------


def test_registered_through_the_hook(tmp_path: Path) -> None:
    registry = Registry()
    plugin.pat_gateway_register_sinks(registry)
    registration = registry.get(PluginKind.SINK, "opcua_server")
    assert registration is not None
    assert registration.options_model is OpcUaServerOptions
    built = registration.factory(OpcUaServerOptions(), PluginContext("northbound", tmp_path))
    assert type(built) is OpcUaServerSink


def test_defaults_are_secure() -> None:
    options = OpcUaServerOptions()
    assert (options.host, options.port, options.allow_insecure, options.users) == (
        "127.0.0.1",
        4840,
        False,
        None,
    )


def test_users_in_the_server_options_are_refused_saying_where_they_moved(
    tmp_path: Path,
) -> None:
    import yaml

    from gateway import ConfigError, load_plan

    registry = Registry()
    plugin.pat_gateway_register_sinks(registry)
    config = tmp_path / "gateway.yaml"
    old_users = [
        {"name": "op", "password_hash": hash_password("x"), "role": "write"},
        {"name": "ro", "password_hash": hash_password("y")},
        {"name": "Jörg M", "password_hash": hash_password("z")},
    ]
    config.write_text(
        yaml.safe_dump(
            {
                "area": AREA,
                "store": {"path": str(tmp_path / "s.sqlite")},
                "sinks": [{"id": "ua", "type": "opcua_server", "options": {"users": old_users}}],
            }
        )
    )
    with pytest.raises(ConfigError) as excinfo:
        load_plan(config, registry)
    (problem,) = excinfo.value.problems
    assert problem.startswith("sinks[0].options.users:")
    assert "moved to the configuration's top-level security.users" in problem
    assert "op (roles: [operator]), ro (roles: [viewer])" in problem
    assert "Jörg M (roles: [viewer], renamed: security.users names are letters" in problem


def test_anonymous_stays_refused_as_an_option() -> None:
    with pytest.raises(ValueError, match="allow_anonymous"):
        OpcUaServerOptions(allow_anonymous=True)  # type: ignore[call-arg]


@pytest.mark.asyncio
async def test_own_certificate_made_once_then_reused_and_stop_is_prompt(tmp_path: Path) -> None:
    options = OpcUaServerOptions(port=free_port(), server_name="Skid 4 gateway")
    context = PluginContext("northbound", tmp_path / "data")

    first = OpcUaServerSink(options, context)
    async with first:
        assert first.own_certificate is not None and first.own_certificate.created
        made = first.own_certificate.cert_path.read_bytes()
    own = tmp_path / "data" / "opcua" / "pki" / "own"
    assert first.own_certificate.cert_path == own / "cert.der"
    assert stat.S_IMODE((own / "key.pem").stat().st_mode) == 0o600
    cert = x509.load_der_x509_certificate(made)
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [first.application_uri]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Skid 4 gateway"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=5 * 365) <= lifetime <= dt.timedelta(days=5 * 366 + 1)

    second = OpcUaServerSink(options, context)
    async with second:
        assert second.own_certificate is not None and not second.own_certificate.created
        assert second.own_certificate.cert_path.read_bytes() == made
        endpoints = await Client(second.endpoint_url, timeout=5).connect_and_get_server_endpoints()
        assert endpoints[0].ServerCertificate == made
        # A client still connected does not hold the stop up.
        client = Client(second.endpoint_url, timeout=5)
        await client.connect_socket()
        await client.send_hello()
        started = time.monotonic()
    assert time.monotonic() - started < 0.5
    client.disconnect_socket()


@pytest.mark.asyncio
async def test_allow_insecure_offers_none_and_says_so(tmp_path: Path) -> None:
    options = OpcUaServerOptions(port=free_port(), allow_insecure=True)
    access = access_for({"reader": (PASSWORDS["reader"], ["viewer"])})
    sink = OpcUaServerSink(options, PluginContext("northbound", tmp_path / "data", access=access))
    with events() as logged:
        async with sink:
            endpoints = await Client(
                sink.endpoint_url, timeout=5
            ).connect_and_get_server_endpoints()
            modes = {e.SecurityMode for e in endpoints}
            assert ua.MessageSecurityMode.None_ in modes
            # Still a password, and still no anonymous session.
            await refused(StatusCodes.BadIdentityTokenRejected, sink=sink, who=None)
            async with session(sink, None, "reader", PASSWORDS["reader"]) as client:
                assert await client.nodes.server_state.read_value() == ua.ServerState.Running
    warning = next(e for e in logged if e["event"] == "opcua_server.insecure")
    assert warning["log_level"] == "warning"
