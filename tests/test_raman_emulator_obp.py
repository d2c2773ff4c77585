"""The Raman emulator's own OBP framing, without any transport: layout, errors, resync, fuzz."""

from __future__ import annotations

import hashlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_stubs.raman.obp import (
    FOOTER_SIZE,
    HEADER_SIZE,
    MAX_BYTES_REMAINING,
    ChecksumType,
    Decoder,
    Frame,
    FrameError,
    ObpError,
    encode,
)


def decode_all(data: bytes, decoder: Decoder | None = None) -> list[Frame | FrameError]:
    """Feed ``data`` and then give up on any half frame, as the inter-byte timeout would."""
    decoder = decoder or Decoder()
    events = decoder.feed(data)
    while decoder.waiting:
        events += decoder.abandon()
    return events


def test_layout_with_immediate_data() -> None:
    wire = encode(Frame(0x00110010, struct.pack("<I", 1000), flags=0x4, regarding=0x01020304))
    assert len(wire) == HEADER_SIZE + FOOTER_SIZE
    assert wire[0:2] == b"\xc1\xc0" and wire[2:4] == b"\x00\x11"
    assert wire[4:6] == b"\x04\x00" and wire[8:12] == b"\x10\x00\x11\x00"
    assert wire[12:16] == b"\x04\x03\x02\x01" and wire[16:22] == bytes(6)
    assert wire[22] == 1 and wire[23] == 4 and wire[24:28] == b"\xe8\x03\x00\x00"
    assert wire[28:40] == bytes(12) and wire[40:44] == b"\x14\x00\x00\x00"
    assert wire[44:60] == hashlib.md5(wire[:44]).digest()
    assert wire[60:64] == b"\xc5\xc4\xc3\xc2"


def test_layout_with_payload_and_no_checksum() -> None:
    data = bytes(range(17))
    wire = encode(Frame(0x00101100, data, checksum_type=ChecksumType.NONE))
    assert wire[23] == 0 and wire[24:40] == bytes(16)
    assert struct.unpack_from("<I", wire, 40)[0] == 17 + 20
    assert wire[44:61] == data and wire[61:77] == bytes(16)


def test_encode_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="message_type"):
        encode(Frame(1 << 32))
    with pytest.raises(ValueError, match="checksum type"):
        encode(Frame(1, checksum_type=2))


def header_with(frame: Frame, **changes: int) -> bytes:
    """``frame`` encoded, then header fields overwritten (checksum recomputed if MD5)."""
    wire = bytearray(encode(frame))
    offsets = {"version": (2, "<H"), "checksum_type": (22, "<B"), "immediate": (23, "<B")}
    for name, value in changes.items():
        offset, fmt = offsets[name]
        struct.pack_into(fmt, wire, offset, value)
    if frame.checksum_type == ChecksumType.MD5:
        wire[-20:-4] = hashlib.md5(wire[:-20]).digest()
    return bytes(wire)


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (header_with(Frame(0x100, regarding=5), version=0x1000), ObpError.INVALID_PROTOCOL),
        (header_with(Frame(0x100), checksum_type=7), ObpError.UNKNOWN_CHECKSUM_TYPE),
        (encode(Frame(0x100))[:-20] + bytes(16) + b"\xc5\xc4\xc3\xc2", ObpError.BAD_CHECKSUM),
        (header_with(Frame(0x100, b"x" * 20), immediate=3), ObpError.PAYLOAD_LENGTH),
        (header_with(Frame(0x100, b"x"), immediate=17), ObpError.PAYLOAD_LENGTH),
    ],
    ids=["version", "checksum-type", "md5", "both", "immediate-too-long"],
)
def test_unservable_frames_become_errors(wire: bytes, error: ObpError) -> None:
    (event,) = Decoder().feed(wire)
    assert isinstance(event, FrameError) and event.error is error
    assert event.message_type == 0x100


def test_too_large_is_reported_at_the_header_and_scanning_goes_on() -> None:
    head = bytearray(encode(Frame(0x100))[:HEADER_SIZE])
    struct.pack_into("<I", head, 40, MAX_BYTES_REMAINING + 1)
    good = encode(Frame(0x200, b"ok"))
    events = Decoder().feed(bytes(head) + good)
    assert isinstance(events[0], FrameError) and events[0].error is ObpError.MESSAGE_TOO_LARGE
    assert events[1:] == [Frame(0x200, b"ok")]


def test_false_starts_in_noise_do_not_hide_the_next_frame() -> None:
    good = encode(Frame(0x100, regarding=42))
    wrong_version = b"\xc1\xc0\x99\x99" + bytes(50)
    # A plausible header claiming 5000 more bytes: waited for, then abandoned.
    long_claim = bytearray(encode(Frame(0x100))[:HEADER_SIZE])
    struct.pack_into("<I", long_claim, 40, 5000)
    for noise in (wrong_version, bytes(long_claim), b"\xc1", b"\xc1\xc0" * 30):
        decoder = Decoder()
        assert decode_all(noise + good, decoder) == [Frame(0x100, regarding=42)]
        assert decoder.skipped >= len(noise) - 1


def test_split_start_bytes_are_kept() -> None:
    decoder = Decoder()
    wire = encode(Frame(0x100))
    assert decoder.feed(b"noise" + wire[:1]) == []
    assert decoder.pending == 1
    assert decoder.feed(wire[1:]) == [Frame(0x100)]
    assert decoder.skipped == 5 and decoder.pending == 0


frames = st.builds(
    Frame,
    message_type=st.integers(0, 0xFFFFFFFF),
    data=st.binary(max_size=40),  # both sides of the 16-byte immediate limit
    flags=st.integers(0, 0xFFFF),
    error=st.integers(0, 0xFFFF),
    regarding=st.integers(0, 0xFFFFFFFF),
    checksum_type=st.sampled_from([ChecksumType.NONE, ChecksumType.MD5]),
)
# Noise without 0xC1 cannot hold a false start.
noise = st.binary(max_size=40).map(lambda b: b.replace(b"\xc1", b"\x00"))


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.tuples(noise, frames), max_size=6), tail=noise)
def test_round_trip_through_noise(items: list[tuple[bytes, Frame]], tail: bytes) -> None:
    wire = b"".join(gap + encode(frame) for gap, frame in items) + tail
    assert decode_all(wire) == [frame for _, frame in items]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1000), cuts=st.lists(st.integers(0, 1000), max_size=8))
def test_arbitrary_bytes_in_any_chunks_never_raise(data: bytes, cuts: list[int]) -> None:
    whole = Decoder(max_bytes_remaining=1024).feed(data)
    chunked = Decoder(max_bytes_remaining=1024)
    events: list[Frame | FrameError] = []
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for lo, hi in itertools.pairwise(bounds):
        events += chunked.feed(data[lo:hi])
        assert chunked.pending <= HEADER_SIZE + 1024 + len(data)
    # How the stream is cut never changes what is decoded.
    assert events == whole
    assert all(isinstance(e, Frame | FrameError) for e in events)
    while chunked.waiting:
        chunked.abandon()
    assert chunked.pending <= 1


@settings(max_examples=100, deadline=None)
@given(frame=frames, prefix=st.binary(max_size=60))
def test_a_frame_after_any_prefix_is_never_an_exception(frame: Frame, prefix: bytes) -> None:
    events = decode_all(prefix + encode(frame))
    assert all(isinstance(e, Frame | FrameError) for e in events)
    if b"\xc1" not in prefix:
        assert events == [frame]
