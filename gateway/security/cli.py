"""Logins for commands that change what a gateway runs (``patgw model fit --config``): the
configuration's user base, a permission check, and the action's record in its audit trail.

The password comes from a prompt, or one line on stdin, never the command line. Each attempt is
recorded like any other login (interface ``cli``, with the operating-system user as the peer).
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from ..audit import AuditEvent, trail_for
from ..config import GatewayConfig
from ..loader import read_config
from ..oscompat import os_user
from .authority import Authority, Identity, NotPermittedError
from .config import Permission

__all__ = ["CommandLogin", "login_for_command"]


class CommandLogin:
    """A user logged in for one command run against ``config``; :meth:`record` appends to its
    audit trail (durably; the gateway may be running and appending too)."""

    def __init__(self, config: GatewayConfig, identity: Identity) -> None:
        self.config = config
        self.identity = identity

    def record(self, event: AuditEvent) -> int:
        with trail_for(self.config).open() as trail:
            return int(trail.append(event).seq)


def login_for_command(
    config_path: Path, user: str, permission: Permission, command: str
) -> CommandLogin:
    """Authenticate ``user`` against ``config_path``'s users and require ``permission``;
    AuthenticationError or NotPermittedError (each recorded) otherwise."""
    config = read_config(config_path)
    peer = f"os-user {os_user()}"

    def record(event: AuditEvent) -> None:
        with trail_for(config).open() as trail:
            trail.append(event)

    authority = Authority(config.security, record)
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {user}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    identity = authority.authenticate(user, password, interface="cli", peer=peer)
    if not identity.may(permission):
        record(
            AuditEvent(
                action=f"{command}.refused",
                user=identity.name,
                outcome="refused",
                reason=f"needs the {permission.value} permission",
                details={"interface": "cli", "peer": peer},
            )
        )
        raise NotPermittedError(
            f"user {identity.name!r} may not run {command}: it needs the {permission.value!r}"
            " permission (role engineer)"
        )
    return CommandLogin(config, identity)
