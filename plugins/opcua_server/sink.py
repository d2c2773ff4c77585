"""The ``opcua_server`` sink: an OPC UA server exposing every gateway signal, secure by default.

For automation engineers who connect a SCADA, historian or MES to the gateway over OPC UA.
Entered beside the instruments as they start (what is committed meanwhile waits in the sink's
queue), the sink starts an asyncua server; every committed batch updates the variables of its
signals (see :mod:`.address_space`). Access control is in
:mod:`.access`, certificates in :mod:`.pki`, and what asyncua leaves open is closed in
:mod:`.hardened` — the module docstrings say what each gate answers.

Start-up costs about two seconds (asyncua builds the standard address space on a worker
thread) plus, on the very first start, the generation of the server's RSA key.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.metadata
import json
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.address_space import AttributeValue

from gateway import DeviceIdentity, PluginContext, Sample, Signal
from gateway.control import Access
from gateway.security import Authority, SecurityConfig

from ._ua import AttributeIds, ObjectIds, StatusCodes, from_timestamp, numeric_node, status
from .access import ClientCertificateCheck, LoginGate, RoleRules
from .address_space import SignalSpace, notify, set_value
from .hardened import ConnectionLimits, GatewayServer
from .methods import add_command_methods
from .options import OpcUaServerOptions
from .pki import OwnCertificate, TrustList, load_or_create_own_certificate
from .writes import WriteHandler

__all__ = ["OpcUaServerSink"]

log = structlog.get_logger("plugins.opcua_server")

# Current policies only: Basic128Rsa15 and Basic256 use SHA-1 and are deprecated. Each with
# signing only and with signing and encryption, as OPC UA clients expect to find both.
_SECURE_POLICIES = (
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
)
_GOOD = status(StatusCodes.Good)


def _version() -> str:
    try:
        return importlib.metadata.version("pat-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class OpcUaServerSink:
    """Runs the OPC UA server for as long as the sink is entered."""

    def __init__(self, options: OpcUaServerOptions, context: PluginContext) -> None:
        self.options = options
        self.context = context
        pki = context.data_dir / "opcua" / "pki"
        self.own_dir = pki / "own"
        trusted = options.trusted_clients_dir
        self.trusted_dir = trusted if trusted is not None else pki / "trusted"
        self.rejected_dir = pki / "rejected"
        self.application_uri = (
            options.application_uri or f"urn:pat-gateway:{socket.gethostname()}:{context.id}"
        )
        host = f"[{options.host}]" if ":" in options.host else options.host
        self.endpoint_url = f"opc.tcp://{host}:{options.port}{options.endpoint_path}"
        self.own_certificate: OwnCertificate | None = None
        self._pending: list[Signal] = []
        self._server: GatewayServer | None = None
        self._space: SignalSpace | None = None
        self._anchor_node: Node | None = None
        self._clock: asyncio.Task[None] | None = None
        self._identities: dict[str, DeviceIdentity] = {}  # told, not shown yet

    def device_identified(self, instrument: str, identity: DeviceIdentity) -> None:
        """Show ``identity`` as the DI identification properties of ``instrument``'s object,
        at the next batch of samples (an instrument identifies itself as it connects, just
        before its first readings) or once the server has started."""
        self._identities[instrument] = identity

    async def _show_identities(self, space: SignalSpace) -> None:
        while self._identities:
            await space.identify(*self._identities.popitem())

    def bind(self, signals: Sequence[Signal]) -> None:
        """Declare the gateway's signals, so their variables exist before any sample.

        Called by the runtime before entering the sink; signals declared later are created at
        the next ``send``. Signals never declared are created on their first sample.
        """
        self._pending.extend(signals)

    @property
    def namespace_uri(self) -> str | None:
        """The namespace of the signal nodes, once the first one exists."""
        return self._space.namespace_uri if self._space is not None else None

    async def __aenter__(self) -> OpcUaServerSink:
        options = self.options
        trust = TrustList(self.trusted_dir, self.rejected_dir)
        trust.prepare()
        access = self.context.access or Access(Authority(SecurityConfig()), {})
        users = access.authority.users
        gate = LoginGate(access.authority, trust, options.allow_insecure)
        self.own_certificate = await asyncio.to_thread(
            load_or_create_own_certificate,
            self.own_dir,
            self.application_uri,
            options.server_name,
            options.host,
        )

        limits = ConnectionLimits(
            max_sessions=options.max_clients,
            max_unauthenticated=options.max_unauthenticated,
            handshake_timeout_s=options.handshake_timeout_s,
            activation_timeout_s=options.activation_timeout_s,
        )
        server = GatewayServer(gate, limits, trust.is_trusted, options.allow_insecure)
        server.name = options.server_name
        server.manufacturer_name = "PAT Gateway"
        server.product_uri = "urn:pat-gateway"
        server.application_type = ua.ApplicationType.Server
        await server.init()
        await server.set_application_uri(self.application_uri)
        await server.set_build_info(
            "urn:pat-gateway",
            "PAT Gateway",
            options.server_name,
            _version(),
            "0",
            datetime.now(UTC),
        )
        server.set_endpoint(self.endpoint_url)
        server.iserver.certificate = self.own_certificate.certificate
        server.iserver.private_key = self.own_certificate.private_key
        policies = list(_SECURE_POLICIES)
        if options.allow_insecure:
            policies.insert(0, ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(policies, permission_ruleset=RoleRules(gate.identities, access))
        server.set_identity_tokens([ua.UserNameIdentityToken])
        server.set_certificate_validator(ClientCertificateCheck(trust))

        space = SignalSpace(server, self._namespace_for, frozenset(access.targets))
        self._space = space
        service = server.iserver.attribute_service
        service.write = WriteHandler(  # type: ignore[method-assign]
            access, gate.identities, lambda: space.namespace_index, service.write
        )
        await self._space.add(self._pending)
        commands = await add_command_methods(server, space.namespace_index, access, gate.identities)
        self._anchor_node = await self._space.add_anchor()
        self._pending.clear()
        await self._show_identities(self._space)
        await server.start()
        self._server = server
        self._clock = asyncio.create_task(
            self._run_clock(server), name=f"sink.{self.context.id}.clock"
        )
        log.info(
            "opcua_server.started",
            endpoint=self.endpoint_url,
            application_uri=self.application_uri,
            certificate=str(self.own_certificate.cert_path),
            certificate_created=self.own_certificate.created,
            trusted_clients=len(trust),
            users=len(users),
            signals=len(self._space.nodes),
            writable=sorted(access.targets),
            commands=commands,
        )
        if options.allow_insecure:
            log.warning(
                "opcua_server.insecure",
                detail="allow_insecure: the None security policy is offered; traffic on it is"
                " neither signed nor encrypted and clients need no certificate",
            )
        if not users:
            log.warning("opcua_server.no_users", detail="no users configured: nobody can log in")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
            self._clock = None
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()
            log.info("opcua_server.stopped", endpoint=self.endpoint_url)

    async def publish_anchor(self, anchor: Mapping[str, Any]) -> None:
        """Serve the audit trail's latest signed head (JSON) as the read-only variable
        ``<area>/gateway/audit_anchor``, so a client can keep a copy off the edge PC."""
        if self._anchor_node is None or self._server is None:
            return
        text = json.dumps(dict(anchor), separators=(",", ":"))
        await self._anchor_node.write_value(ua.Variant(text, ua.VariantType.String))

    async def send(self, samples: Sequence[Sample]) -> None:
        """Update the variables of ``samples``, in order; subscribers see every value."""
        space = self._space
        assert space is not None, "send before the sink was entered"
        if self._pending:
            await space.add(self._pending)
            self._pending.clear()
        if self._identities:
            await self._show_identities(space)
        nodes = space.nodes
        for sample in samples:
            node = nodes.get(sample.signal)
            if node is None:
                node = await space.add_from_sample(sample)
            if node.spectrum:
                axis = node.axis_changes(sample)
                if axis is not None:
                    # The axis first: a client notified of the spectrum finds its axis in place.
                    assert node.axis_value is not None and node.axis_eu is not None
                    if axis[1] is not None:
                        await set_value(node.axis_eu, axis[1])
                    await set_value(node.axis_value, axis[0])
            value = node.data_value(sample)
            attribute = node.value
            attribute.value = value
            if attribute.datachange_callbacks:
                await notify(attribute, value)

    def _namespace_for(self, area: str) -> str:
        return self.options.namespace_uri or f"urn:pat-gateway:{self.options.site}:{area}"

    async def _run_clock(self, server: GatewayServer) -> None:
        # ServerStatus.CurrentTime, which clients watch to see the server alive (asyncua's own
        # clock task is off: it could not be stopped promptly).
        aspace = server.iserver.aspace
        status_id = numeric_node(ObjectIds.Server_ServerStatus)
        time_id = numeric_node(ObjectIds.Server_ServerStatus_CurrentTime)
        status_attr: AttributeValue = aspace[status_id].attributes[AttributeIds.Value]
        time_attr: AttributeValue = aspace[time_id].attributes[AttributeIds.Value]
        while True:
            try:
                now = from_timestamp(time.time(), UTC)
                current = status_attr.value.Value if status_attr.value is not None else None
                server_status = copy.copy(current.Value) if current is not None else None
                if isinstance(server_status, ua.ServerStatusDataType):
                    server_status.CurrentTime = now
                    variant = ua.Variant(server_status, ua.VariantType.ExtensionObject)
                    await set_value(status_attr, ua.DataValue(variant, _GOOD, now, now))
                variant = ua.Variant(now, ua.VariantType.DateTime)
                await set_value(time_attr, ua.DataValue(variant, _GOOD, now, now))
            except Exception:  # a clock hiccup must not take the server down
                log.exception("opcua_server.clock_failed")
            await asyncio.sleep(1.0)
