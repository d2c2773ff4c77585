"""asyncua's ``Server`` with what it leaves open closed, for the ``opcua_server`` sink.

asyncua 2.1.0 (pinned) serves a ``None`` endpoint, anonymous users, every client certificate
and a password-less ``admin`` by default; the sink switches those off through the public API.
What the API cannot reach is closed here, in subclasses:

* **Transport limits** (asyncua #1962: an unauthenticated peer could make the server hold
  ~100 MB per connection in unfinished chunk sequences, with 1000 connections allowed):
  chunks of at most :data:`MAX_CHUNK_BYTES`, messages of at most :data:`MAX_MESSAGE_BYTES`
  (so at most 65 chunks).
* **Lock-out by connections that never log in** (asyncua counts every TCP connection against
  one cap, so 20 idle sockets kept every client out): see :class:`ConnectionLimits`. Logged-in
  connections (an activated session) and connections still logging in are bounded apart; the
  latter must open a secure channel within ``handshake_timeout_s`` and activate a session
  within ``activation_timeout_s`` of connecting. When their pool is full a new connection
  evicts one that has not *proven* itself — opened a secure channel with a trusted client
  certificate, which a peer without a trusted key cannot do: from the address holding the most
  such connections, the one whose last step (connecting, its Hello) is the oldest. A flood
  from another host only evicts its own connections; one from the client's own address pushes
  the client out only if the pool turns over completely between two of the client's steps
  (milliseconds; ``benchmarks/opcua_flood.py`` measures it). The newcomer is refused only when
  every connection in the pool has proven itself.
* **Oversized chunk headers**: asyncua buffers a whole chunk before comparing its size with the
  limit (and never compares a chunk that arrived complete in one read), so a peer announcing a
  4 GB chunk could make it buffer whatever it sends and a 100 KB Hello was ACKed;
  :class:`_BoundedProtocol` answers ``BadTcpMessageTooLarge`` and closes such a connection as
  soon as the header is in.
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
* **Method calls** reach their callback without the calling session (asyncua passes only the
  object and the arguments); the user of the session whose Call is being processed is made
  available to it by :func:`calling_user`, so a device command runs as that user.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import structlog
from asyncua import ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import User
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.server.uaprocessor import UaProcessor
from asyncua.server.user_managers import UserManager
from asyncua.ua.ua_binary import uatcp_to_binary

from ._ua import ObjectIds, StatusCodes, numeric_node

__all__ = [
    "MAX_CHUNK_BYTES",
    "MAX_MESSAGE_BYTES",
    "ConnectionLimits",
    "GatewayServer",
    "calling_user",
]

log = structlog.get_logger("plugins.opcua_server")

MAX_CHUNK_BYTES: Final = 65535
# Requests are small (a Read of many nodes, a Write); responses are chunked by the chunk size
# whatever their length. 4 MiB leaves room for a large Browse or Read request.
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
_PENDING_MESSAGES: Final = 64  # parsed requests queued per connection (asyncua: 500)
_MAX_SUBSCRIPTIONS: Final = 200  # across all sessions (asyncua: 1000)
_LOG_EVERY_S: Final = 10.0  # a flood closes connections by the thousand: log a tally instead


_CREATE_SESSION = numeric_node(ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)
_ACTIVATE_SESSION = numeric_node(ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary)
_CALL = numeric_node(ObjectIds.CallRequest_Encoding_DefaultBinary)
_CALLER: contextvars.ContextVar[User | None] = contextvars.ContextVar("opcua_caller", default=None)


def calling_user() -> User | None:
    """The user of the session whose Call request is being processed (None outside one)."""
    return _CALLER.get()


_NO_SECURITY = "http://opcfoundation.org/UA/SecurityPolicy#None"
_ERROR = cast(ua.MessageType, ua.MessageType.Error)  # asyncua types its members as bytes


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections the server holds, and how long one may take to log in.

    ``max_sessions`` bounds connections with an activated session; ``max_unauthenticated``
    those still logging in, whose secure channel must be open ``handshake_timeout_s`` and whose
    session activated ``activation_timeout_s`` after the TCP connection was accepted.
    """

    max_sessions: int
    max_unauthenticated: int
    handshake_timeout_s: float
    activation_timeout_s: float


class _Tally:
    """One warning per reason every :data:`_LOG_EVERY_S`, with how many times it happened."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._logged: dict[str, float] = {}

    def __call__(self, reason: str, peer: Any, **fields: Any) -> None:
        count = self._counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged.get(reason, -math.inf) < _LOG_EVERY_S:
            self._counts[reason] = count
            return
        self._counts[reason], self._logged[reason] = 0, now
        log.warning(
            "opcua_server.connection_closed", reason=reason, peer=str(peer), times=count, **fields
        )


class _Admission:
    """The two pools of connections of one listener, and who gets evicted from which."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        # Connections logging in, by their last step (connected, Hello) — oldest first.
        self.logging_in: dict[_BoundedProtocol, None] = {}
        self.logged_in: set[_BoundedProtocol] = set()
        self.tally = _Tally()

    def admit(self, newcomer: _BoundedProtocol) -> bool:
        """Make room for ``newcomer`` in the pre-login pool; False if it must be refused."""
        if len(self.logging_in) >= self.limits.max_unauthenticated:
            victim = self._victim()
            if victim is None:
                self.tally("refused: all logging in with trusted certificates", newcomer.peer_name)
                return False
            pool = self.limits.max_unauthenticated
            self.tally("evicted: oldest of a full pre-login pool", victim.peer_name, pool=pool)
            self.forget(victim)
            victim.drop()
        self.logging_in[newcomer] = None
        return True

    def _victim(self) -> _BoundedProtocol | None:
        # From the address holding the most unproven connections (a flood from one host
        # evicts its own, whoever else waits), the one whose last step is the oldest.
        per_host: dict[str, int] = {}
        for protocol in self.logging_in:
            if not protocol.proven:
                per_host[protocol.host] = per_host.get(protocol.host, 0) + 1
        if not per_host:
            return None
        crowded = max(per_host, key=per_host.__getitem__)
        return next(p for p in self.logging_in if not p.proven and p.host == crowded)

    def greeted(self, protocol: _BoundedProtocol) -> None:
        """A first Hello: a step forward, to the back of the eviction line."""
        if protocol in self.logging_in:
            del self.logging_in[protocol]
            self.logging_in[protocol] = None

    def may_activate(self, protocol: _BoundedProtocol) -> bool:
        return protocol in self.logged_in or len(self.logged_in) < self.limits.max_sessions

    def activated(self, protocol: _BoundedProtocol) -> None:
        if protocol in self.logging_in:  # else evicted meanwhile, and being closed
            del self.logging_in[protocol]
            self.logged_in.add(protocol)

    def forget(self, protocol: _BoundedProtocol) -> None:
        self.logging_in.pop(protocol, None)
        self.logged_in.discard(protocol)


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
    def __init__(self, protocol: _BoundedProtocol) -> None:
        super().__init__(protocol.iserver, protocol.transport, protocol.limits)
        self._protocol = protocol

    async def process(self, header: Any, body: Any) -> bool:
        if not self._protocol.greeted and header.MessageType == ua.MessageType.Hello:
            self._protocol.greeted = True
            self._protocol.admission.greeted(self._protocol)
        return await super().process(header, body)  # type: ignore[no-any-return,no-untyped-call]

    def open_secure_channel(self, algohdr: Any, seqhdr: Any, body: Any) -> None:
        super().open_secure_channel(algohdr, seqhdr, body)  # type: ignore[no-untyped-call]
        policy = self._connection.security_policy
        peer = policy.peer_certificate
        if policy.URI != _NO_SECURITY and peer and self._protocol.is_trusted(bytes(peer)):
            self._protocol.proven = True

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
        elif typeid == _ACTIVATE_SESSION:
            if self.session is None:
                # No transfer of another channel's session (asyncua would bind it unauthenticated).
                log.warning("opcua_server.session_refused", reason="session of another channel")
                raise ServiceError(StatusCodes.BadSessionIdInvalid)
            if not self._protocol.admission.may_activate(self._protocol):
                log.warning(
                    "opcua_server.session_refused",
                    reason="max_clients sessions active",
                    max_clients=self._protocol.admission.limits.max_sessions,
                )
                raise ServiceError(StatusCodes.BadTooManySessions)
        caller = _CALLER.set(
            self.session.user if typeid == _CALL and self.session is not None else None
        )
        try:
            result = await super()._process_message(  # type: ignore[no-untyped-call]
                typeid, requesthdr, seqhdr, body
            )
        finally:
            _CALLER.reset(caller)
        if typeid == _ACTIVATE_SESSION and self.session is not None and self.session.is_activated():
            self._protocol.logged_in()
        return result


class _BoundedProtocol(OPCUAProtocol):
    """asyncua's connection with admission, login deadlines and a chunk-size check on arrival."""

    admission: _Admission
    is_trusted: Callable[[bytes], bool]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.host = ""  # the peer's address
        self.greeted = False  # a Hello came
        self.proven = False  # a secure channel with a trusted client certificate is open
        self._deadlines: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: Any) -> None:
        self.peer_name = transport.get_extra_info("peername")
        self.host = str(self.peer_name[0] if isinstance(self.peer_name, tuple) else self.peer_name)
        if not self.admission.admit(self):
            transport.close()
            return
        super().connection_made(transport)
        processor = _GatewayProcessor(self)
        processor.set_policies(self.policies)  # type: ignore[no-untyped-call]
        self.processor = processor
        limits, loop = self.admission.limits, asyncio.get_running_loop()
        self._deadlines = [
            loop.call_later(limits.handshake_timeout_s, self._check_channel),
            loop.call_later(limits.activation_timeout_s, self._check_session),
        ]

    def connection_lost(self, ex: BaseException | None) -> None:
        self._cancel_deadlines()
        self.admission.forget(self)
        super().connection_lost(ex)

    def logged_in(self) -> None:
        """The session on this connection is activated: it leaves the pre-login pool."""
        self._cancel_deadlines()
        self.admission.activated(self)

    def drop(self) -> None:
        """Close the connection (evicted or late); its bookkeeping ends in connection_lost."""
        self._cancel_deadlines()
        if self.transport is not None:
            self.transport.close()

    def _cancel_deadlines(self) -> None:
        for handle in self._deadlines:
            handle.cancel()
        self._deadlines = []

    def _check_channel(self) -> None:
        processor = self.processor
        if processor is not None and not processor._connection.is_open():
            timeout = self.admission.limits.handshake_timeout_s
            self.admission.tally(f"no secure channel within {timeout} s", self.peer_name)
            self.drop()

    def _check_session(self) -> None:
        session = self.processor.session if self.processor is not None else None
        if session is not None and session.is_activated():
            return
        timeout = self.admission.limits.activation_timeout_s
        self.admission.tally(f"no activated session within {timeout} s", self.peer_name)
        self.drop()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return  # refused: asyncua's buffer is not even started
        announced = _oversized_chunk(self._buffer, data)
        if announced is None:
            super().data_received(data)
            return
        log.warning("opcua_server.oversized_chunk", peer=str(self.peer_name), announced=announced)
        self._buffer = b""
        error = ua.ErrorMessage(
            ua.StatusCode(ua.UInt32(StatusCodes.BadTcpMessageTooLarge)),
            ua.String(f"chunk of {announced} bytes, at most {MAX_CHUNK_BYTES}"),
        )
        self.transport.write(uatcp_to_binary(_ERROR, error))
        self.drop()


def _oversized_chunk(buffered: bytes, data: bytes) -> int | None:
    """The announced size of the first chunk in ``buffered + data`` above the limit, or None.

    Every OPC UA TCP message starts with its type (4 bytes) and its whole size (4 bytes, little
    endian); asyncua compares that size with the limit only for what is left in its buffer,
    so a complete oversized message in one read went through.
    """
    joined = buffered + data if buffered else data
    offset, end = 0, len(joined)
    while end - offset >= 8:
        size = int.from_bytes(joined[offset + 4 : offset + 8], "little")
        if size > MAX_CHUNK_BYTES:
            return size
        if size < 8:
            return None  # malformed: asyncua closes the connection itself
        offset += size
    return None


class _BoundedBinaryServer(BinaryServer):
    def __init__(
        self, *args: Any, admission: _Admission, is_trusted: Callable[[bytes], bool], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._admission = admission
        self._is_trusted = is_trusted

    def _make_protocol(self) -> OPCUAProtocol:
        protocol = _BoundedProtocol(
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
        )
        protocol.admission = self._admission
        protocol.is_trusted = self._is_trusted
        return protocol


class GatewayServer(Server):
    """An asyncua server with bounded transport, no RegisterServer and no built-in clock.

    Security policies, identity tokens, certificates and users are still set by the caller
    through asyncua's API; this class only fixes what that API cannot. ``is_trusted`` says
    whether a client certificate (DER) is in the trust list: a connection whose secure channel
    uses a trusted one is not evicted by newcomers while it logs in.
    """

    def __init__(
        self,
        user_manager: UserManager,
        limits: ConnectionLimits,
        is_trusted: Callable[[bytes], bool],
        allow_insecure: bool = False,
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
        self.connection_limits = limits
        self._is_trusted = is_trusted
        iserver.allow_remote_admin = False
        # _Admission bounds connections (both pools); asyncua's single cap would count an
        # evicted connection until its close completes, and refuse the client that evicted it.
        iserver.max_connections = sys.maxsize
        iserver.max_pending_activation_seconds = 0  # _BoundedProtocol's deadlines instead
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
            self.bserver = _BoundedBinaryServer(
                self.iserver,
                host,
                port,
                self.limits,
                admission=_Admission(self.connection_limits),
                is_trusted=self._is_trusted,
            )
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except BaseException:
            await self.iserver.stop()
            raise
