"""Who is asking: logins checked against the one user base, with lock-out, every one audited.

:meth:`Authority.authenticate` is synchronous (the OPC UA server asks for the user from
asyncua's synchronous callback) and costs one scrypt check, ~50 ms, also for an unknown user
(so a refusal takes as long whatever the reason, and the name's existence does not show). Each
attempt — success or failure with its precise reason — goes to the audit trail through the
``audit`` callback; the caller only learns "unknown user or wrong password", a lock-out, or a
disabled account.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from ..errors import GatewayError
from ..passwords import verify_password
from .config import Permission, SecurityConfig, UserConfig

if TYPE_CHECKING:
    from ..audit import AuditEvent

__all__ = ["AuthenticationError", "Authority", "Identity", "NotPermittedError"]

log = structlog.get_logger("gateway.security")

_MAX_TRACKED = 4096
"""Most names whose failures (and lock-outs) are remembered at once."""


# Checked against when the user is unknown, so a refusal always costs one scrypt check. A
# constant (made once by hash_password, with its parameters; the password was random and thrown
# away) rather than a hash computed at import: that was one scrypt at every start of `patgw`.
_DUMMY_HASH = (
    "scrypt$16384$8$1$gx/u503ShZytk/xEWwnMdw==$f2u9OeMowvrNYqjW4B4Fh5uw+KA93lALDBS2hziy480="
)


class AuthenticationError(GatewayError):
    """A login was refused; the message is safe to show the one who tried, ``why`` is the
    precise reason (unknown user, wrong password...) for the log and the audit trail."""

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(message)
        self.why = why or message


class NotPermittedError(GatewayError):
    """An authenticated user lacks the permission or role an action needs."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user: name, printed name, roles and what they permit."""

    name: str
    full_name: str
    roles: frozenset[str]
    permissions: frozenset[Permission]

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions


class Authority:
    """The user base of one configuration, with its lock-out state (in memory)."""

    def __init__(
        self,
        config: SecurityConfig,
        audit: Callable[[AuditEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._users: dict[str, UserConfig] = {user.name: user for user in config.users}
        self._roles = config.role_permissions()
        self._audit = audit
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def bind_audit(self, audit: Callable[[AuditEvent], None] | None) -> None:
        """Where login records go (the runtime's audit recorder, once the trail is open)."""
        self._audit = audit

    @property
    def users(self) -> tuple[UserConfig, ...]:
        return self.config.users

    def role_permissions(self, role: str) -> frozenset[Permission]:
        return self._roles.get(role, frozenset())

    def identity(self, user: UserConfig) -> Identity:
        permissions = frozenset().union(*(self.role_permissions(r) for r in user.roles))
        return Identity(user.name, user.printed_name, frozenset(user.roles), permissions)

    def authenticate(
        self, name: str, password: str, *, interface: str, peer: str = "", purpose: str = "login"
    ) -> Identity:
        """The identity of ``name`` if ``password`` is theirs and they may log in now; else
        :class:`AuthenticationError`. ``purpose`` is ``login``, or ``signature`` for the
        password re-entered to sign a record (audited as such)."""
        now = self._clock()
        user = self._users.get(name)
        locked = self._lock_remaining(name[:64], now)
        if locked is not None:
            # Not even checked: guessing during a lock-out learns nothing.
            self._record(name, interface, peer, purpose, "refused", "locked out")
            raise AuthenticationError(
                f"user {name!r} is locked out after repeated failed logins; try again in"
                f" {max(1, round(locked))} s, or ask an admin to unlock",
                "locked out",
            )
        valid = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        if user is None or not valid:
            why = "unknown user" if user is None else "wrong password"
            self._record(name, interface, peer, purpose, "refused", why)
            self._failed(name, now, interface)
            raise AuthenticationError("login refused: unknown user or wrong password", why)
        if not user.enabled:
            self._record(name, interface, peer, purpose, "refused", "account disabled")
            raise AuthenticationError(
                f"login refused: user {name!r} is disabled", "account disabled"
            )
        self._failures.pop(name, None)
        self._record(name, interface, peer, purpose, "ok", "")
        return self.identity(user)

    def unlock(self, name: str, by: Identity) -> bool:
        """Lift ``name``'s lock-out (``manage_users``); True if there was one."""
        if not by.may(Permission.MANAGE_USERS):
            raise NotPermittedError(f"user {by.name!r} may not unlock users (needs manage_users)")
        was = self._locked_until.pop(name, None) is not None
        self._failures.pop(name, None)
        self._emit("user.unlocked", by.name, name, "ok" if was else "no-op", {})
        return was

    def locked_out(self) -> dict[str, float]:
        """Users locked out now, with the seconds left."""
        now = self._clock()
        out = {}
        for name in list(self._locked_until):
            left = self._lock_remaining(name, now)
            if left is not None:
                out[name] = left
        return out

    # -- internals ----------------------------------------------------------------------------
    def _lock_remaining(self, name: str, now: float) -> float | None:
        until = self._locked_until.get(name)
        if until is None:
            return None
        if now >= until:
            del self._locked_until[name]  # expired: the next login is checked normally
            self._failures.pop(name, None)
            return None
        return until - now

    def _failed(self, name: str, now: float, interface: str) -> None:
        policy = self.config.lockout
        if policy is None:
            return
        # Unknown names are locked out like known ones (or the lock-out would tell which names
        # exist), in a bounded table: the least recently failed name makes room.
        name = name[:64]
        if name not in self._failures and len(self._failures) >= _MAX_TRACKED:
            del self._failures[next(iter(self._failures))]
        failures = self._failures.pop(name, None) or deque()
        self._failures[name] = failures  # now the most recent
        failures.append(now)
        while failures and failures[0] < now - policy.window_s:
            failures.popleft()
        if len(failures) >= policy.max_failures:
            if name not in self._locked_until and len(self._locked_until) >= _MAX_TRACKED:
                del self._locked_until[next(iter(self._locked_until))]
            self._locked_until[name] = now + policy.duration_s
            failures.clear()
            log.warning("security.locked_out", user=name, duration_s=policy.duration_s)
            self._emit(
                "user.locked_out",
                "system",
                name,
                "ok",
                {
                    "failures": policy.max_failures,
                    "window_s": policy.window_s,
                    "duration_s": policy.duration_s,
                    "interface": interface,
                },
            )

    def _record(
        self, name: str, interface: str, peer: str, purpose: str, outcome: str, reason: str
    ) -> None:
        name = name[:64]  # whatever a client sent as its name: bounded in the log and trail
        if outcome != "ok":
            log.warning(
                f"security.{purpose}_refused", user=name, interface=interface, peer=peer, why=reason
            )
        self._emit(
            purpose if outcome == "ok" else f"{purpose}.failed",
            name,
            interface,
            outcome,
            {"interface": interface, "peer": peer, "why": reason}
            if reason
            else {"interface": interface, "peer": peer},
        )

    def _emit(
        self, action: str, user: str, target: str, outcome: str, details: dict[str, object]
    ) -> None:
        if self._audit is None:
            return
        from ..audit import AuditEvent

        reason = str(details.get("why", ""))
        self._audit(
            AuditEvent(
                action=action,
                user=user,
                target=target,
                reason=reason,
                outcome=outcome,
                details=details,
            )
        )
