"""MQTT 3.1.1 packets (encoding what the gateway sends, decoding what a broker sends), the
framing that bounds what is buffered, and the reason codes, for :mod:`.session`.

MQTT 5 packets are encoded and decoded by the maintained ``mqtt5`` codec (decision 0028,
amended); this hand-written 3.1.1 codec is to be replaced too (by paho-mqtt for
``protocol: "3.1.1"``, proposed there). Pure functions, no I/O; tested without a broker (and
against a real one through the session). Only the packets a publishing client with a few
subscriptions needs: CONNECT/CONNACK, PUBLISH with PUBACK (QoS 1) or PUBREC/PUBREL/PUBCOMP
(QoS 2), SUBSCRIBE/SUBACK, PINGREQ/PINGRESP, DISCONNECT. Decoding is strict: a malformed
packet raises :class:`ProtocolError` (the session then ends), never anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

__all__ = [
    "MAX_PACKET",
    "Connack",
    "Decoder",
    "ProtocolError",
    "ReasonCode",
    "connect_packet",
    "disconnect_packet",
    "parse_ack",
    "parse_connack",
    "parse_disconnect",
    "parse_oversize",
    "parse_publish",
    "parse_suback",
    "ping_packet",
    "puback_packet",
    "publish_header",
    "subscribe_packet",
    "topic_field",
]

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
OVERSIZE = 16
"""Not an MQTT type: what :class:`Decoder` yields for a PUBLISH beyond :data:`MAX_PACKET`, the
body cut after its topic and message id (the rest is skipped, never buffered)."""
_HEAD = 2 + 65535 + 2  # a PUBLISH's topic (at most 65,535 bytes) and message id

MAX_REMAINING = 268_435_455  # the largest remaining length MQTT can express (4 bytes)
MAX_PACKET = 16 * 1024 * 1024
"""The largest packet accepted from a broker (announced as Maximum Packet Size in MQTT 5, by
the session): bounded buffers; the gateway only receives small commands and status messages."""

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

# MQTT 3.1.1 CONNACK return codes (3.2.2.3), as their MQTT 5 equivalents.
_V3_CONNACK = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


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


SUCCESS = ReasonCode(0)


def _varint(n: int) -> bytes:
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 65535:
        raise ValueError(f"longer than 65535 bytes: {raw[:40]!r}...")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(
    *,
    client_id: str,
    keepalive_s: int,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes, int, bool] | None = None,
) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session; ``will`` is (topic, payload, qos, retain)."""
    flags = 0x02
    payload = _string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += _string(topic) + _string(message)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    header = _string("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive_s)
    return _packet(CONNECT << 4, header + payload)


def topic_field(topic: str) -> bytes:
    """A topic name as it appears in a PUBLISH; ``ValueError`` if it cannot be one."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"not a valid topic name: {topic!r}")
    return _string(topic)


def publish_header(first: int, remaining: int) -> bytes:
    """The fixed header of a PUBLISH whose variable header and payload are ``remaining`` bytes
    long; ``ValueError`` beyond MQTT's limit."""
    if remaining < 128:
        return bytes((first, remaining))
    if remaining < 16384:
        return bytes((first, remaining & 0x7F | 0x80, remaining >> 7))
    if remaining > MAX_REMAINING:
        raise ValueError(f"a message of {remaining} bytes is beyond MQTT's 256 MB limit")
    return bytes((first,)) + _varint(remaining)


def puback_packet(kind: int, mid: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (``kind``) for ``mid``, reason Success."""
    return bytes(((kind << 4) | (0x02 if kind == PUBREL else 0), 2)) + struct.pack("!H", mid)


def subscribe_packet(mid: int, filters: tuple[tuple[str, int], ...]) -> bytes:
    body = struct.pack("!H", mid)
    for topic_filter, qos in filters:
        body += _string(topic_filter) + bytes((qos,))
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def ping_packet() -> bytes:
    return b"\xc0\x00"


def disconnect_packet() -> bytes:
    """DISCONNECT, normal disconnection (no Last Will), in either version."""
    return b"\xe0\x00"


class Decoder:
    """Cuts a byte stream into packets, across reads of any size."""

    __slots__ = ("_buffer", "_need", "_skip", "_whole")

    def __init__(self, *, whole: bool = False) -> None:
        self._whole = whole  # yield each packet whole (fixed header included), for mqtt5.read
        self._buffer = bytearray()  # a partial packet: appended to, not copied, per read
        self._need = 0  # the partial packet's full size once its header is known
        self._skip = 0  # bytes of an oversized PUBLISH still to come, to be dropped

    @property
    def partial(self) -> bool:
        """Part of a packet is waiting for the rest (or being skipped)."""
        return bool(self._buffer) or self._skip > 0

    def feed(self, data: bytes) -> Iterator[tuple[int, int, memoryview]]:
        """The complete packets in what has arrived so far: (type, flags, body, or the whole
        packet if the decoder was made with ``whole=True``); keeps a
        partial packet for the next call. :class:`ProtocolError` on a bad length.

        A packet arriving in many small reads is appended to a buffer and parsed once it is
        complete: each byte is copied a bounded number of times (a 16 MiB packet in 1,460-byte
        reads cost seconds of CPU when every read copied the whole partial packet again).

        A PUBLISH beyond :data:`MAX_PACKET` is yielded as :data:`OVERSIZE` with its body cut
        after the topic and message id (enough to acknowledge it), the rest dropped as it
        comes: MQTT 3.1.1 cannot tell the broker the limit, and a retained message that large
        on a subscribed topic would otherwise end every session right after it connects. Any
        other packet that large is a :class:`ProtocolError`."""
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
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
        whole = self._whole
        while end - at >= 2:
            first = buffer[at]
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
                if first >> 4 != PUBLISH:
                    raise ProtocolError(f"a packet of {length} bytes (more than {MAX_PACKET})")
                if start + _HEAD > end:
                    self._need = start + _HEAD - at
                    break
                yield OVERSIZE, first & 0x0F, view[start : start + _HEAD]
                self._skip = max(0, start + length - end)
                at = min(start + length, end)
                continue
            if start + length > end:
                self._need = start + length - at
                break
            begin, at = at, start + length
            yield first >> 4, first & 0x0F, view[begin if whole else start : at]
        if at < end:
            self._buffer += view[at:]


def _u16(body: memoryview, at: int) -> int:
    if len(body) < at + 2:
        raise ProtocolError("a packet cut short")
    return int(body[at]) << 8 | body[at + 1]


class Connack(NamedTuple):
    """A broker's answer to CONNECT, with what an MQTT 5 broker may set (None: not set)."""

    reason_code: ReasonCode
    receive_maximum: int | None = None  # most unacknowledged QoS 1 and 2 messages it takes
    server_keepalive: int | None = None  # the keepalive it imposes (seconds; 0: none)
    maximum_qos: int | None = None  # the highest QoS it takes (0 or 1; None: 2)
    maximum_packet_size: int | None = None  # the largest packet it takes (bytes; None: any)


def parse_connack(body: memoryview) -> Connack:
    """An MQTT 3.1.1 CONNACK (its return codes mapped to MQTT 5 reason codes)."""
    if len(body) != 2:
        raise ProtocolError(f"a CONNACK of {len(body)} bytes (MQTT 3.1.1: 2)")
    code = body[1]
    return Connack(ReasonCode(_V3_CONNACK.get(code, 0x80) if code else 0))


def parse_ack(body: memoryview) -> tuple[int, ReasonCode]:
    """A PUBACK, PUBREC, PUBREL or PUBCOMP: its message id (MQTT 3.1.1 has no reason code)."""
    if len(body) != 2:
        raise ProtocolError(f"an acknowledgement of {len(body)} bytes (MQTT 3.1.1: 2)")
    return int(body[0]) << 8 | body[1], SUCCESS


def parse_suback(body: memoryview) -> tuple[int, list[int]]:
    """A SUBACK: message id and one return code (granted QoS, or 0x80) per filter."""
    return _u16(body, 0), list(body[2:])


def parse_publish(flags: int, body: memoryview) -> tuple[str, bytes, int, int]:
    """An incoming PUBLISH: topic, payload, QoS and message id (0 at QoS 0)."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("a PUBLISH with QoS 3")
    size = _u16(body, 0)
    if 2 + size > len(body):
        raise ProtocolError("a PUBLISH topic beyond the packet")
    try:
        topic = bytes(body[2 : 2 + size]).decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError("a PUBLISH topic that is not UTF-8") from exc
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ProtocolError(f"a PUBLISH topic that is not a topic name: {topic[:100]!r}")
    at = 2 + size
    mid = 0
    if qos:
        mid = _u16(body, at)
        at += 2
    return topic, bytes(body[at:]), qos, mid


def parse_oversize(flags: int, body: memoryview) -> tuple[str, int, int]:
    """The topic (any bytes replaced by U+FFFD), QoS and message id of an :data:`OVERSIZE`
    PUBLISH."""
    qos = (flags >> 1) & 0x03
    size = _u16(body, 0)
    topic = bytes(body[2 : 2 + size]).decode("utf-8", "replace")
    return topic, qos, _u16(body, 2 + size) if qos else 0


def parse_disconnect(body: memoryview) -> ReasonCode:
    return ReasonCode(body[0]) if len(body) else SUCCESS
