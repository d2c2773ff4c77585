"""The ``opcua_server`` sink under attacks that need no credentials, over real loopback sockets.

* Connection floods that never log in (silent, or a Hello and then nothing), from 127.0.0.1 like
  the real client: a trusted client with a valid user still gets in and reads, every time;
  connections that log in are not counted with those that have not.
* Deadlines: a connection that opens no secure channel, or no session, in time is closed.
* A complete oversized Hello in one read is refused, not ACKed.
* The rejected-certificate folder keeps the newest certificates, so an operator always finds a
  new client's certificate there however many a peer sent before.
* The demo configuration under such a flood: the demo user gets in every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import pytest_asyncio
import structlog
from asyncua import Client, ua
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError
from conftest import (
    ClientCert,
    access_for,
    demo_copy,
    free_port,
    make_client_cert,
    running,
    secure_client,
    wait_for,
)
from opcua_flood import ConnectionFlood, hello, read_until_closed

from gateway import PluginContext, build_registry, load_plan
from plugins.opcua_server.options import OpcUaServerOptions
from plugins.opcua_server.sink import OpcUaServerSink

PASSWORD = "reader-secret"
ATTEMPTS = 5
# More than the default number of connections still logging in (64; and than the old cap of
# 20 connections of any kind), so the flood keeps the server's pre-login pool full.
FLOOD = 100


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **options: Any) -> AsyncIterator[OpcUaServerSink]:
    """The sink with one user, ``reader``, and ``options``."""
    config = OpcUaServerOptions(port=free_port(), **options)
    access = access_for({"reader": (PASSWORD, ["viewer"])}, lockout=None)
    context = PluginContext("northbound", tmp_path / "data", access=access)
    async with OpcUaServerSink(config, context) as sink:
        yield sink


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[OpcUaServerSink]:
    async with serving(tmp_path) as sink:
        yield sink


def port_of(sink: OpcUaServerSink) -> int:
    port = urlparse(sink.endpoint_url).port
    assert port is not None
    return port


async def connect_and_read(client: Client) -> ua.ServerState:
    await client.connect()
    try:
        state: ua.ServerState = await client.nodes.server_state.read_value()
        return state
    finally:
        await client.disconnect()


def trusted_client(sink: OpcUaServerSink, folder: Path) -> ClientCert:
    who = make_client_cert(folder, "scada")
    shutil.copy(who.cert, sink.trusted_dir / who.cert.name)
    return who


# --- floods -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["silent", "hello"])
@pytest.mark.asyncio
async def test_a_trusted_client_gets_in_every_time_during_a_flood_that_never_logs_in(
    server: OpcUaServerSink, tmp_path: Path, kind: str
) -> None:
    who = trusted_client(server, tmp_path / "client")
    assert server.own_certificate is not None
    url, cert = server.endpoint_url, server.own_certificate.cert_path
    started = time.monotonic()
    with structlog.testing.capture_logs() as logged:
        async with ConnectionFlood("127.0.0.1", port_of(server), FLOOD, kind) as flood:  # type: ignore[arg-type]
            await flood.all_opened_once()
            for _ in range(ATTEMPTS):
                client = await secure_client(url, who, cert, "reader", PASSWORD)
                assert await connect_and_read(client) == ua.ServerState.Running
            # The flood was at work all along: the server had to close flood connections.
            await wait_for(lambda: flood.closed_by_server >= FLOOD, what="flood connections")
    # Closing them is logged as a tally per reason every 10 s, not once per connection.
    closed = [e for e in logged if e["event"] == "opcua_server.connection_closed"]
    assert closed and all(e["log_level"] == "warning" for e in closed)
    most = 1 + int((time.monotonic() - started) / 10)
    for reason in {e["reason"] for e in closed}:
        assert sum(e["reason"] == reason for e in closed) <= most, reason


@pytest.mark.asyncio
async def test_a_flood_from_another_host_only_evicts_its_own_connections(tmp_path: Path) -> None:
    # A small pool, turned over at once by a flood reopening at once: only which address is
    # evicted from keeps the client in (the client's own steps take longer than 4 arrivals).
    async with serving(tmp_path, max_unauthenticated=4) as sink:
        who = trusted_client(sink, tmp_path / "client")
        assert sink.own_certificate is not None
        url, cert = sink.endpoint_url, sink.own_certificate.cert_path
        async with ConnectionFlood(
            "127.0.0.1", port_of(sink), 20, "hello", 0.0, "127.0.0.2"
        ) as flood:
            await flood.all_opened_once()
            for _ in range(ATTEMPTS):
                client = await secure_client(url, who, cert, "reader", PASSWORD)
                assert await connect_and_read(client) == ua.ServerState.Running
            await wait_for(lambda: flood.closed_by_server >= 20, what="flood connections closed")


@pytest.mark.asyncio
async def test_logged_in_clients_and_those_logging_in_are_bounded_apart(tmp_path: Path) -> None:
    async with serving(tmp_path, max_clients=2, max_unauthenticated=4) as sink:
        who = trusted_client(sink, tmp_path / "client")
        assert sink.own_certificate is not None
        url, cert = sink.endpoint_url, sink.own_certificate.cert_path

        def client() -> Any:
            return secure_client(url, who, cert, "reader", PASSWORD)

        first, second, third = await client(), await client(), await client()
        await first.connect()
        await second.connect()
        try:
            # A flood fills the pre-login pool: the sessions are not in it and go on.
            async with ConnectionFlood("127.0.0.1", port_of(sink), 8) as flood:
                await flood.all_opened_once()
                await wait_for(lambda: flood.closed_by_server >= 4, what="flood evicted")
                assert await first.nodes.server_state.read_value() == ua.ServerState.Running
                # max_clients sessions: a third login is refused, the sessions go on.
                with pytest.raises(UaStatusCodeError) as excinfo:
                    await third.connect()
                await third.disconnect()
                assert excinfo.value.code == StatusCodes.BadTooManySessions
                assert await second.nodes.server_state.read_value() == ua.ServerState.Running
                # One logs out: its place is free for the next login, flood or not.
                await first.disconnect()
                assert await connect_and_read(await client()) == ua.ServerState.Running
        finally:
            await first.disconnect()
            await second.disconnect()


@pytest.mark.asyncio
async def test_a_connection_that_does_not_log_in_in_time_is_closed(tmp_path: Path) -> None:
    options = {"handshake_timeout_s": 0.5, "activation_timeout_s": 1.0}
    async with serving(tmp_path, **options) as sink:
        who = trusted_client(sink, tmp_path / "client")
        assert sink.own_certificate is not None
        with structlog.testing.capture_logs() as logged:
            # A Hello and then nothing: no secure channel within handshake_timeout_s.
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sink))
            try:
                writer.write(hello(sink.endpoint_url))
                async with asyncio.timeout(5):
                    assert (await read_until_closed(reader))[:3] == b"ACK"
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            # A secure channel with a trusted certificate, and then no session.
            client = await secure_client(
                sink.endpoint_url, who, sink.own_certificate.cert_path, "reader", PASSWORD
            )
            await client.connect_socket()
            try:
                await client.send_hello()
                await client.open_secure_channel()
                await wait_for(
                    lambda: client.uaclient.protocol.is_closed, within=5, what="closed by server"
                )
            finally:
                client.disconnect_socket()
    reasons = [e["reason"] for e in logged if e["event"] == "opcua_server.connection_closed"]
    assert reasons == ["no secure channel within 0.5 s", "no activated session within 1.0 s"]


# --- oversized Hello ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_complete_oversized_hello_in_one_read_is_refused(
    server: OpcUaServerSink,
) -> None:
    message = hello("opc.tcp://127.0.0.1/" + "x" * 100_000)
    assert len(message) > 100_000
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    try:
        writer.write(message)
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await read_until_closed(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert answer[:4] != b"ACKF", "an oversized Hello was acknowledged"
    if answer:  # the error may be lost to the reset of a close with unread input
        assert answer[:4] == b"ERRF", answer[:16]
        code = int.from_bytes(answer[8:12], "little")
        assert code == StatusCodes.BadTcpMessageTooLarge, ua.StatusCode(code).name


# --- rejected certificates ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_rejected_folder_keeps_the_newest_certificates(
    server: OpcUaServerSink, tmp_path: Path
) -> None:
    # A peer has already filled the folder to its cap with certificates of its own.
    flooded = []
    for index in range(100):
        path = server.rejected_dir / f"flood_{index:03d}.der"
        path.write_bytes(b"not even a certificate %d" % index)
        os.utime(path, ns=(index * 1_000_000_000, index * 1_000_000_000))
        flooded.append(path)
    newcomer = make_client_cert(tmp_path / "client", "newcomer")
    assert server.own_certificate is not None
    client = await secure_client(
        server.endpoint_url, newcomer, server.own_certificate.cert_path, "reader", PASSWORD
    )
    with pytest.raises(UaStatusCodeError) as excinfo:
        await client.connect()
    await client.disconnect()
    assert excinfo.value.code == StatusCodes.BadSecurityChecksFailed
    kept = list(server.rejected_dir.iterdir())
    assert newcomer.der in [path.read_bytes() for path in kept]
    assert len(kept) == 100
    assert not flooded[0].exists() and flooded[-1].exists()  # the oldest made room


# --- the demo -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_demo_user_gets_in_every_time_during_a_flood(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the demo's paths (data/...) are relative to the working dir
    config, _ = demo_copy(tmp_path)
    plan = load_plan(config, build_registry())
    (sink_config,) = [s for s in plan.config.sinks if s.type == "opcua_server"]
    port = sink_config.options["port"]
    url = f"opc.tcp://127.0.0.1:{port}/pat-gateway"
    pki = tmp_path / "data" / "opcua" / "pki"
    who = make_client_cert(tmp_path / "client", "demo-client")
    async with running(plan):
        (pki / "trusted").mkdir(parents=True, exist_ok=True)
        shutil.copy(who.cert, pki / "trusted" / who.cert.name)
        server_cert = pki / "own" / "cert.der"
        async with ConnectionFlood("127.0.0.1", port, FLOOD) as flood:
            await flood.all_opened_once()
            for _ in range(ATTEMPTS):
                client = await secure_client(url, who, server_cert, "demo", "demo-password")
                assert await connect_and_read(client) == ua.ServerState.Running
            await wait_for(lambda: flood.closed_by_server >= FLOOD, what="flood connections closed")
