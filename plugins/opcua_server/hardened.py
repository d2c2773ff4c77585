"""asyncua's ``Server`` with what it leaves open closed, for the ``opcua_server`` sink.

asyncua 2.1.0 (pinned) serves a ``None`` endpoint, anonymous users, every client certificate
and a password-less ``admin`` by default; the sink switches those off through the public API.
What the API cannot reach is closed here, in subclasses:

* **Transport limits** (asyncua #1962: an unauthenticated peer could make the server hold
  ~100 MB per connection in unfinished chunk sequences, with 1000 connections allowed):
  chunks of at most :data:`MAX_CHUNK_BYTES`, messages of at most :data:`MAX_MESSAGE_BYTES`
  (so at most 65 chunks), :attr:`OpcUaServerOptions.max_clients` connections, and a
  connection that has not activated a session after :data:`ACTIVATION_TIMEOUT_S` is closed.
* **Oversized chunk headers**: asyncua buffers a whole chunk before comparing its size with the
  limit, so a peer announcing a 4 GB chunk could make it buffer whatever it sends;
  :class:`_BoundedProtocol` closes such a connection as soon as the header is in.
* **RegisterServer**: asyncua answers it without a session, letting anyone add entries to the
  server's FindServers answer; refused here (``BadServiceUnsupported``).
* **Session transfer**: asyncua lets a new channel take over a live session by sending
  ActivateSession with its (sequential, guessable) authentication token, and binds the session
  to the channel *before* checking the signature or the user: a refused activation left an
  unauthenticated peer reading as the session's user. Here ActivateSession is only accepted
  for the session created on the same channel (a reconnecting client creates a new session),
  and tokens are random.
* **Session floods**: asyncua registers a session at CreateSession and keeps it when the same
  channel creates another, so one peer could pile up thousands of never-activated sessions.
  Here a channel gets one session, and on a channel without security no session at all unless
  the operator allowed insecure endpoints.
* **The clock task** that updates ``ServerStatus.CurrentTime`` sleeps a second before it looks at
  its stop flag, which made every stop last up to a second; the sink runs its own.
"""

from __future__ import annotations

import math
import secrets
import socket
from typing import Any, Final

import structlog
from asyncua import ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager

from ._ua import ObjectIds, StatusCodes, numeric_node

__all__ = [
    "ACTIVATION_TIMEOUT_S",
    "MAX_CHUNK_BYTES",
    "MAX_MESSAGE_BYTES",
    "GatewayServer",
]

log = structlog.get_logger("plugins.opcua_server")

MAX_CHUNK_BYTES: Final = 65535
# Requests are small (a Read of many nodes, a Write); responses are chunked by the chunk size
# whatever their length. 4 MiB leaves room for a large Browse or Read request.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
ACTIVATION_TIMEOUT_S: Final = 10.0
_PENDING_MESSAGES: Final = 64  # parsed requests queued per connection (asyncua: 500)
_MAX_SUBSCRIPTIONS: Final = 200  # across all sessions (asyncua: 1000)


_CREATE_SESSION = numeric_node(ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)
_ACTIVATE_SESSION = numeric_node(ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary)
_NO_SECURITY = "http://opcfoundation.org/UA/SecurityPolicy#None"


class _GatewayInternalServer(InternalServer):
    allow_insecure = False

    def create_session(self, name: str, user: Any = None, external: bool = False) -> Any:
        session: InternalSession = (
            super().create_session(name, external=external)
            if user is None
            else super().create_session(name, user=user, external=external)
        )
        # asyncua numbers tokens from 1000; a token must not be guessable. The session registered
        # itself under the old token: move it, or closing it would never unregister it.
        if external:
            self.unregister_external_session(session)
        session.auth_token = ua.NodeId(
            ua.ByteString(secrets.token_bytes(32)), ua.Int16(0), ua.NodeIdType.ByteString
        )
        if external:
            self.register_external_session(session)
        return session

    def register_server(self, server: Any, conf: Any = None) -> None:
        raise ServiceError(StatusCodes.BadServiceUnsupported)

    def register_server2(self, params: ua.RegisterServer2Parameters) -> None:
        raise ServiceError(StatusCodes.BadServiceUnsupported)


class _GatewayProcessor(UaProcessor):
    async def _process_message(  # type: ignore[no-untyped-def]
        self, typeid, requesthdr, seqhdr, body
    ):
        if typeid == _CREATE_SESSION:
            if self.session is not None:
                log.warning("opcua_server.session_refused", reason="second session on a channel")
                raise ServiceError(StatusCodes.BadTooManySessions)
            unsecured = self._connection.security_policy.URI == _NO_SECURITY
            if unsecured and not getattr(self.iserver, "allow_insecure", False):
                log.warning("opcua_server.session_refused", reason="unsecured channel")
                raise ServiceError(StatusCodes.BadSecurityPolicyRejected)
        elif typeid == _ACTIVATE_SESSION and self.session is None:
            # No transfer of another channel's session (asyncua would bind it unauthenticated).
            log.warning("opcua_server.session_refused", reason="session of another channel")
            raise ServiceError(StatusCodes.BadSessionIdInvalid)
        return await super()._process_message(  # type: ignore[no-untyped-call]
            typeid, requesthdr, seqhdr, body
        )


class _BoundedProtocol(OPCUAProtocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.processor is not None:  # None: refused at max_connections
            processor = _GatewayProcessor(self.iserver, self.transport, self.limits)
            processor.set_policies(self.policies)  # type: ignore[no-untyped-call]
            self.processor = processor

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # What asyncua leaves in its buffer is the start of one chunk; its size is in bytes 4-8.
        pending: bytes = self._buffer
        if self.transport is None or not pending:
            return
        announced = int.from_bytes(pending[4:8], "little") if len(pending) >= 8 else 0
        if len(pending) > MAX_CHUNK_BYTES or announced > MAX_CHUNK_BYTES:
            log.warning(
                "opcua_server.oversized_chunk", peer=str(self.peer_name), announced=announced
            )
            self._buffer = b""
            self.transport.close()


class _BoundedBinaryServer(BinaryServer):
    def _make_protocol(self) -> OPCUAProtocol:
        return _BoundedProtocol(
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
        )


class GatewayServer(Server):
    """An asyncua server with bounded transport, no RegisterServer and no built-in clock.

    Security policies, identity tokens, certificates and users are still set by the caller
    through asyncua's API; this class only fixes what that API cannot.
    """

    def __init__(
        self, user_manager: UserManager, max_clients: int, allow_insecure: bool = False
    ) -> None:
        iserver = _GatewayInternalServer(user_manager=user_manager)
        iserver.allow_insecure = allow_insecure
        super().__init__(iserver=iserver)
        self.limits = TransportLimits(
            max_recv_buffer=MAX_CHUNK_BYTES,
            max_send_buffer=MAX_CHUNK_BYTES,
            max_chunk_count=math.ceil(MAX_MESSAGE_BYTES / MAX_CHUNK_BYTES),
            max_message_size=MAX_MESSAGE_BYTES,
        )
        iserver.allow_remote_admin = False
        iserver.max_connections = max_clients
        iserver.max_pending_activation_seconds = ACTIVATION_TIMEOUT_S
        iserver.max_pending_messages_per_connection = _PENDING_MESSAGES
        iserver.max_subscriptions = _MAX_SUBSCRIPTIONS
        self.disable_clock(True)

    async def start(self) -> None:
        """asyncua's ``Server.start`` with :class:`_BoundedBinaryServer` as the listener."""
        if self.iserver.certificate is not None:
            uacrypto.check_certificate(
                self.iserver.certificate, self.get_application_uri(), socket.gethostname()
            )
        await self._setup_server_nodes()
        await self.iserver.start()
        try:
            host, port = self._get_bind_socket_info()
            assert host is not None and port is not None
            self.bserver = _BoundedBinaryServer(self.iserver, host, port, self.limits)
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except BaseException:
            await self.iserver.stop()
            raise
