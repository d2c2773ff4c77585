"""The emulated spectrometer's own Ocean Binary Protocol (OBP) framing: bytes in, frames out.

For the Raman emulator (and its tests) only. The gateway's OBP driver has its own framer on
purpose: the two are written independently from the protocol description, so a
misreading of the protocol in one shows up as a failing conversation instead of hiding
in shared code.

Everything here is pure: :func:`encode` turns a :class:`Frame` into bytes, and
:class:`Decoder` turns a byte stream (in chunks of any size) into frames and
:class:`FrameError` values. The decoder never raises on input; a frame it cannot
serve comes out as a :class:`FrameError` carrying the NACK error number to answer with.

Wire layout, all little-endian::

    header (44 bytes)
      u16 start bytes 0xC0C1 (C1 C0 on the wire)  u16 protocol version 0x1100
      u16 flags                                   u16 error number
      u32 message type                            u32 regarding
      6 reserved bytes                            u8 checksum type (0 none, 1 MD5)
      u8 immediate data length (0..16)            16 bytes immediate data
      u32 bytes remaining (= payload length + 20)
    payload (only when the data does not fit the 16 immediate bytes)
    footer (20 bytes)
      16-byte checksum (MD5 of every byte before the footer, or zeros)
      u32 0xC2C3C4C5
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

__all__ = [
    "FOOTER_MAGIC",
    "FOOTER_SIZE",
    "HEADER_SIZE",
    "IMMEDIATE_SIZE",
    "MAX_BYTES_REMAINING",
    "PROTOCOL_VERSION",
    "START_BYTES",
    "ChecksumType",
    "Decoder",
    "Flag",
    "Frame",
    "FrameError",
    "MessageType",
    "ObpError",
    "encode",
]

START_BYTES = 0xC0C1
PROTOCOL_VERSION = 0x1100
FOOTER_MAGIC = 0xC2C3C4C5
HEADER_SIZE = 44
FOOTER_SIZE = 20
IMMEDIATE_SIZE = 16
#: Largest ``bytes remaining`` the device accepts in a request; larger is NACK 4 and a resync.
MAX_BYTES_REMAINING = 64 * 1024

_HEADER = struct.Struct("<HHHHII6sBB16sI")
_FOOTER = struct.Struct("<16sI")
_START = struct.pack("<H", START_BYTES)  # b"\xc1\xc0"
_FOOTER_MAGIC = struct.pack("<I", FOOTER_MAGIC)  # b"\xc5\xc4\xc3\xc2"
_NO_CHECKSUM = bytes(16)
_RESERVED = bytes(6)

assert _HEADER.size == HEADER_SIZE and _FOOTER.size == FOOTER_SIZE


class Flag(enum.IntFlag):
    """Header flag bits."""

    RESPONSE = 0x0001
    ACK = 0x0002
    REQUEST_ACK = 0x0004
    NACK = 0x0008
    HW_EXCEPTION = 0x0010
    PROTOCOL_DEPRECATED = 0x0020


class ObpError(enum.IntEnum):
    """Error numbers a device sends with the NACK flag."""

    INVALID_PROTOCOL = 1
    UNKNOWN_MESSAGE_TYPE = 2
    BAD_CHECKSUM = 3
    MESSAGE_TOO_LARGE = 4
    PAYLOAD_LENGTH = 5
    PAYLOAD_INVALID = 6
    NOT_READY = 7
    UNKNOWN_CHECKSUM_TYPE = 8


class ChecksumType(enum.IntEnum):
    """How the footer's 16 checksum bytes are filled."""

    NONE = 0
    MD5 = 1


class MessageType(enum.IntEnum):
    """The message types the emulated spectrometer implements."""

    GET_HARDWARE_REVISION = 0x00000080
    GET_FIRMWARE_REVISION = 0x00000090
    GET_SERIAL_NUMBER = 0x00000100
    GET_RAW_SPECTRUM = 0x00101100
    SET_INTEGRATION_TIME_US = 0x00110010
    SET_TRIGGER_MODE = 0x00110110
    GET_WAVELENGTH_COEFFICIENT_COUNT = 0x00180100
    GET_WAVELENGTH_COEFFICIENT = 0x00180101
    GET_DETECTOR_TEMPERATURE = 0x00420004
    SET_TEC_ENABLE = 0x00420010
    SET_TEC_SETPOINT = 0x00420011


@dataclass(frozen=True, slots=True)
class Frame:
    """One OBP message. ``data`` travels as immediate data when it fits 16 bytes, else as
    payload; the encoder decides, so a frame never carries both."""

    message_type: int
    data: bytes = b""
    flags: int = 0
    error: int = 0
    regarding: int = 0
    checksum_type: int = ChecksumType.MD5
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class FrameError:
    """A request the decoder delimited but that cannot be served; answer it with ``error``.

    ``message_type``, ``regarding`` and ``flags`` come from the offending header so the NACK
    can echo them.
    """

    error: ObpError
    message_type: int
    regarding: int
    flags: int
    reason: str


def encode(frame: Frame) -> bytes:
    """The bytes of ``frame`` on the wire; ``ValueError`` for a field out of its range."""
    for name, value, bits in (
        ("message_type", frame.message_type, 32),
        ("regarding", frame.regarding, 32),
        ("flags", frame.flags, 16),
        ("error", frame.error, 16),
        ("protocol_version", frame.protocol_version, 16),
    ):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"{name} {value} does not fit u{bits}")
    if frame.checksum_type not in (ChecksumType.NONE, ChecksumType.MD5):
        raise ValueError(f"checksum type {frame.checksum_type} is neither 0 (none) nor 1 (MD5)")
    if len(frame.data) <= IMMEDIATE_SIZE:
        immediate, payload = frame.data, b""
    else:
        immediate, payload = b"", frame.data
    head = _HEADER.pack(
        START_BYTES,
        frame.protocol_version,
        frame.flags,
        frame.error,
        frame.message_type,
        frame.regarding,
        _RESERVED,
        frame.checksum_type,
        len(immediate),
        immediate,  # struct pads it with zeros to 16 bytes
        len(payload) + FOOTER_SIZE,
    )
    body = head + payload
    if frame.checksum_type == ChecksumType.MD5:
        checksum = hashlib.md5(body, usedforsecurity=False).digest()
    else:
        checksum = _NO_CHECKSUM
    return body + _FOOTER.pack(checksum, FOOTER_MAGIC)


class Decoder:
    """Splits a byte stream into :class:`Frame` and :class:`FrameError` values; never raises.

    Resynchronisation: bytes before the start bytes ``C1 C0`` are skipped (and counted in
    :attr:`skipped`). A candidate header whose ``bytes remaining`` is impossible, or whose
    footer magic is not where the header says, was not a frame: the decoder drops its two
    start bytes and scans on from there, so a real frame hidden behind a false start is still
    found. Only a candidate that ends in the footer magic is interpreted (protocol version,
    checksum), which keeps stray ``C1 C0`` in line noise from being NACKed.

    A false start that claims a long frame makes the decoder wait for bytes that may never
    come; the I/O layer calls :meth:`abandon` after an inter-byte timeout, as device firmware
    does. Memory is bounded by one header plus ``max_bytes_remaining`` plus one chunk.
    """

    def __init__(self, max_bytes_remaining: int = MAX_BYTES_REMAINING) -> None:
        if max_bytes_remaining < FOOTER_SIZE:
            raise ValueError(f"max_bytes_remaining must be at least {FOOTER_SIZE}")
        self.max_bytes_remaining = max_bytes_remaining
        self._buffer = bytearray()
        #: Bytes discarded as line noise since the decoder was made.
        self.skipped = 0

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the rest of a frame (or for a start byte's partner)."""
        return len(self._buffer)

    @property
    def waiting(self) -> bool:
        """True while a frame has started but not yet arrived whole."""
        return self._buffer.startswith(_START)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Add received bytes; return every frame (or unservable request) now complete."""
        self._buffer += data
        return self._drain()

    def abandon(self) -> list[Frame | FrameError]:
        """Give up on the frame being waited for: drop its start bytes and scan on."""
        if not self.waiting:
            return []
        self._skip(len(_START))
        return self._drain()

    def _skip(self, count: int) -> None:
        del self._buffer[:count]
        self.skipped += count

    def _drain(self) -> list[Frame | FrameError]:
        events: list[Frame | FrameError] = []
        buffer = self._buffer
        while True:
            start = buffer.find(_START)
            if start < 0:
                # A trailing C1 may be the first half of the next start bytes.
                keep = 1 if buffer.endswith(_START[:1]) else 0
                self._skip(len(buffer) - keep)
                return events
            if start:
                self._skip(start)
            if len(buffer) < HEADER_SIZE:
                return events
            (_, version, flags, _, message_type, regarding, _, _, _, _, remaining) = (
                _HEADER.unpack_from(buffer)
            )
            if remaining > self.max_bytes_remaining:
                if version == PROTOCOL_VERSION:
                    events.append(
                        FrameError(
                            ObpError.MESSAGE_TOO_LARGE,
                            message_type,
                            regarding,
                            flags,
                            f"bytes remaining {remaining} > {self.max_bytes_remaining}",
                        )
                    )
                self._skip(len(_START))
                continue
            if remaining < FOOTER_SIZE:
                self._skip(len(_START))
                continue
            total = HEADER_SIZE + remaining
            if len(buffer) < total:
                return events
            if buffer[total - 4 : total] != _FOOTER_MAGIC:
                self._skip(len(_START))
                continue
            raw = bytes(buffer[:total])
            del buffer[:total]
            events.append(_interpret(raw))


def _interpret(raw: bytes) -> Frame | FrameError:
    """A whole, delimited message → a frame, or the error to NACK it with."""
    (
        _,
        version,
        flags,
        error,
        message_type,
        regarding,
        _,
        checksum_type,
        immediate_length,
        immediate,
        _,
    ) = _HEADER.unpack_from(raw)

    def refuse(code: ObpError, reason: str) -> FrameError:
        return FrameError(code, message_type, regarding, flags, reason)

    if version != PROTOCOL_VERSION:
        return refuse(ObpError.INVALID_PROTOCOL, f"protocol version {version:#06x}")
    if checksum_type not in (ChecksumType.NONE, ChecksumType.MD5):
        return refuse(ObpError.UNKNOWN_CHECKSUM_TYPE, f"checksum type {checksum_type}")
    if checksum_type == ChecksumType.MD5:
        digest = hashlib.md5(raw[:-FOOTER_SIZE], usedforsecurity=False).digest()
        if raw[-FOOTER_SIZE : -FOOTER_SIZE + 16] != digest:
            return refuse(ObpError.BAD_CHECKSUM, "MD5 does not match")
    payload = raw[HEADER_SIZE:-FOOTER_SIZE]
    if immediate_length > IMMEDIATE_SIZE:
        return refuse(ObpError.PAYLOAD_LENGTH, f"immediate length {immediate_length} > 16")
    if immediate_length and payload:
        return refuse(ObpError.PAYLOAD_LENGTH, "both immediate data and a payload")
    return Frame(
        message_type=message_type,
        data=immediate[:immediate_length] if immediate_length else payload,
        flags=flags,
        error=error,
        regarding=regarding,
        checksum_type=checksum_type,
        protocol_version=version,
    )
