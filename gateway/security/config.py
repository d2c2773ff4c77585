"""The ``security:`` section: the one user base, its roles and the lock-out policy.

Every interface that takes a login — the northbound OPC UA server, the local API, the CLI
through the API — checks it against these users; nothing else in a configuration holds
credentials. A user has a password *hash* (``patgw hash-password``), never a password.

Four roles are built in, each a set of :class:`Permission`:

========= =============================================================
viewer    read
operator  read, write (setpoints, within the declared limits)
engineer  read, write, configure (limits, models, configuration), audit
admin     read, manage_users, audit
========= =============================================================

``admin`` does not write setpoints: who manages the accounts is not who runs the process. A
configuration may add roles of its own (``roles:``) or redefine a built-in one's permissions.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..passwords import is_password_hash

__all__ = [
    "BUILTIN_ROLES",
    "LockoutConfig",
    "Permission",
    "RoleConfig",
    "SecurityConfig",
    "UserConfig",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$"
Name = Annotated[str, Field(pattern=_NAME, max_length=64)]


class Permission(StrEnum):
    """What a role allows."""

    READ = "read"
    """Read signals, health and the configuration (OPC UA browse/read/subscribe)."""
    WRITE = "write"
    """Request a write to a declared target (a setpoint), within its limits."""
    CONFIGURE = "configure"
    """Change limits, models or configuration (``patgw model``, reloads)."""
    MANAGE_USERS = "manage_users"
    """Unlock users locked out after failed logins."""
    AUDIT = "audit"
    """Read and export the audit trail through the API."""


BUILTIN_ROLES: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ}),
    "operator": frozenset({Permission.READ, Permission.WRITE}),
    "engineer": frozenset(
        {Permission.READ, Permission.WRITE, Permission.CONFIGURE, Permission.AUDIT}
    ),
    "admin": frozenset({Permission.READ, Permission.MANAGE_USERS, Permission.AUDIT}),
    # The system identity of a processor that writes (a controller): no person holds it.
    "controller": frozenset({Permission.READ, Permission.WRITE}),
}


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleConfig(_Closed):
    """A role: the permissions it grants."""

    permissions: frozenset[Permission] = Field(description="What holders of this role may do.")


class UserConfig(_Closed):
    """One person (or one system account) that may log in."""

    name: Name = Field(description="Login name, unique.")
    full_name: str = Field(
        default="",
        max_length=200,
        description="Printed name, shown in electronic signatures and the audit trail;"
        " defaults to the login name.",
    )
    password_hash: str = Field(
        description="The password's scrypt hash, as printed by `patgw hash-password`; never"
        " the password."
    )
    roles: tuple[Name, ...] = Field(min_length=1, description="Roles held, e.g. [operator].")
    enabled: bool = Field(default=True, description="false: every login is refused.")

    @field_validator("password_hash")
    @classmethod
    def _hash_not_password(cls, value: str) -> str:
        if not is_password_hash(value):
            raise ValueError(
                "not a password hash: a configuration never holds a password; run"
                " `patgw hash-password` and put the line it prints here"
            )
        return value

    @property
    def printed_name(self) -> str:
        return self.full_name or self.name


class LockoutConfig(_Closed):
    """Local lock-out: after ``max_failures`` failed logins of one user within ``window_s``
    seconds, that user's logins are refused for ``duration_s`` seconds, even with the right
    password. Kept in memory: a restart (which is audited) clears it."""

    max_failures: int = Field(default=5, ge=1, description="Failed logins that lock a user.")
    window_s: float = Field(default=300.0, gt=0, description="Window the failures count in.")
    duration_s: float = Field(default=900.0, gt=0, description="How long a lock-out lasts.")


class SecurityConfig(_Closed):
    """Users, roles and the lock-out policy, shared by every interface that takes a login."""

    users: tuple[UserConfig, ...] = Field(
        default=(), description="Accounts; none: no login is possible anywhere."
    )
    roles: dict[Name, RoleConfig] = Field(
        default_factory=dict,
        description="Roles beside (or replacing) the built-in viewer, operator, engineer and"
        " admin.",
    )
    lockout: LockoutConfig | None = Field(
        default_factory=LockoutConfig,
        description="Lock-out after repeated failed logins; null: none.",
    )

    @model_validator(mode="after")
    def _users_valid(self) -> SecurityConfig:
        names: set[str] = set()
        known = self.role_permissions()
        for i, user in enumerate(self.users):
            if user.name in names:
                raise ValueError(f"users[{i}].name: duplicate user {user.name!r}")
            names.add(user.name)
            for role in user.roles:
                if role not in known:
                    raise ValueError(
                        f"users[{i}].roles: unknown role {role!r} (roles: {', '.join(known)})"
                    )
        return self

    def role_permissions(self) -> dict[str, frozenset[Permission]]:
        """Every role (built-in and configured) and its permissions."""
        roles = dict(BUILTIN_ROLES)
        roles.update((name, role.permissions) for name, role in self.roles.items())
        return roles
