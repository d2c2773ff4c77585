"""The ``options:`` of the ``mqtt`` sink, and the checks on broker URLs and topic templates.

Everything here is validated when the configuration loads (``patgw check``), so a bad URL, a
wildcard in a topic or an unknown placeholder never reaches a running gateway.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway import ConfigPath, Secret

__all__ = [
    "META_FIELDS",
    "STATUS_FIELDS",
    "TOPIC_FIELDS",
    "BrokerAddress",
    "BrokerOptions",
    "MqttOptions",
    "TlsOptions",
    "check_template",
    "check_topic",
    "parse_broker_url",
]

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}  # IANA's ports for MQTT and MQTT over TLS
MAX_STRING_BYTES = 65535  # an MQTT string (topic, client id) is at most this long in UTF-8
MAX_PACKET_BYTES = 268_435_455  # the largest remaining length an MQTT packet can declare

TOPIC_FIELDS = frozenset({"site", "area", "instrument", "signal", "signal_id"})
"""Placeholders of ``topic``: ``{signal}`` is the last part of the signal id, ``{signal_id}``
the whole id (``reactor1/feed_pump/flow``)."""
META_FIELDS = TOPIC_FIELDS | {"topic"}
"""Placeholders of ``meta_topic``: those of ``topic``, and ``{topic}``, the signal's topic."""
STATUS_FIELDS = frozenset({"site", "client_id"})
"""Placeholders of ``status_topic``."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker listens, from ``url``."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:port]`` (port 1883) or ``mqtts://host[:port]`` (TLS, port 8883).

    Raises ``ValueError`` for another scheme, a missing host, a bad port, credentials (they come
    from ``username`` and the environment) or a path, query or fragment.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a broker URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(
            f"unsupported scheme {parts.scheme + '://' if parts.scheme else 'none'}: write"
            " mqtt://host[:port] (port 1883) or mqtts://host[:port] (TLS, port 8883)"
        )
    if parts.username is not None or parts.password is not None:
        # Not echoed: the URL may hold a password.
        raise ValueError(
            "the URL must not hold credentials: set username, and password: env:VARIABLE"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a broker URL has no path, query or fragment: write mqtt://host[:port]")
    if not parts.hostname:
        raise ValueError("the URL names no host: write mqtt://host[:port]")
    if port == 0:
        raise ValueError("port 0 is not a broker port")
    return BrokerAddress(parts.hostname, port or DEFAULT_PORTS[scheme], scheme == "mqtts")


def check_topic(topic: str) -> str:
    """``topic`` if an MQTT client may publish to it; ``ValueError`` saying why not otherwise."""
    if not topic:
        raise ValueError("a topic cannot be empty")
    if "+" in topic or "#" in topic:
        raise ValueError(
            f"topic {topic!r} holds a wildcard (+ or #): those are for subscriptions, not for"
            " publishing"
        )
    if "\0" in topic:
        raise ValueError(f"topic {topic!r} holds a NUL character")
    if topic.startswith("$"):
        raise ValueError(f"topic {topic!r} starts with $: such topics belong to the broker")
    if len(topic.encode("utf-8")) > MAX_STRING_BYTES:
        raise ValueError(f"topic is longer than {MAX_STRING_BYTES} bytes in UTF-8")
    return topic


def check_template(template: str, fields: frozenset[str]) -> str:
    """``template`` if it uses only ``fields`` as ``{placeholders}`` and gives valid topics."""
    known = ", ".join(f"{{{name}}}" for name in sorted(fields))
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"not a topic template ({exc}): placeholders are {known}; write {{{{ and }}}} for"
            " literal braces"
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in fields:
            raise ValueError(f"unknown placeholder {{{name}}}: use {known}")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} takes no format or conversion")
    # Placeholder values are identifiers (no wildcards, never empty): any problem of the topic
    # is in the template's own text.
    check_topic(template.format_map({name: "x" for name in fields}))
    return template


class TlsOptions(BaseModel):
    """Certificates for an ``mqtts://`` broker. Relative paths are relative to the
    configuration file's folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: ConfigPath | None = Field(
        default=None,
        description=(
            "PEM file of the certificate authorities that may sign the broker's certificate;"
            " only these are trusted. Default: the system's trusted CAs."
        ),
    )
    cert_file: ConfigPath | None = Field(
        default=None,
        description="PEM file of the gateway's client certificate, for brokers that ask for one.",
    )
    key_file: ConfigPath | None = Field(
        default=None,
        description=(
            "PEM file of the client certificate's private key (unencrypted). Default: the key"
            " is in cert_file."
        ),
    )
    verify_hostname: bool = Field(
        default=True,
        description=(
            "Check that the broker's certificate names the URL's host. Turn off only for a"
            " broker reached by an address its certificate does not list."
        ),
    )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsOptions:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        return self


class BrokerOptions(BaseModel):
    """Which broker, as whom, and the connection's timing: the options every sink that
    publishes through :class:`~.session.Session` shares (``mqtt``, ``sparkplug``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description=(
            "Broker: mqtt://host[:port] (port 1883) or mqtts://host[:port] (TLS, port 8883)."
            " No credentials in the URL."
        ),
    )
    client_id: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "MQTT client id; unique per broker. Default: patgw-<site>-<sink id>. A broker"
            " disconnects an older connection with the same id."
        ),
    )
    username: str | None = Field(
        default=None, min_length=1, description="User name to log in with (none: anonymous)."
    )
    password: Secret | None = Field(
        default=None,
        description="Password, from the environment: env:VARIABLE (read at each connect).",
    )
    tls: TlsOptions | None = Field(
        default=None,
        description=(
            "Certificates for an mqtts:// broker. mqtts:// without this block trusts the"
            " system's certificate authorities."
        ),
    )
    protocol: Literal["3.1.1", "5"] = Field(
        default="5",
        description=(
            "MQTT version. 5 (the default) lets a broker refuse one message with a reason (an"
            " ACL's 'Not authorized'): its samples are given up as losses with that reason and"
            " everything else flows. A 3.1.1 broker acknowledges a message it refuses and drops"
            " it silently: 'patgw check' warns."
        ),
    )
    keepalive_s: int = Field(
        default=30,
        ge=5,
        le=3600,
        description=(
            "Seconds between keep-alive pings; a broker silent for this long counts as lost."
        ),
    )
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description=(
            "Most seconds to connect (TCP, TLS) and be accepted (CONNACK) by the broker. Keep"
            " it below the sink's send_timeout_s (10 s by default), so that a failed connect"
            " says which step timed out."
        ),
    )
    publish_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description=(
            "Most seconds for the broker to acknowledge a delivery; longer fails it and drops"
            " the connection (the next delivery reconnects)."
        ),
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        parse_broker_url(url)
        return url

    @field_validator("client_id")
    @classmethod
    def _valid_client_id(cls, client_id: str | None) -> str | None:
        if client_id is not None:
            if "\0" in client_id:
                raise ValueError("a client id cannot hold a NUL character")
            if len(client_id.encode("utf-8")) > MAX_STRING_BYTES:
                raise ValueError(f"a client id is at most {MAX_STRING_BYTES} bytes in UTF-8")
        return client_id

    @model_validator(mode="after")
    def _consistent(self) -> BrokerOptions:
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        if self.tls is not None and not parse_broker_url(self.url).tls:
            raise ValueError("tls needs an mqtts:// url")
        return self

    def config_warnings(self) -> list[str]:
        """What ``patgw check`` warns about (valid, but probably not what is meant)."""
        if self.protocol == "3.1.1":
            return [
                "protocol: MQTT 3.1.1 has no way to refuse a message: a broker that denies a"
                " topic (an ACL) acknowledges its messages and drops them, and the gateway counts"
                " them delivered; use protocol 5"
            ]
        return []


class MqttOptions(BrokerOptions):
    """Which broker, as whom, and how samples become MQTT messages."""

    qos: Literal[1, 2] = Field(
        default=1,
        description=(
            "Quality of service of every message: 1 (at least once) or 2 (exactly once)."
            " QoS 0 is refused: store-and-forward needs the broker's acknowledgements."
        ),
    )
    max_inflight: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=(
            "Most messages awaiting the broker's acknowledgement at once; the others wait, in"
            " order. null: no limit at QoS 1, 20 at QoS 2 (Mosquitto's default limit on"
            " incoming QoS 2 messages, beyond which it drops the connection). An MQTT 5"
            " broker's Receive Maximum always applies."
        ),
    )
    topic: str = Field(
        default="pat/{site}/{area}/{instrument}/{signal}",
        description=(
            "Topic of a signal's samples. Placeholders: {site}, {area}, {instrument}, {signal}"
            " (last part of the signal id), {signal_id} (the whole id). Each signal must get its"
            " own topic."
        ),
    )
    payload: Literal["sample", "batch"] = Field(
        default="batch",
        description=(
            "batch: per delivery and signal, one message holding a JSON array of the samples"
            " in seq order (split at max_payload_bytes). sample: one message per sample, its"
            " JSON form (QoS 1 tops out near 6,000 messages/s: for low rates only)."
        ),
    )
    max_payload_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=MAX_PACKET_BYTES - MAX_STRING_BYTES - 16,
        description=(
            "batch: most bytes per message; a larger array is split. A single sample larger"
            " than this (a long spectrum) is still sent, alone."
        ),
    )
    meta_topic: str | None = Field(
        default="{topic}/meta",
        description=(
            "Topic of each signal's retained metadata (unit, kind, description, instrument,"
            " site, area, topic), published at every connect. Placeholders: those of topic and"
            " {topic}. null: none."
        ),
    )
    status_topic: str | None = Field(
        default="pat/{site}/gateway/{client_id}/status",
        description=(
            "Topic of the retained gateway status: online after each connect, offline on a"
            " clean stop and, as the Last Will, when the connection breaks. Placeholders:"
            " {site}, {client_id}. null: none."
        ),
    )
    audit_topic: str | None = Field(
        default="pat/{site}/gateway/{client_id}/audit",
        description=(
            "Topic of the retained audit anchor: the gateway's signed audit-trail head (JSON),"
            " published each time it is signed and again after each connect, so a copy of it"
            " lives outside the edge PC (see docs/configuration.md, Audit trail)."
            " Placeholders: {site}, {client_id}. null: none."
        ),
    )

    @field_validator("qos", mode="before")
    @classmethod
    def _no_qos_0(cls, qos: object) -> object:
        if qos == 0:
            raise ValueError(
                "QoS 0 is refused: store-and-forward needs the broker's acknowledgements; use"
                " 1 (at least once) or 2 (exactly once)"
            )
        return qos

    @field_validator("topic")
    @classmethod
    def _valid_topic(cls, topic: str) -> str:
        return check_template(topic, TOPIC_FIELDS)

    @field_validator("meta_topic")
    @classmethod
    def _valid_meta_topic(cls, topic: str | None) -> str | None:
        return None if topic is None else check_template(topic, META_FIELDS)

    @field_validator("status_topic")
    @classmethod
    def _valid_status_topic(cls, topic: str | None) -> str | None:
        return None if topic is None else check_template(topic, STATUS_FIELDS)
