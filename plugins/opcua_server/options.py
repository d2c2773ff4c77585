"""The ``options:`` of the ``opcua_server`` sink.

Secure by default: encrypted endpoints only, username and password logins only, client
certificates only from a trust list, listening on loopback. Each relaxation is an explicit,
named option.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway import ConfigPath

__all__ = ["OpcUaServerOptions"]

DEFAULT_PORT = 4840  # IANA's port for OPC UA over TCP


class OpcUaServerOptions(BaseModel):
    """Where the server listens, who may log in, and what it trusts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description=(
            "Address to listen on. Loopback by default; 0.0.0.0 opens the server to the network."
        ),
    )
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, description="TCP port to listen on.")
    endpoint_path: str = Field(
        default="/pat-gateway",
        pattern=r"^(/[A-Za-z0-9._~-]*)*$",
        description="Path part of the endpoint URL, e.g. /pat-gateway (empty for none).",
    )
    application_uri: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "The server's ApplicationUri, also in its certificate. Default:"
            " urn:pat-gateway:<host name>:<sink id>."
        ),
    )
    server_name: str = Field(
        default="PAT Gateway",
        min_length=1,
        max_length=64,
        description="ApplicationName shown to clients and the certificate's common name.",
    )
    site: str = Field(
        default="site",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Plant or site name, the middle of the default namespace URI.",
    )
    namespace_uri: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Namespace of the signal nodes. Default: urn:pat-gateway:<site>:<area>, the area"
            " being the first part of the signal ids."
        ),
    )
    users: Any = Field(
        default=None,
        description=(
            "Moved: the server's logins are the configuration's security.users (one user base"
            " for every interface). Giving users here is an error that says how to move them."
        ),
        json_schema_extra={"deprecated": True},
    )
    trusted_clients_dir: ConfigPath | None = Field(
        default=None,
        description=(
            "Folder of trusted client certificates (.der or .pem), one file each; only these"
            " clients may open a session. A relative path is relative to the config file's"
            " folder. Default: <data_dir>/opcua/pki/trusted. Read again whenever it changes."
        ),
    )
    allow_insecure: bool = Field(
        default=False,
        description=(
            "Also offer the None security policy: no signing, no encryption, no client"
            " certificate. Logins still need a password. For isolated test benches only."
        ),
    )
    max_clients: int = Field(
        default=20,
        ge=1,
        le=1000,
        description=(
            "Most clients logged in at once (connections with an activated session); a further"
            " login is refused with BadTooManySessions. Connections still logging in do not"
            " count: see max_unauthenticated."
        ),
    )
    max_unauthenticated: int = Field(
        default=64,
        ge=1,
        le=1000,
        description=(
            "Most connections that have not activated a session yet. When full, a new"
            " connection closes one that has not opened a secure channel with a trusted client"
            " certificate — from the address with the most, the one that made its last step"
            " longest ago — so connections that never log in cannot keep a trusted client out;"
            " if all have, the new one is refused."
        ),
    )
    handshake_timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description=(
            "Seconds from the TCP connection to an open secure channel (Hello and"
            " OpenSecureChannel); a connection without one by then is closed."
        ),
    )
    activation_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description=(
            "Seconds from the TCP connection to an activated session (CreateSession and"
            " ActivateSession with user name and password); a connection without one by then"
            " is closed. At least handshake_timeout_s."
        ),
    )

    @model_validator(mode="after")
    def _activation_after_handshake(self) -> OpcUaServerOptions:
        if self.activation_timeout_s < self.handshake_timeout_s:
            raise ValueError(
                f"activation_timeout_s ({self.activation_timeout_s}) must be at least"
                f" handshake_timeout_s ({self.handshake_timeout_s}): the session comes after"
                " the secure channel"
            )
        return self

    @field_validator("users")
    @classmethod
    def _users_moved(cls, users: Any) -> None:
        if users is None or users == []:
            return None  # nothing to move
        lines = []
        for user in users if isinstance(users, (list, tuple)) else []:
            if isinstance(user, dict) and "name" in user:
                role = {"read": "viewer", "write": "operator"}.get(str(user.get("role", "read")))
                name = str(user["name"])
                renamed = (
                    ""
                    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]*", name)
                    else ", renamed: security.users names are letters, digits, _ . @ -"
                )
                lines.append(f"{name} (roles: [{role or 'viewer'}]{renamed})")
        moved = f": {', '.join(lines)}" if lines else ""
        raise ValueError(
            "the OPC UA server's users moved to the configuration's top-level security.users"
            " (one user base for the OPC UA server, the local API and every write): move each"
            " user there with its name and password_hash, role read becoming roles: [viewer]"
            f" and role write roles: [operator]{moved}"
        )
