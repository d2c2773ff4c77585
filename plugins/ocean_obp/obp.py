"""The Ocean Binary Protocol (OBP) framing: pure encode and incremental decode, no I/O.

Written from the protocol description (the layout python-seabreeze's ``pyseabreeze/protocol.py``
uses), deliberately sharing nothing with the emulator in ``firmware_stubs/``. Every integer is
little-endian. A message is::

    header (44 bytes)
      u16 start bytes 0xC0C1 (C1 C0 on the wire)   u16 protocol version 0x1100
      u16 flags          u16 error number          u32 message type      u32 regarding
      6 reserved bytes   u8 checksum type (0 none, 1 MD5)   u8 immediate data length (0..16)
      16 bytes immediate data                      u32 bytes remaining (payload length + 20)
    payload (only when the data does not fit the 16 immediate bytes; never with immediate data)
    footer (20 bytes)
      16-byte checksum (MD5 of every byte before the footer, or zeros)   u32 0xC2C3C4C5

Exceptions::

    gateway.InstrumentError
     └── ObpError          a reply that cannot be used (wrong size, wrong type, no ACK, ...)
          └── ObpNackError  the device refused the request: NACK or hardware exception,
                            with the OBP error number and its name

The decoder never raises: bytes that do not form a valid frame are skipped and counted.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import struct
from collections import Counter
from dataclasses import dataclass

from gateway import InstrumentError

__all__ = [
    "BAD_CHECKSUM",
    "ERROR_NAMES",
    "FOOTER_SIZE",
    "GET_FIRMWARE_REVISION",
    "GET_HARDWARE_REVISION",
    "GET_RAW_SPECTRUM",
    "GET_SERIAL_NUMBER",
    "GET_TEC_TEMPERATURE",
    "GET_WAVELENGTH_COEFFICIENT",
    "GET_WAVELENGTH_COEFFICIENT_COUNT",
    "HEADER_SIZE",
    "IMMEDIATE_SIZE",
    "MAX_FRAME",
    "MAX_PAYLOAD",
    "MIN_FRAME",
    "PROTOCOL_VERSION",
    "SET_INTEGRATION_TIME",
    "SET_TRIGGER_MODE",
    "Flag",
    "ObpDecoder",
    "ObpError",
    "ObpFrame",
    "ObpNackError",
    "check_reply",
    "encode_frame",
    "encode_request",
    "error_name",
    "message_name",
    "unpack_f32",
    "unpack_u8",
]

PROTOCOL_VERSION = 0x1100
HEADER_SIZE = 44
FOOTER_SIZE = 20
IMMEDIATE_SIZE = 16
MAX_PAYLOAD = 64 * 1024
"""Largest payload accepted. A raw spectrum of a 2048-pixel detector is 4 KiB; the bound keeps a
corrupt ``bytes remaining`` field from making the decoder wait for megabytes."""
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + FOOTER_SIZE
MIN_FRAME = HEADER_SIZE + FOOTER_SIZE

_START = b"\xc1\xc0"
_FOOTER_MAGIC = 0xC2C3C4C5
_HEADER = struct.Struct("<HHHHII6sBB16sI")
_FOOTER_END = struct.Struct("<I")
_CHECKSUM_NONE = 0
_CHECKSUM_MD5 = 1
_NO_CHECKSUM = bytes(16)

BAD_CHECKSUM = "bad MD5 checksum"
"""The rejection reason counted in :attr:`ObpDecoder.rejected` for a frame whose MD5 fails."""

# Message types used by the driver (python-seabreeze's OBP message table).
GET_HARDWARE_REVISION = 0x00000080
GET_FIRMWARE_REVISION = 0x00000090
GET_SERIAL_NUMBER = 0x00000100
GET_WAVELENGTH_COEFFICIENT_COUNT = 0x00180100
GET_WAVELENGTH_COEFFICIENT = 0x00180101
SET_INTEGRATION_TIME = 0x00110010
SET_TRIGGER_MODE = 0x00110110
GET_RAW_SPECTRUM = 0x00101100
GET_TEC_TEMPERATURE = 0x00420004

_MESSAGE_NAMES = {
    GET_HARDWARE_REVISION: "get hardware revision",
    GET_FIRMWARE_REVISION: "get firmware revision",
    GET_SERIAL_NUMBER: "get serial number",
    GET_WAVELENGTH_COEFFICIENT_COUNT: "get wavelength coefficient count",
    GET_WAVELENGTH_COEFFICIENT: "get wavelength coefficient",
    SET_INTEGRATION_TIME: "set integration time",
    SET_TRIGGER_MODE: "set trigger mode",
    GET_RAW_SPECTRUM: "get raw spectrum",
    GET_TEC_TEMPERATURE: "get detector temperature",
}

ERROR_NAMES = {
    1: "invalid or unsupported protocol",
    2: "unknown message type",
    3: "bad checksum",
    4: "message too large",
    5: "payload length does not match message type",
    6: "payload data invalid",
    7: "device not ready",
    8: "unknown checksum type",
    9: "device reset unexpectedly",
    12: "information does not exist",
    13: "internal device error",
}
"""OBP error numbers, sent with the NACK flag."""


class Flag(enum.IntFlag):
    """Bits of the header's flags field."""

    RESPONSE = 0x0001
    ACK = 0x0002
    REQUEST_ACK = 0x0004
    NACK = 0x0008
    HARDWARE_EXCEPTION = 0x0010
    PROTOCOL_DEPRECATED = 0x0020


class ObpError(InstrumentError):
    """An OBP reply that cannot be used; the message says what happened."""


class ObpNackError(ObpError):
    """The device refused a request (NACK or hardware exception); ``error`` is the OBP number."""

    def __init__(self, message: str, error: int) -> None:
        super().__init__(message)
        self.error = error


@dataclass(frozen=True, slots=True)
class ObpFrame:
    """One decoded message. ``data`` is the immediate data or the payload, whichever it had."""

    flags: int
    error: int
    msg_type: int
    regarding: int
    data: bytes
    checksummed: bool = False
    """Whether the frame carried an MD5 checksum (it was verified, or the frame was dropped)."""


def message_name(msg_type: int) -> str:
    """``0x00101100`` → ``"get raw spectrum"``; unknown types as hex."""
    return _MESSAGE_NAMES.get(msg_type, f"message 0x{msg_type:08x}")


def error_name(error: int) -> str:
    """``7`` → ``"device not ready"``; unknown numbers say so."""
    return ERROR_NAMES.get(error, "unknown error")


def encode_frame(
    msg_type: int,
    data: bytes = b"",
    *,
    flags: int = 0,
    error: int = 0,
    regarding: int = 0,
    checksum: bool = False,
) -> bytes:
    """Encode any OBP message. Data of up to 16 bytes goes in the header, longer data in a payload.

    Raises ``ValueError`` for arguments outside their fields (a caller's bug, not the device's).
    """
    if not 0 <= msg_type <= 0xFFFFFFFF or not 0 <= regarding <= 0xFFFFFFFF:
        raise ValueError("message type and regarding are 32-bit unsigned")
    if not 0 <= flags <= 0xFFFF or not 0 <= error <= 0xFFFF:
        raise ValueError("flags and error number are 16-bit unsigned")
    if len(data) > MAX_PAYLOAD:
        raise ValueError(f"data of {len(data)} bytes exceeds {MAX_PAYLOAD}")
    immediate, payload = (data, b"") if len(data) <= IMMEDIATE_SIZE else (b"", data)
    header = _HEADER.pack(
        0xC0C1,
        PROTOCOL_VERSION,
        flags,
        error,
        msg_type,
        regarding,
        bytes(6),
        _CHECKSUM_MD5 if checksum else _CHECKSUM_NONE,
        len(immediate),
        immediate.ljust(IMMEDIATE_SIZE, b"\0"),
        len(payload) + FOOTER_SIZE,
    )
    body = header + payload
    digest = hashlib.md5(body, usedforsecurity=False).digest() if checksum else _NO_CHECKSUM
    return body + digest + _FOOTER_END.pack(_FOOTER_MAGIC)


def encode_request(
    msg_type: int,
    data: bytes = b"",
    *,
    regarding: int = 0,
    request_ack: bool = False,
    checksum: bool = False,
) -> bytes:
    """Encode a request from host to device. ``regarding`` is echoed in the reply, so it serves
    as a transaction id; ``request_ack`` asks a set-command to answer with an ACK."""
    flags = Flag.REQUEST_ACK if request_ack else 0
    return encode_frame(msg_type, data, flags=flags, regarding=regarding, checksum=checksum)


def check_reply(frame: ObpFrame, what: str) -> ObpFrame:
    """Return ``frame`` if it is not a refusal; raise :class:`ObpNackError` naming the error."""
    if frame.flags & Flag.NACK:
        raise ObpNackError(
            f"device NACK: {error_name(frame.error)} ({frame.error}), in reply to {what}",
            frame.error,
        )
    if frame.flags & Flag.HARDWARE_EXCEPTION:
        raise ObpNackError(
            f"device hardware exception: {error_name(frame.error)} ({frame.error}),"
            f" in reply to {what}",
            frame.error,
        )
    return frame


def unpack_u8(frame: ObpFrame, what: str) -> int:
    """The reply's single unsigned byte; :class:`ObpError` if it is not one byte."""
    if len(frame.data) != 1:
        raise ObpError(f"reply to {what} has {len(frame.data)} bytes, expected 1")
    return frame.data[0]


def unpack_f32(frame: ObpFrame, what: str) -> float:
    """The reply's little-endian float32; :class:`ObpError` if it is not four bytes."""
    if len(frame.data) != 4:
        raise ObpError(f"reply to {what} has {len(frame.data)} bytes, expected 4")
    value: float = struct.unpack("<f", frame.data)[0]
    return value


@dataclass(frozen=True, slots=True)
class _Incomplete:
    """A candidate frame that needs more bytes; ``total`` once its header has been read."""

    total: int | None


# A frame with its length on the wire, "wait for more", or why the candidate is not a frame.
_Verdict = tuple[ObpFrame, int] | _Incomplete | str


def _inspect(buf: bytearray, pos: int) -> _Verdict:
    """Judge the candidate frame starting at ``pos`` (where the start bytes are)."""
    available = len(buf) - pos
    if available < HEADER_SIZE:
        return _Incomplete(None)
    (_start, version, flags, error, msg_type, regarding, _reserved, checksum_type, immediate_len,
     immediate, remaining) = _HEADER.unpack_from(buf, pos)  # fmt: skip
    if version != PROTOCOL_VERSION:
        return "unsupported protocol version"
    if checksum_type not in (_CHECKSUM_NONE, _CHECKSUM_MD5):
        return "unknown checksum type"
    if immediate_len > IMMEDIATE_SIZE:
        return "immediate data length above 16"
    if not FOOTER_SIZE <= remaining <= MAX_PAYLOAD + FOOTER_SIZE:
        return "implausible bytes remaining"
    payload_len = remaining - FOOTER_SIZE
    if immediate_len and payload_len:
        return "immediate data and payload both present"
    total = HEADER_SIZE + remaining
    if available < total:
        return _Incomplete(total)
    end = pos + total
    if _FOOTER_END.unpack_from(buf, end - 4)[0] != _FOOTER_MAGIC:
        return "bad footer"
    if checksum_type == _CHECKSUM_MD5:
        digest = hashlib.md5(buf[pos : end - FOOTER_SIZE], usedforsecurity=False).digest()
        if digest != buf[end - FOOTER_SIZE : end - 4]:
            return BAD_CHECKSUM
    data = (
        immediate[:immediate_len]
        if immediate_len
        else bytes(buf[pos + HEADER_SIZE : end - FOOTER_SIZE])
    )
    frame = ObpFrame(flags, error, msg_type, regarding, data, checksum_type == _CHECKSUM_MD5)
    return frame, total


class ObpDecoder:
    """Turns a byte stream into OBP frames, resynchronising after anything else.

    Bytes before a start marker are discarded. A candidate frame is checked for protocol
    version, checksum type, a plausible length (≤ :data:`MAX_PAYLOAD` + 20), the footer magic and,
    when it carries one, its MD5; on any inconsistency its first byte is discarded and the scan
    goes on. A candidate still waiting for bytes is given up as soon as a complete, valid frame
    starts inside it — that is what a truncated frame followed by a good one looks like. (A
    valid frame embedded in a payload that is still arriving would be taken for that: it needs
    the start bytes, the version and the footer magic at exactly the right offsets, which raw
    spectra do not produce.)

    Memory is bounded: after :meth:`feed` returns, at most one incomplete frame is buffered.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._origin = 0
        self.discarded_bytes = 0
        """Bytes skipped because they were not part of a valid frame (cumulative)."""
        self.rejected: Counter[str] = Counter()
        """Candidate frames rejected, by reason (cumulative)."""
        self._reset_lookahead()

    def _reset_lookahead(self) -> None:
        # Offsets below are absolute (bytes since the decoder started, _origin = that of
        # _buf[0]), so discarding bytes costs nothing here: shifting or rescanning every
        # candidate after each discarded byte made a stream of false starts quadratic.
        # _look_from: where to look next for a frame starting inside the incomplete candidate
        # at the head; _waiting: candidates found there that wait for more bytes, as a heap
        # of (end, start).
        self._look_from = self._origin + 1
        self._waiting: list[tuple[int, int]] = []
        self._head_total: int | None = None

    def reset(self) -> None:
        """Forget buffered bytes (e.g. before a new request); counters are kept."""
        self._buf.clear()
        self._reset_lookahead()

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    @property
    def partial(self) -> tuple[int, int] | None:
        """``(received, expected)`` bytes of a frame whose header arrived but not its end."""
        if self._head_total is None:
            return None
        return len(self._buf), self._head_total

    @property
    def wanted(self) -> int:
        """How many more bytes would complete the frame being received (at least 1)."""
        if self._head_total is None:
            return max(1, MIN_FRAME - len(self._buf))
        # A shorter frame found inside an incomplete one may end first (a truncated frame
        # followed by a good one): ask only for what completes the nearest.
        end = self._head_total
        if self._waiting:
            end = min(end, self._waiting[0][0] - self._origin)
        return max(1, end - len(self._buf))

    def feed(self, data: bytes) -> list[ObpFrame]:
        """Add received bytes; return the frames they completed, in order. Never raises."""
        frames: list[ObpFrame] = []
        # Feeding in slices of at most one frame keeps the buffer below two frames however
        # large the chunk.
        for start in range(0, len(data), MAX_FRAME):
            self._buf += data[start : start + MAX_FRAME]
            self._drain(frames)
        return frames

    def _discard(self, count: int) -> None:
        del self._buf[:count]
        self.discarded_bytes += count
        self._origin += count
        self._look_from = max(self._look_from, self._origin + 1)
        self._head_total = None

    def _drain(self, frames: list[ObpFrame]) -> None:
        buf = self._buf
        while buf:
            start = buf.find(_START)
            if start < 0:
                # Keep a trailing C1: it may be the first half of the next start marker.
                self._discard(len(buf) - 1 if buf[-1] == _START[0] else len(buf))
                return
            if start:
                self._discard(start)
            verdict = _inspect(buf, 0)
            if isinstance(verdict, tuple):
                frame, size = verdict
                del buf[:size]
                self._origin += size
                self._reset_lookahead()
                frames.append(frame)
                continue
            if isinstance(verdict, str):
                self.rejected[verdict] += 1
                self._discard(1)
                continue
            self._head_total = verdict.total
            inner = self._frame_inside_head() if verdict.total is not None else None
            if inner is None:
                return
            self.rejected["truncated frame"] += 1
            self._discard(inner)

    def _frame_inside_head(self) -> int | None:
        """Offset of a complete, valid frame starting inside the incomplete frame at 0."""
        buf = self._buf
        origin = self._origin
        waiting = self._waiting
        # Candidates complete by now, earliest end first; each is judged once.
        while waiting and waiting[0][0] <= origin + len(buf):
            _end, start = heapq.heappop(waiting)
            if start > origin and isinstance(_inspect(buf, start - origin), tuple):
                return start - origin
        while True:
            pos = buf.find(_START, self._look_from - origin)
            if pos < 0:
                self._look_from = origin + max(1, len(buf) - 1)
                return None
            verdict = _inspect(buf, pos)
            if isinstance(verdict, tuple):
                return pos
            if isinstance(verdict, _Incomplete):
                if verdict.total is None:
                    # Its header is not complete yet, nor that of any later candidate.
                    self._look_from = origin + pos
                    return None
                heapq.heappush(waiting, (origin + pos + verdict.total, origin + pos))
            self._look_from = origin + pos + 1
