"""Who may open a session and what a session may do: the server's access control.

For the ``opcua_server`` sink, which hands these objects to asyncua. Three gates, each failing
closed:

1. **CreateSession** — :class:`ClientCertificateCheck`: the client certificate the client
   presents must be in the trust list, current, and name the client's ApplicationUri. Refused
   with ``BadSecurityChecksFailed`` whatever the reason (the detail goes to the log, so a
   probing peer learns nothing); an untrusted certificate is copied to the rejected folder.
2. **ActivateSession** — :class:`LoginGate`: checked again on the *secure channel's* certificate
   (asyncua 2.1.0 validates the CreateSession certificate only if the client sends one, and
   accepts a session on a ``None`` channel even when no ``None`` endpoint is offered). A
   ``None`` channel is refused with ``BadSecurityPolicyRejected`` unless ``allow_insecure``;
   then the user name and password, checked by the gateway's one user base
   (:class:`gateway.security.Authority`: ``security.users``, its lock-out, every attempt in the
   audit trail): unknown user, wrong password, locked out ``BadUserAccessDenied``. An anonymous
   (or certificate) identity token never gets here: only user name tokens are offered, and
   asyncua answers the others with ``BadIdentityTokenRejected``. No name is special: asyncua's
   password-less ``admin`` is not reachable through this gate.
3. **Every request** — :class:`RoleRules`, from the user's roles' permissions: ``read`` may
   browse, read, subscribe; ``write`` may also send Write requests, which reach only the
   variables of declared write targets and go through the gateway's write path (limits,
   audit; see :mod:`.writes`). Call, node management (AddNodes…) and RegisterServer: nobody.

Password checks cost ~50 ms of scrypt each, on the event loop (asyncua asks for the user
synchronously). After :data:`MAX_FAILURES` failed logins in :data:`FAILURE_WINDOW_S` seconds
from one client certificate, that client's further logins are refused without checking, which
bounds both guessing and the time a client can make the loop spend hashing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.control import Access
from gateway.security import AuthenticationError, Authority, Identity, Permission

from ._ua import ObjectIds, StatusCodes, numeric_node
from .pki import TrustList, common_name, fingerprint

__all__ = [
    "FAILURE_WINDOW_S",
    "MAX_FAILURES",
    "ClientCertificateCheck",
    "LoginGate",
    "RoleRules",
    "certificate_problem",
]

log = structlog.get_logger("plugins.opcua_server")

MAX_FAILURES: Final = 5
FAILURE_WINDOW_S: Final = 60.0
_INSECURE_CLIENT: Final = "<no certificate>"


_WRITE_REQUEST: Final = numeric_node(ObjectIds.WriteRequest_Encoding_DefaultBinary)
_CALL_REQUEST: Final = numeric_node(ObjectIds.CallRequest_Encoding_DefaultBinary)
_CHANGING_REQUESTS: Final = frozenset({_WRITE_REQUEST, _CALL_REQUEST})
# asyncua's list of what an ordinary user may ask, less what changes anything (Write, and Call:
# the server's only methods are the declared device commands, see .methods).
_READ_REQUESTS: Final = (
    frozenset(numeric_node(object_id) for object_id in USER_TYPES) - _CHANGING_REQUESTS
)


class RoleRules(SimpleRoleRuleset):
    """Request-level permissions from the logged-in user's roles (asyncua's permission
    ruleset): ``read`` may browse, read and subscribe; ``write`` may also send Write requests —
    which reach only the variables of declared write targets, and go through the gateway's
    write path (see :mod:`.writes`) — and Call requests (the declared device commands' Methods,
    through the same path: :mod:`.methods`)."""

    def __init__(self, identities: Mapping[str, Identity], access: Access | None = None) -> None:
        # SimpleRoleRuleset's own tables are not built: check_validity below decides alone.
        self._identities = identities
        self._access = access  # where a refused Write request is recorded

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        """Whether ``user`` may send a request of type ``action_type_id``."""
        # Only sessions that LoginGate let in carry a name with an identity; asyncua's default
        # Anonymous user of a not-yet-activated session gets nothing.
        identity = self._identities.get(user.name or "") if user.role is UserRole.User else None
        if identity is None:
            return False
        if action_type_id in _READ_REQUESTS:
            return identity.may(Permission.READ)
        if action_type_id in _CHANGING_REQUESTS:
            if identity.may(Permission.WRITE):
                return True
            if self._access is not None:
                call = action_type_id == _CALL_REQUEST
                self._access.note_refusal(
                    identity.name,
                    "(OPC UA Call request)" if call else "(OPC UA Write request)",
                    None,
                    "role",
                    f"user {identity.name!r} may not {'run commands' if call else 'write'}"
                    " (no role with the write permission)",
                    "opcua",
                    action="command.refused" if call else "write.refused",
                )
        return False


class _Throttle:
    """Failed logins per client, in a sliding window."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, client: str, now: float) -> bool:
        times = self._failures.get(client)
        if times is None:
            return False
        while times and now - times[0] > FAILURE_WINDOW_S:
            times.popleft()
        if not times:
            del self._failures[client]
            return False
        return len(times) >= MAX_FAILURES

    def failed(self, client: str, now: float) -> None:
        self._failures.setdefault(client, deque(maxlen=MAX_FAILURES)).append(now)


class LoginGate(UserManager):
    """asyncua user manager: the secure channel's certificate, then user name and password,
    checked by the gateway's one user base (``security.users``; every login audited)."""

    def __init__(self, authority: Authority, trust: TrustList, allow_insecure: bool) -> None:
        self._authority = authority
        self.identities: dict[str, Identity] = {}
        """Who each logged-in user name is (roles, permissions), for RoleRules and writes."""
        self._trust = trust
        self._allow_insecure = allow_insecure
        self._throttle = _Throttle()

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        """The session's user, None (→ BadUserAccessDenied), or a ServiceError."""
        client = self._check_channel(certificate)
        if username is None:
            # Not a user name token (asyncua only lets UserName tokens reach here; be sure).
            raise ServiceError(StatusCodes.BadIdentityTokenRejected)
        now = time.monotonic()
        if self._throttle.blocked(client, now):
            log.warning("opcua_server.login_throttled", user=username, client=client)
            return None
        try:
            identity = self._authority.authenticate(
                username, password or "", interface="opcua", peer=client
            )
        except AuthenticationError as exc:
            self._throttle.failed(client, now)
            log.warning("opcua_server.login_refused", user=username, client=client, reason=exc.why)
            return None
        self.identities[identity.name] = identity
        log.info("opcua_server.login", user=username, roles=sorted(identity.roles), client=client)
        return User(role=UserRole.User, name=username)

    def _check_channel(self, certificate: Any) -> str:
        if not certificate:
            # asyncua passes b"" for a None channel, which it opens whatever the endpoints say.
            if not self._allow_insecure:
                log.warning("opcua_server.session_refused", reason="unsecured channel")
                raise ServiceError(StatusCodes.BadSecurityPolicyRejected)
            return _INSECURE_CLIENT
        der = bytes(certificate)
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise ServiceError(StatusCodes.BadSecurityChecksFailed) from exc
        problem = certificate_problem(cert, self._trust)
        if problem is not None:
            log.warning("opcua_server.session_refused", reason=problem, client=common_name(cert))
            raise ServiceError(StatusCodes.BadSecurityChecksFailed)
        return f"{common_name(cert)} [{fingerprint(der)[:16]}]"


def certificate_problem(
    cert: x509.Certificate, trust: TrustList, application_uri: str | None = None
) -> str | None:
    """Why a client certificate is refused, or None. Untrusted ones go to the rejected folder."""
    if not trust.is_trusted(cert.public_bytes(serialization.Encoding.DER)):
        copy = trust.reject(cert)
        where = f"; copied to {copy}, move it to {trust.trusted_dir} to trust it" if copy else ""
        return f"certificate not trusted{where}"
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return (
            f"certificate not valid now (valid {cert.not_valid_before_utc.isoformat()} to"
            f" {cert.not_valid_after_utc.isoformat()})"
        )
    if application_uri is not None:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if application_uri not in uris:
            return f"certificate does not name the client's ApplicationUri {application_uri}"
    return None


class ClientCertificateCheck:
    """asyncua certificate validator, called at CreateSession with the client's certificate."""

    def __init__(self, trust: TrustList) -> None:
        self._trust = trust

    async def __call__(self, cert: x509.Certificate, client: ua.ApplicationDescription) -> None:
        """Return if the client may go on; raise ``ServiceError`` if not."""
        problem = certificate_problem(cert, self._trust, client.ApplicationUri)
        if problem is not None:
            log.warning(
                "opcua_server.session_refused",
                reason=problem,
                client=common_name(cert),
                application_uri=client.ApplicationUri,
            )
            raise ServiceError(StatusCodes.BadSecurityChecksFailed)
