"""The ``opcua`` driver: one session and one subscription per OPC UA server, values pushed.

A session goes: connect (security, user) → one subscription, with a monitored item for the
server's ``ServerStatus.State`` → for each configured node: resolve it against the server's
current namespace array, check its ``EngineeringUnits`` against the configured unit, add its
monitored item → publish every data change until the session is lost.

One broken node harms only itself. A node that cannot be used — missing (``BadNodeIdUnknown``,
``BadNoMatch``), in a namespace the server lacks, not a variable, or reporting another unit —
is published ``bad`` with that reason (once, and again only if the reason changes) while the
others flow, and is looked for again every ``recheck_interval_s`` inside the same session; once
it resolves, its monitored item is added and its data flows. Refusing the whole session instead
would turn every signal of the server bad and make each retry a new session (telegraf #19186).

Reconnection belongs to the runtime, which calls :meth:`OpcUaDriver.run` again after a jittered
backoff: two reconnect loops (ours and the library's) are how a gateway ends up flooding a
controller with CreateSession requests. So asyncua's own recovery is kept out of it:

* the client is built with ``auto_reconnect=False``, so its connection supervisor only *reports*
  a loss (a closed socket, an unanswered health probe) and stops;
* the subscription is built directly rather than through ``Client.create_subscription``, which
  would register it with the client's stale-subscription watchdog (that one re-creates a silent
  subscription on its own) and would replace a revised keep-alive with one derived from the
  session timeout (minutes of silence before anyone notices).

A session counts as lost, and ``run`` raises :class:`~gateway.InstrumentError` saying why, when
the connection drops, the server's state leaves ``Running``, the subscription reports a status
change, no notification or keep-alive arrives for a keep-alive period plus ``timeout_s``, a
request goes unanswered, or the notification backlog overflows. The session is closed before
``run`` returns, whatever happened: CloseSession is awaited for at most
:data:`CLOSE_TIMEOUT_S`, or only :data:`DEAD_LINK_CLOSE_TIMEOUT_S` when the link is known to be
dead (a frozen server cannot answer it, and waiting would only delay the ``bad``).

Writes (:class:`~gateway.WritableDriver`) go to nodes declared ``writable: true``, as the node's
data type, over the session's client (asyncua matches replies to requests, so they may overlap
the subscription's traffic). A value the server refuses — a bad status for the node, or the
whole request refused with a status such as ``BadOutOfRange`` — raises
:class:`~gateway.WriteRefusedError` naming the status; a lost session or a request without an
answer raises :class:`~gateway.InstrumentError`. ``read_back`` reads a node's value afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import (
    DataChangeEvent,
    OverflowPolicy,
    StatusChangeEvent,
    Subscription,
)
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway import (
    Channel,
    DeviceIdentity,
    InstrumentError,
    InstrumentIO,
    Output,
    PluginContext,
    Quality,
    SecretRef,
    UnitError,
    WritableDriver,
    WriteRefusedError,
    compile_conversion,
)
from gateway.unece import ucum_for_eu

from .nodes import BrowseStep, NodeRef, namespace_index, parse_browse_step, parse_node_ref
from .options import NodeSpec, OpcUaOptions
from .values import coerce_for_write, reading, status_name

__all__ = ["OpcUaDriver"]

log = structlog.get_logger("plugins.opcua")

SESSION_TIMEOUT_MS = 60_000
"""How long the server keeps a session the gateway lost track of (asyncua's default is an hour,
which lets a flaky link pile up orphaned sessions on a controller with a small session limit)."""
KEEPALIVE_TARGET_MS = 1000.0
"""Aim for a keep-alive from an idle subscription about once a second (rounded up to whole
publishing intervals), so a silent server is noticed within seconds."""
LIFETIME_KEEPALIVES = 10
"""The subscription's lifetime in keep-alive periods (the specification asks for at least 3)."""
QUEUE_MAX = 100_000
"""Notifications waiting for the driver before the session is given up as unable to keep up."""
CLOSE_TIMEOUT_S = 2.0
"""Longest wait for an orderly CloseSession when a session ends."""
DEAD_LINK_CLOSE_TIMEOUT_S = 0.2
"""The same wait when the link is known to be dead: room for asyncua to stop its own tasks
(local work, milliseconds), no round trip."""
WATCH_TICK_S = 0.5
"""How often the keep-alive watch looks at the clock and the backlog (state changes wake it at
once, and it wakes when the silence it waits for would be over)."""
WATCH_MARGIN_S = 0.01
"""Past the end of the allowed silence when the watch wakes for it (a timer may fire early)."""

_OBJECTS = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder))
_SERVER_STATE = ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_State))
_HIERARCHICAL = ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences))
_HAS_PROPERTY = ua.NodeId(ua.Int32(ObjectIds.HasProperty))
_ENGINEERING_UNITS = ua.QualifiedName("EngineeringUnits", 0)
_KIND = {
    "i": ua.NodeIdType.Numeric,
    "s": ua.NodeIdType.String,
    "g": ua.NodeIdType.Guid,
    "b": ua.NodeIdType.ByteString,
}
_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    "sign": ua.MessageSecurityMode.Sign,
    "sign_and_encrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_CLIENT_APPLICATION_URI = "urn:pat-gateway:opcua-client"
_TRANSPORT_ERRORS = (UaError, OSError, TimeoutError)
_DEAD_LINK_ERRORS = (OSError, TimeoutError)
"""A request that got no answer, or a socket that failed: the link, not the server, is gone."""
_SESSION_FAULTS = frozenset(
    {
        "BadCommunicationError",
        "BadConnectionClosed",
        "BadNoCommunication",
        "BadRequestTimeout",
        "BadSecureChannelClosed",
        "BadSecureChannelIdInvalid",
        "BadServerHalted",
        "BadServerNotConnected",
        "BadSessionClosed",
        "BadSessionIdInvalid",
        "BadSessionNotActivated",
        "BadShutdown",
        "BadTcpInternalError",
        "BadTimeout",
    }
)
"""Service faults that say the session or the link failed, not that the server refused a value:
a write answered with one of these may be retried once the session is back."""


@dataclass(frozen=True, slots=True)
class _Node:
    """A configured node: its spec and, parsed once, where it is."""

    spec: NodeSpec
    ref: NodeRef | None
    path: tuple[BrowseStep, ...]

    @property
    def where(self) -> str:
        if self.ref is not None:
            return str(self.ref)
        return "/".join(self.spec.browse_path or ())


class OpcUaDriver:
    """One OPC UA server: a session, one subscription, a channel per configured node.

    Built by the registry as ``OpcUaDriver(options, context)`` with no I/O. ``sessions`` counts
    the sessions created over the driver's life (each reconnect creates a fresh one).
    """

    def __init__(self, options: OpcUaOptions, context: PluginContext) -> None:
        self.options = options
        self.context = context
        self.sessions = 0
        """Sessions created (CreateSession and ActivateSession done) since the driver was built."""
        self.rechecks = 0
        """Rechecks of unusable nodes done within sessions since the driver was built."""
        aliases = set(options.namespaces)
        self._nodes = tuple(
            _Node(
                spec,
                parse_node_ref(spec.node, aliases) if spec.node is not None else None,
                tuple(parse_browse_step(s, aliases) for s in spec.browse_path or ()),
            )
            for spec in options.nodes
        )
        self._by_name = {n.spec.name: n for n in self._nodes}
        self._identity_refs = {
            field: parse_node_ref(node, aliases)
            for field, node in (options.identity.refs() if options.identity else {}).items()
        }
        self._index = {n.spec.name: i for i, n in enumerate(self._nodes)}
        self._client: Client | None = None
        self._write_targets: dict[str, tuple[ua.NodeId, ua.VariantType | None]] = {}
        self._node_ids: dict[str, ua.NodeId] = {}
        """The node id of each node in use in this session, by name (for read-backs)."""
        self._unusable: dict[int, str] = {}
        """Why each node that cannot be used in this session is not (by index), until a recheck
        finds it usable."""
        self._lost_reason: str | None = None
        self._link_dead = False
        self._overflowed = False
        self._unit_warned: set[str] = set()
        self._log = log.bind(instrument=context.id, url=options.url)

    def channels(self) -> Sequence[Channel]:
        return [
            Channel(
                n.spec.name,
                n.spec.unit,
                description=n.spec.description or f"OPC UA node {n.where}",
                writable=n.spec.writable,
            )
            for n in self._nodes
        ]

    # -- session ---------------------------------------------------------------------------------
    async def run(self, io: InstrumentIO) -> None:
        """One session: connect, subscribe, add every node that can be used, publish until the
        session is lost. A node that cannot be used is published bad with its reason and looked
        for again every ``recheck_interval_s`` within the same session."""
        client = self._new_client()
        self._lost_reason = None
        self._link_dead = False
        self._overflowed = False
        self._unusable = {}
        outputs = [io.output(node.spec.name) for node in self._nodes]
        opened = False
        step = f"connect to {self.options.url}"
        try:
            await self._configure_identity(client)
            await client.connect(auto_reconnect=False)
            opened = True
            self.sessions += 1
            self._log.info("opcua.session_created", sessions=self.sessions)
            if self._identity_refs:
                step = "read the identity"
                identity = await self._read_identity(client)
                if identity is not None:
                    io.identify(identity)
            step = "subscribe"
            subscription, silence_s = await self._subscribe(client)
            self._client = client
            step = "add nodes"
            await self._admit(client, subscription, range(len(self._nodes)), outputs)
            step = "session"
            try:
                await self._stream(client, subscription, silence_s, io, outputs)
            except InstrumentError as exc:
                # When the loss was seen; the runtime's instrument.down follows the close.
                self._log.info("opcua.session_lost", reason=str(exc), link_dead=self._link_dead)
                raise
        except _TRANSPORT_ERRORS as exc:
            if isinstance(exc, _DEAD_LINK_ERRORS):
                self._link_dead = True
            raise InstrumentError(f"{step}: {self._describe(exc)}") from exc
        finally:
            self._client, self._write_targets, self._node_ids = None, {}, {}
            await self._close(client, opened)

    def _new_client(self) -> Client:
        o = self.options
        # auto_reconnect=False: the runtime is the only reconnect loop (see the module docstring).
        # The health probe (a read of ServerState) runs every timeout_s with that timeout.
        client = Client(o.url, timeout=o.timeout_s, watchdog_intervall=o.timeout_s)
        client.session_timeout = SESSION_TIMEOUT_MS
        client.name = "PAT Gateway"
        client.description = f"PAT Gateway {self.context.id}"  # the session's name on the server
        client.application_uri = _CLIENT_APPLICATION_URI
        client.product_uri = "urn:pat-gateway"
        client.connection_lost_callback = self._connection_lost
        return client

    async def _connection_lost(self, exc: Exception) -> None:
        # Called by asyncua's supervisor before it tells the subscription; keep the cause.
        self._lost_reason = f"connection lost: {self._describe(exc)}"
        self._link_dead = True

    async def _configure_identity(self, client: Client) -> None:
        o = self.options
        if o.username is not None and o.password is not None:
            client.set_user(o.username)
            client.set_password(_secret(o.password, "password"))
        if o.security == "none":
            return
        key_password = (
            _secret(o.private_key_password, "private_key_password")
            if o.private_key_password is not None
            else None
        )
        paths = [self._path(o.certificate), self._path(o.private_key)]
        if o.server_certificate is not None:
            paths.append(self._path(o.server_certificate))
        try:
            contents = await asyncio.to_thread(_read_files, paths)
        except OSError as exc:
            raise InstrumentError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        certificate, private_key, *server = (CertProperties(c, _format(c)) for c in contents)
        policy, mode = _POLICIES[o.security], _MODES[o.mode or "sign_and_encrypt"]
        try:
            client.application_uri = _application_uri(contents[0]) or _CLIENT_APPLICATION_URI
            pinned = _der(contents[2]) if server else None
        except ValueError as exc:  # cryptography: not a certificate
            raise InstrumentError(f"cannot load a certificate: {exc}") from exc
        if pinned is not None:
            await self._check_server_certificate(client, policy.URI, mode, pinned)
        else:
            self._log.warning(
                "opcua.server_unverified",
                reason="no server_certificate: the certificate the server offers is trusted as is",
            )
        try:
            await client.set_security(
                policy,
                certificate,
                CertProperties(private_key.path_or_content, private_key.extension, key_password),
                server_certificate=server[0] if server else None,
                mode=mode,
            )
        except (ValueError, TypeError) as exc:  # cryptography: not a key, wrong password
            raise InstrumentError(f"cannot load the certificate or private key: {exc}") from exc

    async def _check_server_certificate(
        self, client: Client, policy_uri: str, mode: ua.MessageSecurityMode, pinned: bytes
    ) -> None:
        """Refuse, saying so, a server whose endpoint presents another certificate than the one
        configured (a replaced controller, or an impostor). Without this check the mismatch only
        shows as a request that times out: the server cannot read what was encrypted for the
        configured certificate."""
        endpoints = await client.connect_and_get_server_endpoints()
        offered = [
            bytes(e.ServerCertificate or b"")
            for e in endpoints
            if e.SecurityPolicyUri == policy_uri and e.SecurityMode == mode
        ]
        if not offered:
            raise InstrumentError(
                f"the server offers no endpoint with {self.options.security}"
                f" {self.options.mode or 'sign_and_encrypt'}"
            )
        # An endpoint may carry its certificate followed by its chain.
        if not any(certificate.startswith(pinned) for certificate in offered):
            raise InstrumentError(
                "the server presents another certificate than server_certificate"
                f" ({self.options.server_certificate})"
            )

    @staticmethod
    def _path(path: Path | None) -> Path:
        assert path is not None  # the options model requires it with a security policy
        return path  # relative to the config file's folder already (ConfigPath)

    async def _close(self, client: Client, opened: bool) -> None:
        """End the session: CloseSession (bounded), stop asyncua's tasks, drop the socket.

        Over a link known to be dead (lost, silent, a request unanswered) no answer can come, so
        the wait is only long enough for asyncua's own teardown; the request still goes out, in
        case the server is only slow, and a server that never reads it drops the session after
        the session timeout."""
        timeout_s = DEAD_LINK_CLOSE_TIMEOUT_S if self._link_dead else CLOSE_TIMEOUT_S
        try:
            if opened:
                try:
                    async with asyncio.timeout(timeout_s):
                        await client.disconnect()
                except _TRANSPORT_ERRORS as exc:
                    self._log.debug("opcua.close_failed", reason=self._describe(exc))
        finally:
            # A no-op when the socket is closed already; after a timed-out close it is not.
            client.disconnect_socket()

    # -- nodes ---------------------------------------------------------------------------------
    async def _admit(
        self,
        client: Client,
        subscription: Subscription,
        indexes: Iterable[int],
        outputs: Sequence[Output],
    ) -> None:
        """Resolve, check and monitor the configured nodes at ``indexes``. Each one that can be
        used gets its monitored item (its data flows from then on); each other one is published
        bad with its reason, once, and stays in ``_unusable`` for the next recheck."""
        ids, problems = await self._resolve(client, indexes)
        mismatches = await self._verify_units(client, ids)
        problems |= mismatches
        ids = {i: node_id for i, node_id in ids.items() if i not in problems}
        targets, refused = await self._write_types(client, ids)
        problems |= refused
        ids = {i: node_id for i, node_id in ids.items() if i not in problems}
        problems |= await self._monitor(subscription, ids)
        for i in ids:
            if i in problems:
                continue
            name = self._nodes[i].spec.name
            self._node_ids[name] = ids[i]
            if i in targets:
                self._write_targets[name] = targets[i]
            was = self._unusable.pop(i, None)
            if was is not None:
                self._log.info("opcua.node_usable", node=name, where=self._nodes[i].where, was=was)
        for i, reason in sorted(problems.items()):
            self._node_unusable(i, reason, outputs[i], mismatch=i in mismatches)

    def _node_unusable(self, i: int, reason: str, output: Output, *, mismatch: bool) -> None:
        """Publish a node bad with ``reason`` and log it, when it is new or the reason changed
        (a recheck that finds the same does neither: the store keeps the bad value)."""
        if self._unusable.get(i) == reason:
            return
        self._unusable[i] = reason
        output.publish(None, None, Quality.BAD, reason)
        node = self._nodes[i]
        fields = {
            "node": node.spec.name,
            "where": node.where,
            "reason": reason,
            "recheck_s": self.options.recheck_interval_s,
        }
        if mismatch:
            # Wrong data if it were used: an error, where a missing node is a warning.
            self._log.error("opcua.unit_mismatch", **fields)
        else:
            self._log.warning("opcua.node_unusable", **fields)

    async def _recheck(
        self, client: Client, subscription: Subscription, outputs: Sequence[Output]
    ) -> None:
        """Every ``recheck_interval_s``, try again the nodes that could not be used. A request
        the server refuses as a whole is logged (when its reason changes) and tried next time;
        one that goes unanswered ends the session like any lost request."""
        refused: str | None = None
        while True:
            await asyncio.sleep(self.options.recheck_interval_s)
            if not self._unusable:
                continue
            try:
                await self._admit(client, subscription, sorted(self._unusable), outputs)
                self.rechecks += 1
            except UaStatusCodeError as exc:
                reason = self._describe(exc)
                if reason != refused:
                    self._log.warning("opcua.recheck_refused", reason=reason)
                refused = reason
            except _TRANSPORT_ERRORS as exc:
                if isinstance(exc, _DEAD_LINK_ERRORS):
                    self._link_dead = True
                raise InstrumentError(f"recheck nodes: {self._describe(exc)}") from exc
            else:
                refused = None

    async def _resolve(
        self, client: Client, indexes: Iterable[int]
    ) -> tuple[dict[int, ua.NodeId], dict[int, str]]:
        """The node id of each configured node at ``indexes`` in the server's current
        namespaces, and why each of the others cannot be used (``BadNodeIdUnknown``,
        ``BadNoMatch``, a missing namespace, not a variable), both by index."""
        server_namespaces: list[str] = await client.get_namespace_array()
        problems: dict[int, str] = {}
        ids: dict[int, ua.NodeId] = {}
        paths: list[tuple[int, ua.BrowsePath]] = []
        for i in indexes:
            node = self._nodes[i]
            try:
                if node.ref is not None:
                    ids[i] = self._node_id(node.ref, server_namespaces)
                else:
                    paths.append((i, self._browse_path(node.path, server_namespaces)))
            except LookupError as exc:
                problems[i] = str(exc)
        if paths:
            results = await client.uaclient.translate_browsepaths_to_nodeids([p for _, p in paths])
            for (i, _), result in zip(paths, results, strict=True):
                if result.StatusCode.is_good() and result.Targets:
                    target = result.Targets[0].TargetId
                    ids[i] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                else:
                    problems[i] = status_name(result.StatusCode.value)
        if ids:
            order = list(ids)
            classes = await client.uaclient.read_attributes(
                [ids[i] for i in order], AttributeIds.NodeClass
            )
            for i, dv in zip(order, classes, strict=True):
                code = dv.StatusCode.value if dv.StatusCode is not None else 0
                if code >> 30:
                    problems[i] = status_name(code)
                elif dv.Value is not None and dv.Value.Value != ua.NodeClass.Variable:
                    problems[i] = f"{ua.NodeClass(dv.Value.Value).name} node, not a variable"
        return {i: node_id for i, node_id in ids.items() if i not in problems}, problems

    async def _read_identity(self, client: Client) -> DeviceIdentity | None:
        """The identity nodes' values, in one Read; a node that is missing, bad or empty (or
        whose namespace the server lacks) leaves its field unknown, and the log says why."""
        server_namespaces: list[str] = await client.get_namespace_array()
        ids: dict[str, ua.NodeId] = {}
        problems: dict[str, str] = {}
        for field, ref in self._identity_refs.items():
            try:
                ids[field] = self._node_id(ref, server_namespaces)
            except LookupError as exc:
                problems[field] = str(exc)
        values: dict[str, str] = {}
        if ids:
            results = await client.uaclient.read_attributes(list(ids.values()), AttributeIds.Value)
            if len(results) != len(ids):  # a broken server: no field can be matched to its node
                problems["read"] = f"{len(results)} values answered for {len(ids)} nodes"
                results, ids = [], {}
            for field, dv in zip(ids, results, strict=True):
                code = dv.StatusCode.value if dv.StatusCode is not None else 0
                value = dv.Value.Value if dv.Value is not None else None
                if isinstance(value, ua.LocalizedText):
                    value = value.Text
                if code >> 30:
                    problems[field] = status_name(code)
                elif value is not None and str(value).strip():
                    values[field] = str(value).strip()
        if problems:
            self._log.warning("opcua.identity_incomplete", problems=problems)
        return DeviceIdentity(**values) if values else None

    def _node_id(self, ref: NodeRef, server_namespaces: list[str]) -> ua.NodeId:
        index = namespace_index(ref.alias, ref.uri, self.options.namespaces, server_namespaces)
        identifier: Any
        if ref.kind == "i":
            identifier = int(ref.identifier)
        elif ref.kind == "g":
            identifier = ua.NodeId.from_string(f"g={ref.identifier}").Identifier
        elif ref.kind == "b":
            identifier = ua.NodeId.from_string(f"b={ref.identifier}").Identifier
        else:
            identifier = ref.identifier
        return ua.NodeId(identifier, ua.Int16(index), _KIND[ref.kind])

    def _browse_path(
        self, steps: tuple[BrowseStep, ...], server_namespaces: list[str]
    ) -> ua.BrowsePath:
        elements = []
        for step in steps:
            index = namespace_index(step.alias, None, self.options.namespaces, server_namespaces)
            elements.append(_forward(_HIERARCHICAL, ua.QualifiedName(step.name, index)))
        return ua.BrowsePath(StartingNode=_OBJECTS, RelativePath=ua.RelativePath(elements))

    # -- units -----------------------------------------------------------------------------------
    async def _verify_units(self, client: Client, ids: dict[int, ua.NodeId]) -> dict[int, str]:
        """Compare each node's ``EngineeringUnits`` (mapped to UCUM) with its configured unit;
        the nodes whose units contradict it, with the mismatch as their reason, by index.

        Such a node is not used: publishing its values under the configured unit would be wrong
        data, not missing data. A node without ``EngineeringUnits``, or with a unit the UNECE
        table does not map, keeps the configured unit (logged once per node).
        """
        if not ids:
            return {}
        uaclient = client.uaclient
        order = list(ids)
        paths = [
            ua.BrowsePath(
                StartingNode=ids[i],
                RelativePath=ua.RelativePath([_forward(_HAS_PROPERTY, _ENGINEERING_UNITS)]),
            )
            for i in order
        ]
        results = await uaclient.translate_browsepaths_to_nodeids(paths)
        with_units = [
            (i, result.Targets[0].TargetId)
            for i, result in zip(order, results, strict=True)
            if result.StatusCode.is_good() and result.Targets
        ]
        units: dict[int, ua.EUInformation] = {}
        if with_units:
            values = await uaclient.read_attributes(
                [ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType) for _, t in with_units],
                AttributeIds.Value,
            )
            for (i, _), dv in zip(with_units, values, strict=True):
                if dv.Value is not None and isinstance(dv.Value.Value, ua.EUInformation):
                    units[i] = dv.Value.Value
        mismatches: dict[int, str] = {}
        for i in order:
            spec = self._nodes[i].spec
            eu = units.get(i)
            if eu is None:
                self._unit_unverified(spec, "the node has no EngineeringUnits")
                continue
            display = (eu.DisplayName.Text or "") if eu.DisplayName is not None else ""
            ucum = ucum_for_eu(eu.NamespaceUri or "", int(eu.UnitId), display)
            if ucum is None:
                self._unit_unverified(
                    spec,
                    f"its EngineeringUnits ({display or 'no display name'}, unit id"
                    f" {eu.UnitId}) have no UCUM equivalent",
                )
            elif not _same_unit(ucum, spec.unit):
                mismatches[i] = (
                    f"unit mismatch: node {spec.name} reports {display or eu.UnitId} ({ucum}),"
                    f" configured {spec.unit}"
                )
        return mismatches

    def _unit_unverified(self, spec: NodeSpec, why: str) -> None:
        if spec.name in self._unit_warned:
            return
        self._unit_warned.add(spec.name)
        self._log.warning(
            "opcua.unit_unverified",
            node=spec.name,
            unit=spec.unit,
            reason=f"{why}; using {spec.unit}",
        )

    # -- writes ----------------------------------------------------------------------------------
    async def _write_types(
        self, client: Client, ids: dict[int, ua.NodeId]
    ) -> tuple[dict[int, tuple[ua.NodeId, ua.VariantType | None]], dict[int, str]]:
        """The data type of each writable node, so a setpoint is sent as the type the server
        expects (a Double written to an Int32 node is refused as BadTypeMismatch); and the
        writable nodes whose data type the server would not give, with its status."""
        targets: dict[int, tuple[ua.NodeId, ua.VariantType | None]] = {}
        refused: dict[int, str] = {}
        for i, node_id in ids.items():
            if not self._nodes[i].spec.writable:
                continue
            variant_type: ua.VariantType | None
            try:
                variant_type = await client.get_node(node_id).read_data_type_as_variant_type()
            except ValueError:  # a data type that is no built-in type (a structure)
                variant_type = None
            except UaStatusCodeError as exc:
                refused[i] = status_name(int(exc.code))
                continue
            targets[i] = (node_id, variant_type)
        return targets, refused

    async def write(self, channel: str, value: float) -> None:
        """Write a setpoint to a node declared ``writable: true``; anything else raises
        :class:`~gateway.WriteRefusedError`. Every write, refused, failed or done, is logged
        (instrument, channel, value, node)."""
        # audit=True: never suppressed as a repeat by the log's rate limit.
        audit = self._log.bind(channel=channel, value=value, audit=True)
        node = self._by_name.get(channel)
        if node is None or not node.spec.writable:
            audit.warning("opcua.write_refused", reason="not declared writable: true")
            raise WriteRefusedError(f"channel {channel!r} is not writable")
        audit = audit.bind(node=node.where)
        client, target = self._client, self._write_targets.get(channel)
        unusable = self._unusable.get(self._index[channel]) if client is not None else None
        if unusable is not None:
            audit.warning("opcua.write_failed", reason=unusable)
            raise InstrumentError(f"write of {channel} failed: node not usable: {unusable}")
        if client is None or target is None:
            audit.warning("opcua.write_failed", reason="not connected")
            raise InstrumentError(f"{self.options.url}: not connected")
        node_id, variant_type = target
        if variant_type is None:
            reason = "the node's data type is not a built-in numeric type"
            audit.warning("opcua.write_refused", reason=reason)
            raise WriteRefusedError(f"channel {channel!r}: {reason}")
        try:
            coerced = coerce_for_write(value, variant_type)
        except ValueError as exc:
            audit.warning("opcua.write_refused", reason=str(exc))
            raise WriteRefusedError(f"channel {channel!r}: {exc}") from exc
        # Value only: no timestamps and no status, which many servers refuse to have written
        # (BadWriteNotSupported); the server stamps the value itself.
        data_value = ua.DataValue(ua.Variant(coerced, variant_type), StatusCode=None)
        try:
            results = await client.uaclient.write_attributes(
                [node_id], [data_value], AttributeIds.Value
            )
        except UaStatusCodeError as exc:  # the whole request refused (a service fault)
            reason = self._describe(exc)
            if reason in _SESSION_FAULTS:
                audit.warning("opcua.write_failed", reason=reason)
                raise InstrumentError(f"write of {channel} failed: {reason}") from exc
            audit.warning("opcua.write_refused", reason=f"refused by the server: {reason}")
            raise WriteRefusedError(f"write of {channel} refused by the server: {reason}") from exc
        except _TRANSPORT_ERRORS as exc:
            reason = self._describe(exc)
            audit.warning("opcua.write_failed", reason=reason)
            raise InstrumentError(f"write of {channel} failed: {reason}") from exc
        status = results[0]
        if not status.is_good():  # the request went through, this value was refused
            reason = status_name(status.value)
            audit.warning("opcua.write_refused", reason=f"refused by the server: {reason}")
            raise WriteRefusedError(f"write of {channel} refused by the server: {reason}")
        audit.info("opcua.write", data_type=variant_type.name)

    async def read_back(self, channel: str) -> float:
        """The value of ``channel``'s node read from the server now (a Read service call, not
        the subscription's last value); ``InstrumentError`` unless it is a number with a Good
        status."""
        if channel not in self._by_name:
            raise WriteRefusedError(f"channel {channel!r} is not a node of this instrument")
        client, node_id = self._client, self._node_ids.get(channel)
        if client is None:
            raise InstrumentError(f"{self.options.url}: not connected")
        if node_id is None:
            unusable = self._unusable.get(self._index[channel], "not resolved yet")
            raise InstrumentError(f"read-back of {channel} failed: node not usable: {unusable}")
        try:
            [data_value] = await client.uaclient.read_attributes([node_id], AttributeIds.Value)
        except _TRANSPORT_ERRORS as exc:
            raise InstrumentError(f"read-back of {channel} failed: {self._describe(exc)}") from exc
        value, _, quality, reason = reading(data_value)
        if quality is not Quality.GOOD:
            raise InstrumentError(f"read-back of {channel}: {quality.label} ({reason})")
        if not isinstance(value, int | float):  # bool is an int: a Boolean node reads 0 or 1
            raise InstrumentError(f"read-back of {channel}: {value!r} is not a number")
        return float(value)

    # -- subscription ----------------------------------------------------------------------------
    async def _subscribe(self, client: Client) -> tuple[Subscription, float]:
        """One subscription with a monitored item for the server's state (the nodes are added
        by :meth:`_admit`); returns it with how long it may stay silent (no data, no keep-alive)
        before the session is lost."""
        o = self.options
        keepalive = max(1, math.ceil(KEEPALIVE_TARGET_MS / o.publishing_interval_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=o.publishing_interval_ms,
            RequestedLifetimeCount=keepalive * LIFETIME_KEEPALIVES,
            RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        # Built directly, not with client.create_subscription: see the module docstring.
        subscription = Subscription(
            client.uaclient.session,
            params,
            None,
            queue_maxsize=QUEUE_MAX,
            overflow=OverflowPolicy.DISCONNECT,
        )
        subscription.set_overflow_disconnect_handler(self._overflow)
        revised = await subscription.init()
        [state] = await subscription.create_monitored_items(
            [_monitored_item(_SERVER_STATE, len(self._nodes), 0.0, 1)]
        )
        if isinstance(state, ua.StatusCode):
            self._log.info("opcua.server_state_unmonitored", reason=status_name(state.value))
        keepalive_s = revised.RevisedPublishingInterval * revised.RevisedMaxKeepAliveCount / 1000
        self._log.info(
            "opcua.subscribed",
            nodes=len(self._nodes),
            publishing_interval_ms=revised.RevisedPublishingInterval,
            keepalive_s=round(keepalive_s, 3),
        )
        return subscription, keepalive_s + o.timeout_s

    async def _monitor(
        self, subscription: Subscription, ids: dict[int, ua.NodeId]
    ) -> dict[int, str]:
        """A monitored item per node (its index is the client handle); the nodes the server
        refused one for, with the status, by index."""
        if not ids:
            return {}
        o = self.options
        # Enough queue on the server for every sample taken between two publishes.
        queue_size = (
            max(1, math.ceil(o.publishing_interval_ms / o.sampling_interval_ms))
            if o.sampling_interval_ms > 0
            else 10
        )
        requests = [
            _monitored_item(node_id, i, o.sampling_interval_ms, queue_size)
            for i, node_id in ids.items()
        ]
        results = await subscription.create_monitored_items(requests)
        return {
            i: status_name(result.value)
            for i, result in zip(ids, results, strict=True)
            if isinstance(result, ua.StatusCode)
        }

    def _overflow(self) -> None:
        self._overflowed = True

    async def _stream(
        self,
        client: Client,
        subscription: Subscription,
        silence_s: float,
        io: InstrumentIO,
        outputs: Sequence[Output],
    ) -> None:
        """Publish notifications until the session is lost; always raises InstrumentError."""
        name = f"opcua.{self.context.id}"
        notifications = asyncio.create_task(
            self._publish(subscription, outputs, io), name=f"{name}.notifications"
        )
        watch = asyncio.create_task(
            self._watch(client, subscription, silence_s), name=f"{name}.watch"
        )
        recheck = asyncio.create_task(
            self._recheck(client, subscription, outputs), name=f"{name}.recheck"
        )
        tasks = (notifications, watch, recheck)
        try:
            done, _ = await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
            if notifications not in done:
                # Notifications received before the loss are queued: one turn of the loop
                # publishes them all (the queue is drained without waiting) before the cut.
                await asyncio.sleep(0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(set(tasks))
        # Take every task's outcome (an exception left unread is reported at garbage collection),
        # then raise the first: the notification stream's own reason when it has one.
        errors = [t.exception() for t in tasks if not t.cancelled()]
        for error in errors:
            if error is not None:
                raise error
        raise InstrumentError(self._lost_reason or "session ended")

    async def _publish(
        self, subscription: Subscription, outputs: Sequence[Output], io: InstrumentIO
    ) -> None:
        """The hot path: each data change becomes one published reading."""
        count = len(outputs)
        answered = False
        async for event in subscription:
            if type(event) is DataChangeEvent:
                if not answered:
                    answered = True
                    # Connected means answering: the first data (a node's, or the server's
                    # state when no node can be used yet) has arrived.
                    io.connected()
                item = event.data.monitored_item
                handle = item.ClientHandle
                if handle >= count:
                    self._check_server_state(item.Value)
                    continue
                value, source_ts, quality, reason = reading(item.Value)
                outputs[handle].publish(value, source_ts, quality, reason)
            elif type(event) is StatusChangeEvent:
                status = status_name(event.notification.Status.value)
                raise InstrumentError(self._lost_reason or f"subscription status {status}")
        raise InstrumentError(self._lost_reason or "subscription closed")

    def _check_server_state(self, dv: ua.DataValue) -> None:
        state = dv.Value.Value if dv.Value is not None else None
        if isinstance(state, int) and state != ua.ServerState.Running:
            try:
                label = ua.ServerState(state).name
            except ValueError:
                label = str(state)
            raise InstrumentError(f"server state {label}")

    async def _watch(self, client: Client, subscription: Subscription, silence_s: float) -> None:
        """Raise InstrumentError when the connection drops, the notification backlog overflows,
        or the subscription stays silent (no data, no keep-alive) for ``silence_s``."""
        started = time.monotonic()
        async with client.subscribe_state() as states:
            while True:
                if self._overflowed:
                    raise InstrumentError(
                        f"over {QUEUE_MAX} notifications waiting: the gateway cannot keep up"
                    )
                if client.state is not UaClientState.CONNECTED:
                    raise InstrumentError(self._lost_reason or "connection to the server lost")
                last = subscription.last_publish_at or started
                silent = time.monotonic() - last
                if silent > silence_s:
                    self._link_dead = True
                    raise InstrumentError(
                        f"no notification or keep-alive from the server for {silent:.1f} s"
                    )
                # Wake when the silence would become too long, not a tick later: the frozen
                # server's detection time is then keep-alive + timeout_s, give or take a publish.
                wait_s = min(WATCH_TICK_S, silence_s - silent + WATCH_MARGIN_S)
                with contextlib.suppress(TimeoutError):
                    await states.next_change(timeout=wait_s)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, UaStatusCodeError):
            return status_name(int(exc.code))
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.options.timeout_s} s"
        text = str(exc)
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _forward(reference: ua.NodeId, name: ua.QualifiedName) -> ua.RelativePathElement:
    """A browse-path step along ``reference`` (or a subtype), parent to child."""
    return ua.RelativePathElement(
        ReferenceTypeId=reference,
        # asyncua annotates these as its Boolean class, which no bool is an instance of.
        IsInverse=False,  # type: ignore[arg-type]
        IncludeSubtypes=True,  # type: ignore[arg-type]
        TargetName=name,
    )


def _monitored_item(
    node_id: ua.NodeId, handle: int, sampling_interval_ms: float, queue_size: int
) -> ua.MonitoredItemCreateRequest:
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=node_id, AttributeId=AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=ua.MonitoringParameters(
            ClientHandle=handle,
            SamplingInterval=sampling_interval_ms,
            QueueSize=queue_size,
            DiscardOldest=True,
        ),
    )


def _same_unit(reported: str, configured: str) -> bool:
    """Whether two UCUM codes are the same unit (``l/min`` and ``L/min`` are)."""
    if reported == configured:
        return True
    try:
        conversion = compile_conversion(reported, configured)
    except UnitError:
        return False
    return math.isclose(conversion.scale, 1.0, rel_tol=1e-12) and abs(conversion.offset) < 1e-12


def _secret(ref: SecretRef, what: str) -> str:
    try:
        return ref.get()
    except KeyError as exc:
        raise InstrumentError(f"{what}: {exc.args[0]}") from None


def _read_files(paths: list[Path]) -> list[bytes]:
    # Runs in a worker thread: certificate files may sit on slow storage.
    return [path.read_bytes() for path in paths]


def _format(content: bytes) -> str:
    return "pem" if content.lstrip().startswith(b"-----BEGIN") else "der"


def _der(certificate: bytes) -> bytes:
    """A certificate in DER, from DER or PEM."""
    if _format(certificate) == "der":
        return certificate
    return x509.load_pem_x509_certificate(certificate).public_bytes(serialization.Encoding.DER)


def _application_uri(certificate: bytes) -> str | None:
    """The URI subject alternative name of the client certificate: OPC UA requires the
    session's application URI to match it, and servers refuse sessions where it does not."""
    if _format(certificate) == "pem":
        cert = x509.load_pem_x509_certificate(certificate)
    else:
        cert = x509.load_der_x509_certificate(certificate)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


if TYPE_CHECKING:
    # mypy checks here that the driver has the write capability's exact signatures.
    _writable: type[WritableDriver] = OpcUaDriver
