"""The OBP codec on its own: exact bytes, round trips in any chunking, resynchronisation, fuzzing.

The expected bytes are written out from the protocol description, not produced by the codec.
"""

from __future__ import annotations

import hashlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import InstrumentError
from plugins.ocean_obp.obp import (
    BAD_CHECKSUM,
    ERROR_NAMES,
    GET_RAW_SPECTRUM,
    GET_SERIAL_NUMBER,
    MAX_FRAME,
    MAX_PAYLOAD,
    SET_INTEGRATION_TIME,
    Flag,
    ObpDecoder,
    ObpError,
    ObpFrame,
    ObpNackError,
    check_reply,
    encode_frame,
    encode_request,
    error_name,
    message_name,
    unpack_f32,
    unpack_u8,
)

FOOTER_MAGIC = bytes.fromhex("c5c4c3c2")


def header_fields(frame: bytes) -> tuple[int, ...]:
    return struct.unpack_from("<HHHHII6sBB16sI", frame)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def decode_all(chunks: list[bytes], decoder: ObpDecoder | None = None) -> list[ObpFrame]:
    decoder = decoder or ObpDecoder()
    frames: list[ObpFrame] = []
    for chunk in chunks:
        frames.extend(decoder.feed(chunk))
    return frames


# -- encoding ---------------------------------------------------------------------------------


def test_request_bytes_match_the_protocol_layout() -> None:
    frame = encode_request(GET_SERIAL_NUMBER, regarding=1)
    expected = (
        bytes.fromhex("c1c0 0011 0000 0000 00010000 01000000")
        + bytes(6)  # reserved
        + b"\x00\x00"  # no checksum, no immediate data
        + bytes(16)
        + bytes.fromhex("14000000")  # bytes remaining: the 20-byte footer
        + bytes(16)
        + FOOTER_MAGIC
    )
    assert frame == expected
    assert len(frame) == 64


def test_short_data_is_immediate_and_ack_is_requested() -> None:
    frame = encode_request(SET_INTEGRATION_TIME, struct.pack("<I", 100_000), request_ack=True)
    fields = header_fields(frame)
    assert fields[2] == Flag.REQUEST_ACK
    assert fields[4] == SET_INTEGRATION_TIME
    assert fields[8] == 4  # immediate data length
    assert fields[9][:4] == struct.pack("<I", 100_000) and fields[9][4:] == bytes(12)
    assert fields[10] == 20
    assert len(frame) == 64


def test_long_data_goes_in_a_payload_and_md5_covers_everything_before_the_footer() -> None:
    data = bytes(range(40))
    frame = encode_request(0x1234, data, checksum=True)
    fields = header_fields(frame)
    assert fields[7] == 1 and fields[8] == 0  # MD5, no immediate data
    assert fields[10] == len(data) + 20
    assert frame[44:-20] == data
    assert frame[-20:-4] == hashlib.md5(frame[:-20]).digest()
    assert frame[-4:] == FOOTER_MAGIC


@pytest.mark.parametrize(
    "kwargs",
    [
        {"msg_type": -1},
        {"msg_type": 2**32},
        {"regarding": 2**32},
        {"flags": 0x10000},
        {"error": -1},
        {"data": bytes(MAX_PAYLOAD + 1)},
    ],
)
def test_encoding_refuses_values_that_do_not_fit(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"msg_type": 1, **kwargs}
    with pytest.raises(ValueError, match=r"bit|exceeds"):
        encode_frame(**args)  # type: ignore[arg-type]


# -- round trips ------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)


@settings(max_examples=300, deadline=None)
@given(
    msg_type=u32,
    regarding=u32,
    flags=u16,
    error=u16,
    data=st.binary(max_size=200),
    checksum=st.booleans(),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_round_trip_in_any_chunking(
    msg_type: int,
    regarding: int,
    flags: int,
    error: int,
    data: bytes,
    checksum: bool,
    cuts: list[int],
) -> None:
    wire = encode_frame(
        msg_type, data, flags=flags, error=error, regarding=regarding, checksum=checksum
    )
    decoder = ObpDecoder()
    frames = decode_all(split(wire, cuts), decoder)
    assert frames == [ObpFrame(flags, error, msg_type, regarding, data, checksum)]
    assert decoder.buffered == 0 and decoder.discarded_bytes == 0 and not decoder.rejected


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=100), min_size=1, max_size=5),
    garbage=st.lists(st.binary(max_size=60).filter(lambda g: b"\xc1\xc0" not in g), max_size=6),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_garbage_before_and_between_frames_is_skipped_and_counted(
    payloads: list[bytes], garbage: list[bytes], cuts: list[int]
) -> None:
    frames = [encode_frame(i + 1, p, regarding=i) for i, p in enumerate(payloads)]
    noise = [*garbage, *[b""] * len(frames)][: len(frames)]
    # A garbage chunk ending in C1 could pair with a frame's start bytes; keep the test exact.
    noise = [g.rstrip(b"\xc1") for g in noise]
    wire = b"".join(g + f for g, f in zip(noise, frames, strict=True))
    decoder = ObpDecoder()
    decoded = decode_all(split(wire, cuts), decoder)
    assert [f.data for f in decoded] == payloads
    assert decoder.discarded_bytes == sum(len(g) for g in noise)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=20))
def test_arbitrary_bytes_never_raise_and_stay_bounded(chunks: list[bytes]) -> None:
    decoder = ObpDecoder()
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            assert isinstance(frame, ObpFrame)
        assert decoder.buffered < MAX_FRAME
        assert decoder.wanted >= 1


@settings(max_examples=100, deadline=None)
@given(
    prefix=st.binary(max_size=120),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
)
def test_corrupted_stream_raises_nothing_and_a_later_frame_still_decodes(
    prefix: bytes, flips: list[tuple[int, int]]
) -> None:
    # Arbitrary bytes, then a frame with bytes flipped, then silence-breaking good frames.
    damaged = bytearray(encode_frame(7, b"spectrum" * 10, regarding=7, checksum=True))
    for index, mask in flips:
        damaged[index % len(damaged)] ^= mask
    good = encode_frame(8, b"ok", regarding=8, checksum=True)
    decoder = ObpDecoder()
    frames = decoder.feed(prefix + bytes(damaged) + good)
    # The good frame may still be swallowed by a candidate whose corrupt header claims more bytes
    # than have come; a few more good frames complete or unmask it.
    for _ in range(MAX_FRAME // len(good) + 1):
        if any(f.regarding == 8 for f in frames):
            break
        frames += decoder.feed(good)
    assert any(f.regarding == 8 and f.data == b"ok" for f in frames)
    assert decoder.buffered < MAX_FRAME


# -- resynchronisation ------------------------------------------------------------------------

GOOD = encode_frame(GET_SERIAL_NUMBER, b"QE-RAMAN-0042", flags=Flag.RESPONSE, regarding=9)


def test_bad_md5_is_rejected_and_the_next_frame_decodes() -> None:
    bad = bytearray(encode_frame(GET_RAW_SPECTRUM, bytes(64), flags=1, regarding=8, checksum=True))
    bad[50] ^= 0x01  # one bit of the payload
    decoder = ObpDecoder()
    frames = decoder.feed(bytes(bad) + GOOD)
    assert [f.regarding for f in frames] == [9]
    assert decoder.rejected[BAD_CHECKSUM] == 1
    assert decoder.discarded_bytes == len(bad)


def test_wrong_footer_is_rejected_and_the_next_frame_decodes() -> None:
    bad = encode_frame(GET_SERIAL_NUMBER, b"x", regarding=8)[:-4] + b"\xc5\xc4\xc3\x00"
    decoder = ObpDecoder()
    assert [f.regarding for f in decoder.feed(bad + GOOD)] == [9]
    assert decoder.rejected["bad footer"] == 1


@pytest.mark.parametrize("keep", [3, 30, 44, 60, 500])
def test_truncated_frame_followed_by_a_good_one(keep: int) -> None:
    spectrum = encode_frame(GET_RAW_SPECTRUM, bytes(2048), flags=1, regarding=8)
    decoder = ObpDecoder()
    frames = decoder.feed(spectrum[:keep])
    assert frames == []
    frames = decoder.feed(GOOD)
    assert [f.regarding for f in frames] == [9]
    assert decoder.buffered == 0
    assert decoder.discarded_bytes == keep


def test_a_frame_inside_a_truncated_one_is_found_however_it_is_chunked() -> None:
    spectrum = encode_frame(GET_RAW_SPECTRUM, bytes(2048), flags=1, regarding=8)
    wire = spectrum[:700] + GOOD
    decoder = ObpDecoder()
    frames = decode_all([wire[i : i + 1] for i in range(len(wire))], decoder)
    assert [f.regarding for f in frames] == [9]
    assert decoder.rejected["truncated frame"] == 1


def test_implausible_length_is_rejected_at_once_and_memory_stays_bounded() -> None:
    huge = bytearray(GOOD)
    huge[40:44] = struct.pack("<I", 10_000_000)
    decoder = ObpDecoder()
    assert [f.regarding for f in decoder.feed(bytes(huge[:44]) + GOOD)] == [9]
    assert decoder.rejected["implausible bytes remaining"] == 1
    # The largest plausible frame, never completed, followed by a flood of zeros.
    largest = bytearray(encode_frame(GET_RAW_SPECTRUM, b"", flags=1)[:44])
    largest[40:44] = struct.pack("<I", MAX_PAYLOAD + 20)
    decoder = ObpDecoder()
    decoder.feed(bytes(largest))
    assert decoder.partial == (44, MAX_FRAME)
    assert decoder.wanted == MAX_FRAME - 44
    for _ in range(10):
        decoder.feed(bytes(50_000))
        assert decoder.buffered < MAX_FRAME
    assert decoder.rejected["bad footer"] == 1  # the huge candidate, once complete
    assert [f.regarding for f in decoder.feed(GOOD)] == [9]


def test_version_checksum_type_and_immediate_length_are_checked() -> None:
    for offset, value in ((2, b"\x00\x12"), (22, b"\x07"), (23, b"\x11")):
        bad = bytearray(GOOD)
        bad[offset : offset + len(value)] = value
        decoder = ObpDecoder()
        assert [f.regarding for f in decoder.feed(bytes(bad) + GOOD)] == [9]
        assert sum(decoder.rejected.values()) == 1


def test_immediate_data_with_a_payload_is_inconsistent() -> None:
    bad = bytearray(encode_frame(1, bytes(20), regarding=8))
    bad[23] = 4  # claims immediate data as well
    decoder = ObpDecoder()
    assert [f.regarding for f in decoder.feed(bytes(bad) + GOOD)] == [9]
    assert decoder.rejected["immediate data and payload both present"] == 1


def test_reset_forgets_a_partial_frame_but_keeps_counters() -> None:
    decoder = ObpDecoder()
    decoder.feed(b"junk" + GOOD[:50])
    assert decoder.partial == (50, 64)
    decoder.reset()
    assert decoder.buffered == 0 and decoder.partial is None and decoder.discarded_bytes == 4
    assert [f.regarding for f in decoder.feed(GOOD)] == [9]


# -- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("error", sorted(ERROR_NAMES))
def test_nack_names_its_error(error: int) -> None:
    frame = ObpFrame(Flag.RESPONSE | Flag.NACK, error, GET_RAW_SPECTRUM, 1, b"")
    with pytest.raises(ObpNackError) as caught:
        check_reply(frame, "get raw spectrum")
    assert caught.value.error == error
    assert str(caught.value).startswith(f"device NACK: {ERROR_NAMES[error]} ({error})")
    assert isinstance(caught.value, InstrumentError)


def test_nack_names() -> None:
    frame = ObpFrame(Flag.NACK, 7, GET_RAW_SPECTRUM, 1, b"")
    with pytest.raises(ObpNackError, match=r"^device NACK: device not ready \(7\)"):
        check_reply(frame, "get raw spectrum")
    assert error_name(3) == "bad checksum"
    assert error_name(99) == "unknown error"
    assert message_name(GET_RAW_SPECTRUM) == "get raw spectrum"
    assert message_name(0xABCDEF01) == "message 0xabcdef01"


def test_hardware_exception_is_a_refusal_and_plain_replies_pass() -> None:
    with pytest.raises(ObpNackError, match="hardware exception"):
        check_reply(ObpFrame(Flag.HARDWARE_EXCEPTION, 13, 1, 1, b""), "x")
    ok = ObpFrame(Flag.RESPONSE, 0, 1, 1, b"\x03")
    assert check_reply(ok, "x") is ok
    assert unpack_u8(ok, "x") == 3


def test_value_replies_of_the_wrong_size_are_errors() -> None:
    assert unpack_f32(ObpFrame(1, 0, 1, 1, struct.pack("<f", 785.5)), "x") == 785.5
    with pytest.raises(ObpError, match="reply to get x has 3 bytes, expected 4"):
        unpack_f32(ObpFrame(1, 0, 1, 1, b"abc"), "get x")
    with pytest.raises(ObpError, match="expected 1"):
        unpack_u8(ObpFrame(1, 0, 1, 1, b""), "get x")
