"""What the ``mqtt5`` codec does not give the MQTT 5 session (:mod:`.session`): the framing
that bounds what is buffered (:class:`Decoder`: a packet's declared length checked before any
of it is kept), the reason codes' names, :class:`ProtocolError`, the topic-name check, and the
CONNACK's fields as the session uses them.

No MQTT packet is encoded or decoded here (decision 0028): MQTT 5 packets by ``mqtt5``, MQTT
3.1.1 by paho-mqtt (:mod:`.paho_session`). Pure functions, no I/O; a malformed length raises
:class:`ProtocolError` (the session then ends), never anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

__all__ = [
    "MAX_PACKET",
    "Connack",
    "Decoder",
    "ProtocolError",
    "ReasonCode",
    "check_topic_name",
]

MAX_PACKET = 16 * 1024 * 1024
"""The largest packet accepted from a broker (announced as Maximum Packet Size in the CONNECT,
by the session): bounded buffers; the gateway only receives small commands and status
messages."""

_NAMES = {
    0x00: "Success",
    0x01: "Granted QoS 1",
    0x02: "Granted QoS 2",
    0x04: "Disconnect with will message",
    0x10: "No matching subscribers",
    0x80: "Unspecified error",
    0x81: "Malformed packet",
    0x82: "Protocol error",
    0x83: "Implementation specific error",
    0x84: "Unsupported protocol version",
    0x85: "Client identifier not valid",
    0x86: "Bad user name or password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet identifier in use",
    0x92: "Packet identifier not found",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription identifiers not supported",
    0xA2: "Wildcard subscriptions not supported",
}


class ProtocolError(Exception):
    """The broker sent something that is not a valid MQTT packet here."""


class ReasonCode(NamedTuple):
    """An MQTT 5 reason code (MQTT 3.1.1 answers are mapped to their MQTT 5 equivalents)."""

    value: int

    @property
    def is_failure(self) -> bool:
        return self.value >= 0x80

    def __str__(self) -> str:
        return _NAMES.get(self.value, f"Reason code 0x{self.value:02X}")


def check_topic_name(topic: str) -> None:
    """``ValueError`` if ``topic`` cannot be a PUBLISH's topic name (``mqtt5`` lets a NUL and
    wildcards through)."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"not a valid topic name: {topic!r}")
    if len(topic.encode()) > 65535:
        raise ValueError(f"a topic name longer than 65,535 bytes: {topic[:100]!r}...")


class Decoder:
    """Cuts a byte stream into whole packets (fixed header included, for ``mqtt5.read``),
    across reads of any size."""

    __slots__ = ("_buffer", "_need")

    def __init__(self) -> None:
        self._buffer = bytearray()  # a partial packet: appended to, not copied, per read
        self._need = 0  # the partial packet's full size once its header is known

    @property
    def partial(self) -> bool:
        """Part of a packet is waiting for the rest."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> Iterator[memoryview]:
        """The whole packets in what has arrived so far; keeps a partial packet for the next
        call. :class:`ProtocolError` on a length beyond :data:`MAX_PACKET` (the CONNECT
        announced it: a broker must not send more) or longer than 4 bytes, before any of that
        packet is buffered.

        A packet arriving in many small reads is appended to a buffer and cut out once it is
        complete: each byte is copied a bounded number of times (a 16 MiB packet in 1,460-byte
        reads cost seconds of CPU when every read copied the whole partial packet again)."""
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._need:
                return
            buffer = bytes(self._buffer)
            self._buffer.clear()
        else:
            buffer = data
        self._need = 0
        view = memoryview(buffer)
        end = len(buffer)
        at = 0
        while end - at >= 2:
            length = buffer[at + 1]
            start = at + 2
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    if start >= end:
                        self._buffer += view[at:]
                        return
                    byte = buffer[start]
                    start += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise ProtocolError("a remaining length longer than 4 bytes")
            if length > MAX_PACKET:
                raise ProtocolError(
                    f"a packet of {length} bytes (beyond the Maximum Packet Size announced,"
                    f" {MAX_PACKET})"
                )
            if start + length > end:
                self._need = start + length - at
                break
            begin, at = at, start + length
            yield view[begin:at]
        if at < end:
            self._buffer += view[at:]


class Connack(NamedTuple):
    """A broker's answer to CONNECT, with what an MQTT 5 broker may set (None: not set)."""

    reason_code: ReasonCode
    receive_maximum: int | None = None  # most unacknowledged QoS 1 and 2 messages it takes
    server_keepalive: int | None = None  # the keepalive it imposes (seconds; 0: none)
    maximum_qos: int | None = None  # the highest QoS it takes (0 or 1; None: 2)
    maximum_packet_size: int | None = None  # the largest packet it takes (bytes; None: any)
