"""The ``options:`` of an OPC UA server (a bioreactor controller, a PLC, an analyser)."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gateway import ConfigPath, Secret, UnitError, validate_ucum

from .nodes import ALIAS_PATTERN, parse_browse_step, parse_node_ref

__all__ = ["IdentityNodes", "NodeSpec", "OpcUaOptions"]

DEFAULT_PORT = 4840  # IANA's port for OPC UA over TCP


class NodeSpec(BaseModel):
    """One variable on the server, published as a channel of the same name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Channel name (unique per server)."
    )
    node: str | None = Field(
        default=None,
        description=(
            "Node id: alias:Identifier (a string id in an aliased namespace, e.g."
            " ctl:BioreactorController.Temperature.PV, or alias:i=1001), nsu=<uri>;s=<id>, or"
            " i=<n> in the OPC UA namespace. Namespace indexes (ns=2) are refused: they can"
            " change when the server restarts. Give node or browse_path."
        ),
    )
    browse_path: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Browse names from the Objects folder, each alias:BrowseName (0: for the OPC UA"
            " namespace), e.g. [ctl:BioreactorController, ctl:Temperature, ctl:PV]."
        ),
    )
    unit: str = Field(
        description=(
            "UCUM unit of the values, e.g. Cel, [pH], %, L/min. The server's EngineeringUnits"
            " are checked against it at every connect; a different unit makes this node bad"
            " (the others flow) until the server's unit matches."
        )
    )
    writable: bool = Field(
        default=False, description="Allow writes (setpoints) to this node; every write is logged."
    )
    description: str = Field(default="", description="What the value is, for people.")

    @field_validator("unit")
    @classmethod
    def _ucum(cls, value: str) -> str:
        try:
            return validate_ucum(value)
        except UnitError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _one_address(self) -> NodeSpec:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError(f"node {self.name!r}: give exactly one of node and browse_path")
        return self


class IdentityNodes(BaseModel):
    """Where the server keeps the device's identity: a node (written as a node's ``node``) per
    field, read once per session. A node that is missing or bad leaves its field unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manufacturer: str | None = Field(default=None, description="Node of the manufacturer.")
    model: str | None = Field(default=None, description="Node of the model.")
    serial_number: str | None = Field(default=None, description="Node of the serial number.")
    firmware_revision: str | None = Field(
        default=None, description="Node of the firmware (software) revision."
    )
    hardware_revision: str | None = Field(
        default=None, description="Node of the hardware revision."
    )

    def refs(self) -> dict[str, str]:
        """Field name → node, for the fields given."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class OpcUaOptions(BaseModel):
    """How to reach an OPC UA server, how to authenticate, and which variables to subscribe to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        description=(
            "Endpoint URL, opc.tcp://host:port[/path] (port 4840 if left out). Credentials go in"
            " username/password, never in the URL."
        )
    )
    security: Literal["none", "Basic256Sha256", "Aes256_Sha256_RsaPss"] = Field(
        default="none",
        description=(
            "Security policy of the secure channel. Basic256Sha256 and Aes256_Sha256_RsaPss"
            " need certificate and private_key."
        ),
    )
    mode: Literal["sign", "sign_and_encrypt"] | None = Field(
        default=None,
        description="Message security mode with a security policy; default sign_and_encrypt.",
    )
    certificate: ConfigPath | None = Field(
        default=None,
        description=(
            "The gateway's own application instance certificate (DER or PEM), relative to the"
            " config file's folder; its URI subject alternative name becomes the client's"
            " application URI."
        ),
    )
    private_key: ConfigPath | None = Field(
        default=None,
        description="The certificate's private key (PEM or DER), relative to the config's folder.",
    )
    private_key_password: Secret | None = Field(
        default=None, description="Password of an encrypted private key: env:VARIABLE."
    )
    server_certificate: ConfigPath | None = Field(
        default=None,
        description=(
            "The server's certificate, relative to the config file's folder: the session is"
            " refused unless the server presents exactly this one. Without it the certificate"
            " the server offers is used unverified."
        ),
    )
    username: str | None = Field(
        default=None, min_length=1, description="User name for a user-name identity token."
    )
    password: Secret | None = Field(
        default=None, description="The user's password, from the environment: env:VARIABLE."
    )
    timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description=(
            "Longest wait for any answer (connect, each request); also how late a keep-alive may"
            " be before the session counts as lost."
        ),
    )
    sampling_interval_ms: float = Field(
        default=250.0,
        ge=0,
        le=3_600_000,
        description="How often the server samples each node (0 = as fast as it can).",
    )
    publishing_interval_ms: float = Field(
        default=250.0,
        gt=0,
        le=3_600_000,
        description="How often the server sends the changes it collected (the subscription).",
    )
    recheck_interval_s: float = Field(
        default=10.0,
        ge=0.1,
        le=3600,
        description=(
            "How often nodes that cannot be used (missing on the server, not a variable, a unit"
            " mismatch) are looked for again within the running session; each is published bad"
            " with its reason meanwhile, and the other nodes flow."
        ),
    )
    namespaces: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Namespace aliases: alias → namespace URI, e.g. {ctl: 'urn:acme:controller'}."
            " Resolved to the server's current namespace index at every connect."
        ),
    )
    nodes: tuple[NodeSpec, ...] = Field(
        min_length=1, description="The variables to subscribe to, one channel each."
    )
    identity: IdentityNodes | None = Field(
        default=None,
        description="Nodes holding the device's identity (e.g. the OPC UA DI properties"
        " Manufacturer, Model, SerialNumber, SoftwareRevision of its device object), read at"
        " every connect and reported as the instrument's identity. None: not read.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "opc.tcp" or not parts.hostname:
            raise ValueError(f"{value!r}: expected opc.tcp://host:port[/path]")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials do not belong in the URL: use username and password")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        if port is None:
            return parts._replace(netloc=f"{parts.netloc}:{DEFAULT_PORT}").geturl()
        return value

    @field_validator("namespaces")
    @classmethod
    def _aliases(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, uri in value.items():
            if not re.match(ALIAS_PATTERN, alias):
                raise ValueError(
                    f"alias {alias!r}: letters, digits, _ and -, starting with a letter or _"
                )
            if not uri or uri != uri.strip():
                raise ValueError(f"alias {alias!r}: the namespace URI is empty or padded")
        return value

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, value: tuple[NodeSpec, ...], info: ValidationInfo) -> tuple[NodeSpec, ...]:
        aliases = set(info.data.get("namespaces") or ())
        seen: set[str] = set()
        for i, spec in enumerate(value):
            where = f"nodes[{i}] ({spec.name})"
            if spec.name in seen:
                raise ValueError(f"{where}: node names must be unique")
            seen.add(spec.name)
            try:
                if spec.node is not None:
                    parse_node_ref(spec.node, aliases)
                for step in spec.browse_path or ():
                    parse_browse_step(step, aliases)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        return value

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: IdentityNodes | None, info: ValidationInfo) -> IdentityNodes | None:
        aliases = set(info.data.get("namespaces") or ())
        for field, node in (value.refs() if value is not None else {}).items():
            try:
                parse_node_ref(node, aliases)
            except ValueError as exc:
                raise ValueError(f"{field}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaOptions:
        if self.security == "none":
            given = [
                name
                for name in (
                    "mode",
                    "certificate",
                    "private_key",
                    "private_key_password",
                    "server_certificate",
                )
                if getattr(self, name) is not None
            ]
            if given:
                raise ValueError(f"{', '.join(given)}: only used with a security policy")
        elif self.certificate is None or self.private_key is None:
            raise ValueError(f"security {self.security} needs certificate and private_key")
        if (self.username is None) != (self.password is None):
            raise ValueError("give username and password together")
        return self
