"""The ``opcua`` driver: its options and pure helpers, then the driver against a small asyncua
server started inside each test — an independent device that shares no code with the driver —
alone and inside the real runtime."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
from collections import defaultdict
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from asyncua import ua
from asyncua.common.node import Node
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from conftest import free_port, wait_for, write_config
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError
from structlog.testing import capture_logs

import plugins.opcua.driver as opcua_driver
import plugins.opcua.plugin as opcua_plugin
from gateway import (
    InstrumentError,
    PluginContext,
    PluginKind,
    Quality,
    Registry,
    WriteRefusedError,
    build_registry,
    load_plan,
    validation_context,
)
from gateway.runtime import Gateway
from gateway.store import SampleStore
from plugins.opcua.driver import OpcUaDriver
from plugins.opcua.nodes import NodeRef, parse_node_ref
from plugins.opcua.options import OpcUaOptions
from plugins.opcua.values import coerce_for_write, reading, status_name, timestamp_ns

URI = "urn:pat-gateway:test:controller"
CEFACT = "http://www.opcfoundation.org/UA/units/un/cefact"
# UNECE common codes CEL, RPM, KEL and MBR packed into Int32 unit ids
CEL, RPM, KEL, MBR = 4408652, 5394509, 4932940, 5063250
T = TypeVar("T")


# -- the device --------------------------------------------------------------------------------
@dataclasses.dataclass
class Published:
    value: Any
    source_ts: int | None
    quality: Quality
    reason: str | None


class RecordingIO:
    """The runtime's side of the driver boundary, recording what the driver publishes."""

    instrument_id = "ctl"

    def __init__(self) -> None:
        self.published: dict[str, list[Published]] = defaultdict(list)
        self.connections = 0

    def output(self, channel: str) -> Any:
        record = self.published[channel].append

        class _Output:
            def publish(
                self,
                value: Any,
                source_ts: int | None = None,
                quality: Quality = Quality.GOOD,
                reason: str | None = None,
            ) -> None:
                record(Published(value, source_ts, quality, reason))

        return _Output()

    def connected(self) -> None:
        self.connections += 1

    def last(self, channel: str) -> Published | None:
        samples = self.published.get(channel)
        return samples[-1] if samples else None


class Controller:
    """A small OPC UA server shaped like a bioreactor controller, on its own thread and event
    loop — as separate from the driver as another process, but quick to build and inspect.

    ``Objects/BioreactorController`` holds ``Temperature/PV`` (Double, °C), ``pH/PV`` (Double,
    unit id -1 with display name "pH"), ``Agitation/SP`` (Double, r/min, writable), ``Counter``
    (Int32, writable, no EngineeringUnits), ``Label`` (String) and ``Profile`` (Double[]); string
    node ids are the dotted path. ``padding`` registers namespaces before ours, so its index
    differs from one start to the next.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/ctl"
        self.server: Server | None = None
        self.nodes: dict[str, Node] = {}
        self.namespace_index = 0
        self.created_sessions = 0
        """CreateSession requests the server has answered, over its whole life."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, name="test.opcua.controller", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        loop.run_forever()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the server's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def on_server(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on the server's loop, from the test's."""
        return await asyncio.wrap_future(self.call(coro))

    def close(self) -> None:
        self.call(self._stop()).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def start(self, **kwargs: Any) -> None:
        await self.on_server(self._start(**kwargs))

    async def stop(self) -> None:
        await self.on_server(self._stop())

    async def set(self, name: str, dv: ua.DataValue) -> None:
        """Write a data value (with its status and timestamps) as the device would."""
        assert self.server is not None
        await self.on_server(self.server.write_attribute_value(self.nodes[name].nodeid, dv))

    async def add_pressure(self) -> None:
        """Add ``BioreactorController/Pressure/PV`` (Double, mbar), as a controller whose
        configuration gains a loop."""
        assert self.server is not None
        idx, server = self.namespace_index, self.server

        async def add() -> None:
            ctl = server.get_node(ua.NodeId("BioreactorController", idx))
            loop = await ctl.add_object(
                ua.NodeId("BioreactorController.Pressure", idx), ua.QualifiedName("Pressure", idx)
            )
            pv = await loop.add_variable(
                ua.NodeId("BioreactorController.Pressure.PV", idx), ua.QualifiedName("PV", idx),
                ua.Variant(1013.25, ua.VariantType.Double),
            )  # fmt: skip
            await pv.add_property(
                ua.NodeId("BioreactorController.Pressure.PV.EngineeringUnits", idx),
                ua.QualifiedName("EngineeringUnits", 0),
                _eu(CEFACT, MBR, "mbar"),
            )

        await self.on_server(add())

    async def set_units(self, name: str, eu: ua.EUInformation) -> None:
        """Change the EngineeringUnits a node reports, as a reconfigured controller would."""
        assert self.server is not None
        node_id = ua.NodeId(f"BioreactorController.{name}.EngineeringUnits", self.namespace_index)
        await self.on_server(
            self.server.write_attribute_value(node_id, ua.DataValue(ua.Variant(eu)))
        )

    async def value(self, name: str) -> Any:
        return await self.on_server(self.nodes[name].read_value())

    def sessions(self) -> int:
        """Sessions the server holds (created and not closed)."""
        server = self.server
        return len(server.iserver._external_sessions) if server is not None else 0

    async def _start(
        self,
        *,
        padding: int = 0,
        users: dict[str, str] | None = None,
        identity: tuple[Path, Path] | None = None,
    ) -> None:
        server = Server(user_manager=_Users(users) if users is not None else None)
        await server.init()
        register = server.iserver.register_external_session

        def count_session(session: Any) -> None:  # called once per CreateSession
            self.created_sessions += 1
            register(session)

        server.iserver.register_external_session = count_session  # type: ignore[method-assign]
        server.set_endpoint(self.url)
        if identity is not None:  # secure endpoints only, with this certificate and key
            server.set_security_policy([
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
                ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
            ])  # fmt: skip
            await server.load_certificate(str(identity[0]))
            await server.load_private_key(str(identity[1]))
        for i in range(padding):
            await server.register_namespace(f"urn:pat-gateway:test:padding:{i}")
        idx = self.namespace_index = await server.register_namespace(URI)
        ctl = await server.nodes.objects.add_object(
            ua.NodeId("BioreactorController", idx), ua.QualifiedName("BioreactorController", idx)
        )

        async def variable(
            parent: Node, path: str, value: Any, vtype: ua.VariantType, eu: Any = None
        ) -> Node:
            name = path.rsplit(".", 1)[-1]
            node = await parent.add_variable(
                ua.NodeId(path, idx), ua.QualifiedName(name, idx), ua.Variant(value, vtype)
            )
            if eu is not None:
                await node.add_property(
                    ua.NodeId(f"{path}.EngineeringUnits", idx),
                    ua.QualifiedName("EngineeringUnits", 0),
                    eu,
                )
            self.nodes[path.removeprefix("BioreactorController.")] = node
            return node

        async def loop(name: str) -> Node:
            return await ctl.add_object(
                ua.NodeId(f"BioreactorController.{name}", idx), ua.QualifiedName(name, idx)
            )

        temperature, ph, agitation = (
            await loop("Temperature"),
            await loop("pH"),
            await loop("Agitation"),
        )
        await variable(
            temperature, "BioreactorController.Temperature.PV", 37.0, ua.VariantType.Double,
            _eu(CEFACT, CEL, "°C"),
        )  # fmt: skip
        await variable(
            ph, "BioreactorController.pH.PV", 7.0, ua.VariantType.Double, _eu("", -1, "pH")
        )
        sp = await variable(
            agitation, "BioreactorController.Agitation.SP", 120.0, ua.VariantType.Double,
            _eu(CEFACT, RPM, "r/min"),
        )  # fmt: skip
        await sp.set_writable()
        counter = await variable(ctl, "BioreactorController.Counter", 0, ua.VariantType.Int32)
        await counter.set_writable()
        await variable(ctl, "BioreactorController.Label", "batch 42", ua.VariantType.String)
        await variable(ctl, "BioreactorController.Profile", [1.0, 2.5], ua.VariantType.Double)
        await server.start()
        self.server = server

    async def _stop(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        await server.stop()
        # A real server's sessions end with its process; an in-process asyncua server keeps a
        # client's session (waiting for it to come back) after stop(): end them like a restart.
        for session in list(server.iserver._external_sessions.values()):
            await session.close_session(True)


class _Users(UserManager):
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None,
        certificate: Any = None,
    ) -> User | None:  # fmt: skip
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User)
        return None


def _eu(namespace: str, unit_id: int, display: str) -> ua.EUInformation:
    return ua.EUInformation(
        NamespaceUri=namespace, UnitId=unit_id, DisplayName=ua.LocalizedText(display)
    )


def node_specs(**overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The test's nodes, written every way the options allow; an override replaces (or adds)
    one by name, ``{}`` leaves it out."""
    specs = {
        "temperature": {"node": "ctl:BioreactorController.Temperature.PV", "unit": "Cel"},
        "ph": {"node": f"nsu={URI};s=BioreactorController.pH.PV", "unit": "[pH]"},
        "agitation_sp": {
            "browse_path": ["ctl:BioreactorController", "ctl:Agitation", "ctl:SP"],
            "unit": "{rev}/min",
            "writable": True,
        },
        "counter": {"node": "ctl:BioreactorController.Counter", "unit": "1", "writable": True},
        "label": {"node": "ctl:s=BioreactorController.Label", "unit": "1"},
        "profile": {"node": "ctl:BioreactorController.Profile", "unit": "Cel"},
    }
    for name, spec in overrides.items():
        specs[name] = spec
    return [{"name": name, **spec} for name, spec in specs.items() if spec]


def options(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": url,
        "namespaces": {"ctl": URI},
        "timeout_s": 5.0,  # generous: a loaded CI machine answers slowly
        "sampling_interval_ms": 50,
        "publishing_interval_ms": 50,
        "nodes": node_specs(),
        **extra,
    }


def make_driver(url: str, tmp_path: Path, **extra: Any) -> OpcUaDriver:
    return OpcUaDriver(
        OpcUaOptions.model_validate(options(url, **extra)), PluginContext("ctl", tmp_path)
    )


def started_controller() -> Iterator[Controller]:
    device = Controller()
    device.call(device._start()).result(timeout=60)
    try:
        yield device
    finally:
        device.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[Controller]:
    """One server for the tests that leave it as they found it (building one takes seconds)."""
    yield from started_controller()


@pytest.fixture
def controller() -> Iterator[Controller]:
    """A server of the test's own, to stop, restart or break."""
    yield from started_controller()


class Session:
    """One ``run`` of a driver in the background, recording what it publishes."""

    def __init__(self, driver: OpcUaDriver) -> None:
        self.driver = driver
        self.io = RecordingIO()
        self.task = asyncio.create_task(driver.run(self.io), name="test.opcua.run")

    async def ended(self, within: float = 5.0) -> BaseException | None:
        """Wait for ``run`` to end on its own; return what it raised."""
        await wait_for(self.task.done, within=within, what="the session to end")
        return self.task.exception()

    async def stop(self) -> None:
        if not self.task.done():
            self.task.cancel()
        await asyncio.wait({self.task})


async def session(driver: OpcUaDriver) -> Session:
    """A running session that has published the first value of every node."""
    running = Session(driver)
    names = [n.name for n in driver.options.nodes]
    try:
        await wait_for(
            lambda: all(running.io.published.get(n) for n in names) or running.task.done(),
            what="a first value of every node",
        )
    except BaseException:
        await running.stop()
        raise
    if running.task.done():
        raise AssertionError(f"session ended: {running.task.exception()!r}")
    return running


def at(seconds: float) -> datetime:
    return datetime(2026, 11, 26, 9, 0, tzinfo=UTC) + timedelta(seconds=seconds)


def ns(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


# -- options and pure helpers --------------------------------------------------------------------
def test_options_accept_aliases_uris_and_browse_paths() -> None:
    o = OpcUaOptions.model_validate(options("opc.tcp://10.0.0.5/dcu"))
    assert o.url == "opc.tcp://10.0.0.5:4840/dcu"  # IANA's port when none is given
    assert [n.name for n in o.nodes][:3] == ["temperature", "ph", "agitation_sp"]
    defaults = OpcUaOptions.model_validate({"url": "opc.tcp://h:4840", "nodes": [
        {"name": "t", "node": "i=2258", "unit": "1"}]})  # fmt: skip
    assert (defaults.security, defaults.timeout_s) == ("none", 5.0)
    assert (defaults.sampling_interval_ms, defaults.publishing_interval_ms) == (250.0, 250.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "http://h:4840"}, "expected opc.tcp://host:port"),
        ({"url": "opc.tcp://user:pw@h:4840"}, "credentials do not belong in the URL"),
        ({"nodes": [{"name": "t", "node": "ns=2;s=T", "unit": "Cel"}]}, "indexes can change"),
        ({"nodes": [{"name": "t", "node": "dcu:T", "unit": "Cel"}]}, "alias 'dcu' is not declared"),
        ({"nodes": [{"name": "t", "node": "ctl:T", "unit": "degC"}]}, "unknown UCUM unit"),
        ({"nodes": [{"name": "t", "node": "ctl:T"}]}, "unit"),
        (
            {"nodes": [{"name": "t", "node": "ctl:T", "browse_path": ["ctl:T"], "unit": "1"}]},
            "exactly one of node and browse_path",
        ),
        ({"nodes": [{"name": "t", "browse_path": ["T"], "unit": "1"}]}, "write alias:BrowseName"),
        (
            {"nodes": [{"name": "t", "node": "ctl:T", "unit": "1"}] * 2},
            "node names must be unique",
        ),
        ({"nodes": [{"name": "t", "node": "ctl:i=x", "unit": "1"}]}, "numeric identifier"),
        ({"nodes": [{"name": "t", "node": "g=nope", "unit": "1"}]}, "not a GUID"),
        ({"nodes": []}, "at least 1"),
        ({"namespaces": {"1st": URI}}, "alias '1st'"),
        ({"security": "Basic256Sha256"}, "needs certificate and private_key"),
        ({"certificate": "client.der"}, "only used with a security policy"),
        ({"security": "Basic128Rsa15"}, "Basic256Sha256"),  # deprecated (SHA-1): not offered
        ({"username": "operator"}, "give username and password together"),
        ({"username": "operator", "password": "secret"}, "secrets come from the environment"),
        ({"publishing_interval_ms": 0}, "greater than 0"),
        ({"poll_interval_s": 1}, "Extra inputs are not permitted"),
    ],
)
def test_options_refuse_with_a_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        OpcUaOptions.model_validate({**options("opc.tcp://h:4840"), **change})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ctl:Reactor.T", NodeRef("s", "Reactor.T", alias="ctl")),
        ("ctl:s=i=odd", NodeRef("s", "i=odd", alias="ctl")),
        ("ctl:i=0042", NodeRef("i", "42", alias="ctl")),
        ("ctl:A:B;C", NodeRef("s", "A:B;C", alias="ctl")),
        ("nsu=urn:a:b;s=X;Y", NodeRef("s", "X;Y", uri="urn:a:b")),
        ("i=2258", NodeRef("i", "2258")),
        ("ns=0;i=2258", NodeRef("i", "2258")),
        ("b=AAE=", NodeRef("b", "AAE=")),
        (
            "g=09087E75-8E5E-499B-954F-F2A9603DB28A",
            NodeRef("g", "09087e75-8e5e-499b-954f-f2a9603db28a"),
        ),
    ],
)
def test_node_references(text: str, expected: NodeRef) -> None:
    assert dataclasses.replace(parse_node_ref(text, {"ctl"}), text="") == expected


def test_reading_keeps_the_source_timestamp_and_names_the_status() -> None:
    def dv(status: int = 0, **kw: Any) -> ua.DataValue:
        return ua.DataValue(ua.Variant(1.5, ua.VariantType.Double), ua.StatusCode(status), **kw)

    source, server = at(0.1234567), at(1)
    assert reading(dv(SourceTimestamp=source, ServerTimestamp=server)) == (
        1.5, ns(source), Quality.GOOD, None,
    )  # fmt: skip
    assert reading(dv(ServerTimestamp=server))[1] == ns(server)  # no source stamp: the server's
    null = datetime(1601, 1, 1, tzinfo=UTC)  # DateTime 0 on the wire
    assert reading(dv(SourceTimestamp=null, ServerTimestamp=server))[1] == ns(server)
    assert reading(dv())[1] is None  # neither: the gateway's receive time
    bad = reading(dv(ua.StatusCodes.BadSensorFailure))
    assert bad[2:] == (Quality.BAD, "BadSensorFailure")
    # Info bits (here "limit high") do not hide the code; severity 0b11 is bad too.
    assert reading(dv(ua.StatusCodes.UncertainLastUsableValue | 0x200))[2:] == (
        Quality.UNCERTAIN, "UncertainLastUsableValue",
    )  # fmt: skip
    assert status_name(0xC0AB0000) == "Bad (0xC0AB0000)"
    assert reading(ua.DataValue(ua.Variant(None)))[2:] == (
        Quality.BAD,
        "Good status without a value",
    )
    assert timestamp_ns(datetime(2026, 1, 1)) == ns(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("value", "vtype", "expected"),
    [
        (7.0, ua.VariantType.Int32, 7),
        (7.5, ua.VariantType.Int32, "not a whole number"),
        (-1, ua.VariantType.UInt16, "out of range"),
        (1, ua.VariantType.Boolean, True),
        (2, ua.VariantType.Boolean, "0 or 1"),
        (3, ua.VariantType.Double, 3.0),
        (1e39, ua.VariantType.Float, "out of range"),
        (float("nan"), ua.VariantType.Double, "finite"),
        (1.0, ua.VariantType.String, "not numeric"),
    ],
)
def test_coerce_for_write(value: float, vtype: ua.VariantType, expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            coerce_for_write(value, vtype)
    else:
        result = coerce_for_write(value, vtype)
        assert result == expected and type(result) is type(expected)


def test_channels_are_known_without_io(tmp_path: Path) -> None:
    driver = make_driver("opc.tcp://192.0.2.1:4840", tmp_path)  # nothing listens there
    channels = {c.name: c for c in driver.channels()}
    assert channels["temperature"].unit == "Cel" and not channels["temperature"].writable
    assert channels["agitation_sp"].writable
    assert channels["ph"].description == f"OPC UA node nsu={URI};s=BioreactorController.pH.PV"
    assert driver.sessions == 0


def test_registered_factory_builds_the_driver(tmp_path: Path) -> None:
    registry = Registry()
    opcua_plugin.pat_gateway_register_drivers(registry)
    registration = registry.get(PluginKind.DRIVER, "opcua")
    assert registration is not None
    assert registration.options_model is OpcUaOptions
    built = registration.factory(
        OpcUaOptions.model_validate(options("opc.tcp://127.0.0.1:4840")),
        PluginContext("ctl", tmp_path),
    )
    assert type(built) is OpcUaDriver


# -- against a server ------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_values_flow_with_units_timestamps_and_quality(
    shared: Controller, tmp_path: Path
) -> None:
    running = await session(make_driver(shared.url, tmp_path))
    try:
        io = running.io
        assert io.connections == 1 and running.driver.sessions == 1
        first = io.last("temperature")
        assert first is not None and (first.value, first.quality) == (37.0, Quality.GOOD)
        assert isinstance(first.source_ts, int) and abs(first.source_ts - time.time_ns()) < 60e9
        assert io.last("ph").value == 7.0  # type: ignore[union-attr]
        assert io.last("agitation_sp").value == 120.0  # type: ignore[union-attr]
        counter = io.last("counter")
        assert counter is not None and counter.value == 0 and type(counter.value) is int
        assert io.last("label").value == "batch 42"  # type: ignore[union-attr]
        assert io.last("profile").value == [1.0, 2.5]  # type: ignore[union-attr]

        stamp = at(0.5)  # a source timestamp from the past is kept as received
        await shared.set("Temperature.PV", ua.DataValue(
            ua.Variant(37.25, ua.VariantType.Double), SourceTimestamp=stamp,
            ServerTimestamp=at(0.6),
        ))  # fmt: skip
        await wait_for(lambda: io.last("temperature").value == 37.25)  # type: ignore[union-attr]
        assert io.last("temperature") == Published(37.25, ns(stamp), Quality.GOOD, None)

        await shared.set("Temperature.PV", ua.DataValue(
            ua.Variant(None), ua.StatusCode(ua.StatusCodes.BadSensorFailure), SourceTimestamp=at(1),
        ))  # fmt: skip
        await wait_for(lambda: io.last("temperature").quality is Quality.BAD)  # type: ignore[union-attr]
        assert io.last("temperature") == Published(None, ns(at(1)), Quality.BAD, "BadSensorFailure")

        await shared.set("pH.PV", ua.DataValue(
            ua.Variant(7.1, ua.VariantType.Double),
            ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue), SourceTimestamp=at(2),
        ))  # fmt: skip
        await wait_for(lambda: io.last("ph").quality is Quality.UNCERTAIN)  # type: ignore[union-attr]
        assert io.last("ph") == Published(
            7.1, ns(at(2)), Quality.UNCERTAIN, "UncertainLastUsableValue"
        )
        assert io.connections == 1 and not running.task.done()
    finally:
        await running.stop()
        for name, value in (("Temperature.PV", 37.0), ("pH.PV", 7.0)):
            await shared.set(name, ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
    assert running.task.cancelled()
    # The session was closed on the way out, not left to time out on the server.
    await wait_for(lambda: shared.sessions() == 0, what="the server to see the session closed")


@pytest.mark.asyncio
async def test_nodes_that_cannot_be_used_are_bad_alone_and_named(
    shared: Controller, tmp_path: Path
) -> None:
    driver = make_driver(shared.url, tmp_path, nodes=node_specs(
        missing={"node": "ctl:BioreactorController.Pressure.PV", "unit": "mbar"},
        lost={"browse_path": ["ctl:BioreactorController", "ctl:Pressure"], "unit": "mbar"},
        folder={"node": "ctl:BioreactorController.Temperature", "unit": "1"},
        elsewhere={"node": "nsu=urn:not-on-this-server;s=X", "unit": "1", "writable": True},
    ))  # fmt: skip
    with capture_logs() as logs:
        running = await session(driver)
    try:
        io = running.io
        assert io.last("missing") == Published(None, None, Quality.BAD, "BadNodeIdUnknown")
        assert io.last("lost") == Published(None, None, Quality.BAD, "BadNoMatch")
        assert io.last("folder") == Published(
            None, None, Quality.BAD, "Object node, not a variable"
        )
        assert io.last("elsewhere") == Published(
            None, None, Quality.BAD, "the server has no namespace urn:not-on-this-server"
        )
        for name in ("temperature", "ph", "agitation_sp", "counter", "label", "profile"):
            assert io.last(name).quality is Quality.GOOD, name  # type: ignore[union-attr]
        warned = {e["node"]: (e["where"], e["log_level"]) for e in logs
                  if e["event"] == "opcua.node_unusable"}  # fmt: skip
        assert warned == {
            "missing": ("ctl:BioreactorController.Pressure.PV", "warning"),
            "lost": ("ctl:BioreactorController/ctl:Pressure", "warning"),
            "folder": ("ctl:BioreactorController.Temperature", "warning"),
            "elsewhere": ("nsu=urn:not-on-this-server;s=X", "warning"),
        }
        with pytest.raises(InstrumentError, match="elsewhere failed: node not usable: the server"):
            await driver.write("elsewhere", 1.0)
        await driver.write("counter", 3)  # the usable writable nodes take writes
        assert driver.sessions == 1 and io.connections == 1 and not running.task.done()
    finally:
        await running.stop()
        await shared.set("Counter", ua.DataValue(ua.Variant(0, ua.VariantType.Int32)))
    await wait_for(lambda: shared.sessions() == 0, what="the session to be closed")


@pytest.mark.asyncio
async def test_a_missing_node_is_looked_for_again_in_the_same_session_and_flows_once_it_appears(
    controller: Controller, tmp_path: Path
) -> None:
    driver = make_driver(controller.url, tmp_path, recheck_interval_s=0.1, nodes=node_specs(
        pressure={"node": "ctl:BioreactorController.Pressure.PV", "unit": "mbar"},
        pressure_path={
            "browse_path": ["ctl:BioreactorController", "ctl:Pressure", "ctl:PV"], "unit": "mbar",
        },
    ))  # fmt: skip
    with capture_logs() as logs:
        running = await session(driver)
        try:
            io = running.io
            assert io.last("pressure") == Published(None, None, Quality.BAD, "BadNodeIdUnknown")
            assert io.last("pressure_path") == Published(None, None, Quality.BAD, "BadNoMatch")
            # Rechecks that find them still missing publish and log nothing new, and keep the
            # session: no reconnect storm.
            await wait_for(lambda: driver.rechecks >= 5, what="rechecks")
            await controller.add_pressure()
            for name in ("pressure", "pressure_path"):
                await wait_for(
                    lambda n=name: io.last(n).quality is Quality.GOOD,  # type: ignore[misc]
                    what=f"{name} once it exists",
                )
                assert [p.quality for p in io.published[name]][:2] == [Quality.BAD, Quality.GOOD]
                assert io.last(name).value == 1013.25  # type: ignore[union-attr]
            assert io.last("temperature").quality is Quality.GOOD  # type: ignore[union-attr]
            assert driver.sessions == 1 and controller.created_sessions == 1
            assert io.connections == 1 and not running.task.done()
        finally:
            await running.stop()
    events = [(e["event"], e["node"]) for e in logs if e["event"].startswith("opcua.node_")]
    assert sorted(events) == [
        ("opcua.node_unusable", "pressure"),
        ("opcua.node_unusable", "pressure_path"),
        ("opcua.node_usable", "pressure"),
        ("opcua.node_usable", "pressure_path"),
    ]


@pytest.mark.asyncio
async def test_a_unit_mismatch_makes_that_node_bad_and_the_others_flow(
    controller: Controller, tmp_path: Path
) -> None:
    driver = make_driver(controller.url, tmp_path, recheck_interval_s=0.1, nodes=node_specs(
        temperature={"node": "ctl:BioreactorController.Temperature.PV", "unit": "K"},
    ))  # fmt: skip
    reason = "unit mismatch: node temperature reports °C (Cel), configured K"
    with capture_logs() as logs:
        running = await session(driver)
        try:
            io = running.io
            assert io.last("temperature") == Published(None, None, Quality.BAD, reason)
            for name in ("ph", "agitation_sp", "counter", "label", "profile"):
                assert io.last(name).quality is Quality.GOOD, name  # type: ignore[union-attr]
            await wait_for(lambda: driver.rechecks >= 5, what="rechecks")
            # The controller's configuration is corrected to kelvin: the node flows, same session.
            await controller.set_units("Temperature.PV", _eu(CEFACT, KEL, "K"))
            await wait_for(
                lambda: io.last("temperature").quality is Quality.GOOD,  # type: ignore[union-attr]
                what="temperature once the units agree",
            )
            assert io.published["temperature"][0].reason == reason
            assert driver.sessions == 1 and controller.created_sessions == 1
            assert not running.task.done()
        finally:
            await running.stop()
    errors = [(e["event"], e["reason"]) for e in logs if e["log_level"] == "error"]
    assert errors == [("opcua.unit_mismatch", reason)]


@pytest.mark.asyncio
async def test_same_unit_under_another_code_is_accepted_and_unknown_units_warned_once(
    shared: Controller, tmp_path: Path
) -> None:
    # The server says RPM ({rev}/min); /min is the same unit. Counter, Label and Profile have no
    # EngineeringUnits: their configured units are used, with one warning each per driver.
    driver = make_driver(shared.url, tmp_path, nodes=node_specs(
        agitation_sp={"node": "ctl:BioreactorController.Agitation.SP", "unit": "/min"},
    ))  # fmt: skip
    with capture_logs() as logs:
        for _ in range(2):
            running = await session(driver)
            await running.stop()
    warned = [e["node"] for e in logs if e["event"] == "opcua.unit_unverified"]
    assert sorted(warned) == ["counter", "label", "profile"]
    assert driver.sessions == 2
    assert [e["sessions"] for e in logs if e["event"] == "opcua.session_created"] == [1, 2]


@pytest.mark.asyncio
async def test_writes_only_to_writable_nodes_as_the_node_type(
    shared: Controller, tmp_path: Path
) -> None:
    driver = make_driver(shared.url, tmp_path)
    with pytest.raises(InstrumentError, match="not connected"):
        await driver.write("agitation_sp", 150.0)
    running = await session(driver)
    try:
        with capture_logs() as logs:
            await driver.write("agitation_sp", 150)
            await driver.write("counter", 7.0)
            with pytest.raises(WriteRefusedError, match="'temperature' is not writable"):
                await driver.write("temperature", 30.0)
            with pytest.raises(WriteRefusedError, match="'nope' is not writable"):
                await driver.write("nope", 1.0)
            with pytest.raises(WriteRefusedError, match="not a whole number"):
                await driver.write("counter", 7.5)
        assert await shared.value("Agitation.SP") == 150.0
        assert await shared.value("Counter") == 7  # sent as Int32, not refused as Double
        await wait_for(lambda: running.io.last("counter").value == 7)  # type: ignore[union-attr]
        events = [(e["event"], e["channel"]) for e in logs]
        assert events == [
            ("opcua.write", "agitation_sp"),
            ("opcua.write", "counter"),
            ("opcua.write_refused", "temperature"),
            ("opcua.write_refused", "nope"),
            ("opcua.write_refused", "counter"),
        ]
        assert logs[0]["instrument"] == "ctl" and logs[0]["value"] == 150
        assert logs[0]["node"] == "ctl:BioreactorController/ctl:Agitation/ctl:SP"
        # A server that refuses: the write is refused, and says how.
        await shared.on_server(shared.nodes["Counter"].set_read_only())
        with (
            capture_logs() as logs,
            pytest.raises(
                WriteRefusedError, match=r"refused by the server: Bad(UserAccessDenied|NotWritable)"
            ),
        ):
            await driver.write("counter", 8)
        assert [e["event"] for e in logs] == ["opcua.write_refused"]
    finally:
        await running.stop()
        await shared.on_server(shared.nodes["Counter"].set_writable())
        await shared.set("Counter", ua.DataValue(ua.Variant(0, ua.VariantType.Int32)))
        await shared.set("Agitation.SP", ua.DataValue(ua.Variant(120.0, ua.VariantType.Double)))
    with pytest.raises(InstrumentError, match="not connected"):
        await driver.write("agitation_sp", 150.0)


@pytest.mark.asyncio
async def test_a_stopped_server_ends_the_session_and_nothing_reconnects_on_its_own(
    controller: Controller, tmp_path: Path
) -> None:
    running = await session(make_driver(controller.url, tmp_path))
    try:
        started = time.monotonic()
        await controller.stop()
        error = await running.ended(within=3.0)
        assert isinstance(error, InstrumentError), error
        assert "connection" in str(error) or "BadShutdown" in str(error), str(error)
        assert time.monotonic() - started < 3.0
        # The server comes back: nobody but the runtime may open a session there.
        await controller.start()
        await asyncio.sleep(1.5)
        assert controller.sessions() == 0
        assert running.driver.sessions == 1
    finally:
        await running.stop()


@pytest.mark.asyncio
async def test_no_server_is_an_instrument_error(tmp_path: Path) -> None:
    driver = make_driver(f"opc.tcp://127.0.0.1:{free_port()}", tmp_path)
    with pytest.raises(InstrumentError, match=r"^connect to opc\.tcp://127\.0\.0\.1:\d+: "):
        await driver.run(RecordingIO())
    assert driver.sessions == 0


@pytest.mark.asyncio
async def test_a_server_that_falls_silent_is_noticed(shared: Controller, tmp_path: Path) -> None:
    """A link that stops carrying anything (a pulled cable, a hung server) shows up as silence,
    not as a closed socket: the keep-alive watch or the health probe must end the session."""
    async with FreezableProxy(shared.port) as proxy:
        driver = make_driver(f"opc.tcp://127.0.0.1:{proxy.port}/ctl", tmp_path, timeout_s=0.5)
        running = await session(driver)
        try:
            proxy.freeze()
            started = time.monotonic()
            error = await running.ended(within=5.0)
            assert isinstance(error, InstrumentError), error
            assert time.monotonic() - started < 4.0
        finally:
            await running.stop()


@pytest.mark.asyncio
async def test_a_frozen_server_is_given_up_without_waiting_for_a_close_it_cannot_answer(
    controller: Controller, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose process stops with its connections open cannot answer CloseSession: once
    the session is lost over a dead link, the driver does not wait for that answer. An orderly
    close is allowed an hour here, so only the request's own timeout (5 s) would end a wait."""
    monkeypatch.setattr(opcua_driver, "CLOSE_TIMEOUT_S", 3600.0)
    async with FreezableProxy(controller.port) as proxy:
        driver = make_driver(f"opc.tcp://127.0.0.1:{proxy.port}/ctl", tmp_path, timeout_s=5.0)
        with capture_logs() as logs:
            running = await session(driver)
            try:
                proxy.freeze()
                lost = await wait_for(
                    lambda: [e for e in logs if e["event"] == "opcua.session_lost"],
                    within=30.0,
                    what="the loss to be seen",
                )
                assert lost[0]["link_dead"] is True
                await wait_for(running.task.done, within=2.5, what="the session to be closed")
                error = running.task.exception()
                assert isinstance(error, InstrumentError) and str(error) == lost[0]["reason"]
            finally:
                await running.stop()


@pytest.mark.asyncio
async def test_a_server_shutting_down_ends_the_session(
    controller: Controller, tmp_path: Path
) -> None:
    running = await session(make_driver(controller.url, tmp_path))
    try:
        assert controller.server is not None
        await controller.on_server(controller.server.write_attribute_value(
            ua.NodeId(ua.ObjectIds.Server_ServerStatus_State),
            ua.DataValue(ua.Variant(ua.ServerState.Shutdown, ua.VariantType.Int32)),
        ))  # fmt: skip
        error = await running.ended()
        assert str(error) == "server state Shutdown"
    finally:
        await running.stop()


@pytest.mark.asyncio
async def test_user_and_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = Controller()
    await device.start(users={"operator": "s3cret"})
    try:
        monkeypatch.setenv("CTL_PASSWORD", "s3cret")
        creds = {"username": "operator", "password": "env:CTL_PASSWORD"}
        running = await session(make_driver(device.url, tmp_path, **creds))
        await running.stop()
        monkeypatch.setenv("CTL_PASSWORD", "wrong")
        with pytest.raises(InstrumentError, match="Bad"):
            await make_driver(device.url, tmp_path, **creds).run(RecordingIO())
        monkeypatch.delenv("CTL_PASSWORD")
        with pytest.raises(InstrumentError, match="CTL_PASSWORD is not set"):
            await make_driver(device.url, tmp_path, **creds).run(RecordingIO())
    finally:
        device.close()


def identity(folder: Path, name: str, uri: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
    """A self-signed application instance certificate (DER) and its key (PEM) in ``folder``."""
    key = cert_gen.generate_private_key()
    names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
    cert = cert_gen.generate_self_signed_app_certificate(key, name, {}, names, [usage])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (folder / f"{name}.pem").write_bytes(cert_gen.dump_private_key_as_pem(key))
    return folder / f"{name}.der", folder / f"{name}.pem"


@pytest.mark.asyncio
async def test_signed_and_encrypted_sessions_with_the_clients_own_certificate(
    tmp_path: Path,
) -> None:
    data = tmp_path / "config"  # relative paths in the options: the config file's folder
    server_id = identity(
        data, "server", "urn:pat-gateway:test:server", ExtendedKeyUsageOID.SERVER_AUTH
    )
    identity(data, "client", "urn:pat-gateway:test:gateway", ExtendedKeyUsageOID.CLIENT_AUTH)
    identity(data, "impostor", "urn:pat-gateway:test:server", ExtendedKeyUsageOID.SERVER_AUTH)
    device = Controller()
    await device.start(identity=server_id)
    try:
        secure = {"certificate": "client.der", "private_key": "client.pem"}

        def driver(**extra: Any) -> OpcUaDriver:
            return OpcUaDriver(
                OpcUaOptions.model_validate(
                    options(device.url, **extra), context=validation_context(data)
                ),
                PluginContext("ctl", tmp_path / "data"),
            )

        pinned = driver(security="Basic256Sha256", server_certificate="server.der", **secure)
        running = await session(pinned)
        await running.stop()
        with capture_logs() as logs:
            running = await session(driver(security="Aes256_Sha256_RsaPss", mode="sign", **secure))
            await running.stop()
        assert "opcua.server_unverified" in [e["event"] for e in logs]
        # A server presenting another certificate than the pinned one is refused.
        impostor = driver(security="Basic256Sha256", server_certificate="impostor.der", **secure)
        with pytest.raises(InstrumentError, match="another certificate than server_certificate"):
            await impostor.run(RecordingIO())
        assert impostor.sessions == 0
        # No None endpoint on this server: an insecure client gets no session either.
        with pytest.raises(InstrumentError, match="No matching endpoints"):
            await driver().run(RecordingIO())
        with pytest.raises(InstrumentError, match=r"no endpoint with Basic256Sha256 sign$"):
            await driver(security="Basic256Sha256", mode="sign", server_certificate="server.der",
                         **secure).run(RecordingIO())  # fmt: skip
        with pytest.raises(InstrumentError, match=r"cannot read .*missing\.der"):
            await driver(security="Basic256Sha256", certificate="missing.der",
                         private_key="client.pem").run(RecordingIO())  # fmt: skip
    finally:
        device.close()


# -- inside the runtime ----------------------------------------------------------------------------
def opcua_registry() -> Registry:
    """The installed plugins, plus this driver if its entry point is not installed yet."""
    registry = build_registry()
    if registry.get(PluginKind.DRIVER, "opcua") is None:
        registry = build_registry([opcua_plugin])
    return registry


@pytest.mark.asyncio
async def test_in_the_runtime_bad_while_the_server_restarts_then_back(
    controller: Controller, tmp_path: Path
) -> None:
    """The runtime's single reconnect loop brings the data back after a restart, in a server
    whose namespace index changed meanwhile, with one new session per reconnect."""
    config = {
        "area": "reactor1",
        "store": {"path": str(tmp_path / "store.sqlite"), "commit_interval_ms": 20},
        "data_dir": str(tmp_path / "data"),
        "instruments": [{
            "id": "ctl", "driver": "opcua", "backoff": {"initial_s": 0.05, "max_s": 0.2},
            "options": options(controller.url, nodes=node_specs(profile={})),
        }],
    }  # fmt: skip
    plan = load_plan(write_config(tmp_path / "gateway.yaml", config), opcua_registry())
    gateway = Gateway(plan)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop), name="test.gateway")
    try:
        runner = await wait_for(lambda: gateway.runners and gateway.runners[0])

        temperature = next(o for o in gateway.outputs if o.signal.id.endswith("/temperature"))

        def latest() -> tuple[Any, Any]:
            row = temperature.latest  # (def_id, seq, source_ts, gateway_ts, quality, value, ...)
            return (row[4], row[5]) if row is not None else (None, None)

        await wait_for(lambda: runner.sessions == 1 and latest() == (Quality.GOOD, 37.0))
        await controller.stop()
        await wait_for(lambda: latest()[0] == Quality.BAD, what="the restart to take it down")
        await asyncio.sleep(0.5)  # down a while: the runtime retries with backoff meanwhile
        await controller.start(padding=3)  # our namespace's index was 2, now it is 5
        await controller.set(
            "Temperature.PV", ua.DataValue(ua.Variant(36.5, ua.VariantType.Double))
        )
        await wait_for(lambda: latest() == (Quality.GOOD, 36.5), what="data after the restart")
        driver = plan.instruments[0].driver
        assert isinstance(driver, OpcUaDriver)
        assert runner.sessions == 2 and driver.sessions == 2
    finally:
        stop.set()
        await task
    store = SampleStore(tmp_path / "store.sqlite", read_only=True)
    try:
        stored = list(store.samples("*/temperature"))
    finally:
        store.close()
    assert [s.seq for s in stored] == list(range(len(stored)))
    bad = [s for s in stored if s.quality is Quality.BAD]
    assert bad and bad[0].reason and bad[0].reason.startswith("unreachable: ")
    assert stored[-1].value == 36.5 and stored[-1].unit == "Cel"
    assert stored[-1].quality is Quality.GOOD


class FreezableProxy:
    """A TCP relay to a local port that can stop relaying without closing anything."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        """Stop relaying in both directions; the connections stay open."""
        self._flowing.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()

        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pump(src, dst), name="test.proxy.pump")
            self._tasks.add(task)
