"""Unit tests for the Modbus register maps: specs, read planning, decoding, encoding, profiles."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway import PluginContext, float32_decimal, validate_ucum
from plugins.modbus.driver import ModbusDriver
from plugins.modbus.options import ModbusOptions
from plugins.modbus.profiles import Profile, available_profiles, load_profile
from plugins.modbus.registers import (
    DATA_TYPES,
    MAX_READ,
    Decoder,
    ReadBlock,
    RegisterSpec,
    encode_value,
    plan_reads,
)

ORDERS = ["big", "little"]
TYPES = ["int16", "uint16", "int32", "uint32", "float32", "float64"]


def spec(name: str = "x", address: int = 0, **fields: Any) -> RegisterSpec:
    return RegisterSpec(name=name, address=address, **fields)


def only_decoder(s: RegisterSpec, word_order: str = "big", byte_order: str = "big") -> Decoder:
    [block] = plan_reads([s], word_order=word_order, byte_order=byte_order)  # type: ignore[arg-type]
    [decoder] = block.decoders
    return decoder


def layout(blocks: list[ReadBlock]) -> list[tuple[str, int, int]]:
    return [(b.table, b.start, b.count) for b in blocks]


# --- known vectors: hand-computed register contents --------------------------------------------

# (type, value, {(word_order, byte_order): words}); values chosen with distinct bytes so that
# every swap is visible. float32 pi = 0x40490FDB, float64 pi = 0x400921FB54442D18.
F32_PI = struct.unpack(">f", bytes.fromhex("40490FDB"))[0]
KNOWN_VECTORS: list[tuple[str, float | int, dict[tuple[str, str], list[int]]]] = [
    (
        "int16",
        -12345,  # 0xCFC7
        {
            ("big", "big"): [0xCFC7],
            ("little", "big"): [0xCFC7],
            ("big", "little"): [0xC7CF],
            ("little", "little"): [0xC7CF],
        },
    ),
    (
        "int16",
        -2,
        {
            ("big", "big"): [0xFFFE],
            ("little", "big"): [0xFFFE],
            ("big", "little"): [0xFEFF],
            ("little", "little"): [0xFEFF],
        },
    ),
    (
        "uint16",
        0x1234,
        {
            ("big", "big"): [0x1234],
            ("little", "big"): [0x1234],
            ("big", "little"): [0x3412],
            ("little", "little"): [0x3412],
        },
    ),
    (
        "uint16",
        65535,
        {
            ("big", "big"): [0xFFFF],
            ("little", "big"): [0xFFFF],
            ("big", "little"): [0xFFFF],
            ("little", "little"): [0xFFFF],
        },
    ),
    (
        "int32",
        -2,
        {
            ("big", "big"): [0xFFFF, 0xFFFE],
            ("little", "big"): [0xFFFE, 0xFFFF],
            ("big", "little"): [0xFFFF, 0xFEFF],
            ("little", "little"): [0xFEFF, 0xFFFF],
        },
    ),
    (
        "int32",
        -0x12345678,  # 0xEDCBA988
        {
            ("big", "big"): [0xEDCB, 0xA988],
            ("little", "big"): [0xA988, 0xEDCB],
            ("big", "little"): [0xCBED, 0x88A9],
            ("little", "little"): [0x88A9, 0xCBED],
        },
    ),
    (
        "uint32",
        0x12345678,
        {
            ("big", "big"): [0x1234, 0x5678],
            ("little", "big"): [0x5678, 0x1234],
            ("big", "little"): [0x3412, 0x7856],
            ("little", "little"): [0x7856, 0x3412],
        },
    ),
    (
        "float32",
        1.0,
        {
            ("big", "big"): [0x3F80, 0x0000],
            ("little", "big"): [0x0000, 0x3F80],
            ("big", "little"): [0x803F, 0x0000],
            ("little", "little"): [0x0000, 0x803F],
        },
    ),
    (
        "float32",
        F32_PI,
        {
            ("big", "big"): [0x4049, 0x0FDB],
            ("little", "big"): [0x0FDB, 0x4049],
            ("big", "little"): [0x4940, 0xDB0F],
            ("little", "little"): [0xDB0F, 0x4940],
        },
    ),
    (
        "float64",
        1.0,
        {
            ("big", "big"): [0x3FF0, 0, 0, 0],
            ("little", "big"): [0, 0, 0, 0x3FF0],
            ("big", "little"): [0xF03F, 0, 0, 0],
            ("little", "little"): [0, 0, 0, 0xF03F],
        },
    ),
    (
        "float64",
        math.pi,
        {
            ("big", "big"): [0x4009, 0x21FB, 0x5444, 0x2D18],
            ("little", "big"): [0x2D18, 0x5444, 0x21FB, 0x4009],
            ("big", "little"): [0x0940, 0xFB21, 0x4454, 0x182D],
            ("little", "little"): [0x182D, 0x4454, 0xFB21, 0x0940],
        },
    ),
]

KNOWN_CASES = [
    pytest.param(t, v, wo, bo, words, id=f"{t}-{v!r}-words_{wo}-bytes_{bo}")
    for t, v, table in KNOWN_VECTORS
    for (wo, bo), words in table.items()
]


def test_known_vectors_cover_every_type_and_order() -> None:
    covered = {(t, wo, bo) for t, _, table in KNOWN_VECTORS for (wo, bo) in table}
    assert covered == {(t, wo, bo) for t in TYPES for wo in ORDERS for bo in ORDERS}


@pytest.mark.parametrize(("dtype", "value", "word_order", "byte_order", "words"), KNOWN_CASES)
def test_decode_known_vector(
    dtype: str, value: float, word_order: str, byte_order: str, words: list[int]
) -> None:
    decoder = only_decoder(spec(type=dtype), word_order, byte_order)
    decoded = decoder.decode(words)
    assert decoded == _meant(dtype, value)
    assert type(decoded) is (float if dtype.startswith("float") else int)


@pytest.mark.parametrize(("dtype", "value", "word_order", "byte_order", "words"), KNOWN_CASES)
def test_encode_known_vector(
    dtype: str, value: float, word_order: str, byte_order: str, words: list[int]
) -> None:
    encoded = encode_value(
        spec(type=dtype),
        value,
        word_order=word_order,  # type: ignore[arg-type]
        byte_order=byte_order,  # type: ignore[arg-type]
    )
    assert encoded == words


@pytest.mark.parametrize(("dtype", "value", "word_order", "byte_order", "words"), KNOWN_CASES)
def test_spec_orders_override_the_defaults(
    dtype: str, value: float, word_order: str, byte_order: str, words: list[int]
) -> None:
    """A register's own word/byte order wins over the map's (here the opposite) defaults."""
    s = spec(type=dtype, word_order=word_order, byte_order=byte_order)
    other_wo = "big" if word_order == "little" else "little"
    other_bo = "big" if byte_order == "little" else "little"
    assert only_decoder(s, other_wo, other_bo).decode(words) == _meant(dtype, value)
    assert encode_value(s, value, word_order=other_wo, byte_order=other_bo) == words  # type: ignore[arg-type]


def test_decode_special_floats() -> None:
    f32 = only_decoder(spec(type="float32"))
    assert f32.decode([0x7F80, 0x0000]) == math.inf
    assert f32.decode([0xFF80, 0x0000]) == -math.inf
    assert math.isnan(f32.decode([0x7FC0, 0x0000]))
    assert f32.decode([0xC020, 0x0000]) == -2.5
    f64 = only_decoder(spec(type="float64"))
    assert f64.decode([0xC004, 0, 0, 0]) == -2.5


def test_decode_reads_at_its_offset_in_the_block() -> None:
    specs = [
        spec("a", 10, type="uint16"),
        spec("b", 11, type="int32"),
        spec("c", 13, type="float32"),
        spec("d", 15, type="int16"),
    ]
    [block] = plan_reads(specs)
    words = [0x0007, 0xFFFF, 0xFFFE, 0x3F80, 0x0000, 0xFFFF]
    assert len(words) == block.count
    assert {d.name: d.decode(words) for d in block.decoders} == {
        "a": 7,
        "b": -2,
        "c": 1.0,
        "d": -1,
    }


# --- property: decode(encode(v)) == v for every type and order -------------------------------

INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
ALL_ORDERS = [(wo, bo) for wo in ORDERS for bo in ORDERS]


def _values(dtype: str) -> st.SearchStrategy[float | int]:
    if dtype in INT_RANGES:
        lo, hi = INT_RANGES[dtype]
        return st.integers(lo, hi)
    if dtype == "float32":
        # Any double that fits float32's range; it is compared after a struct round trip.
        return st.floats(-3.4e38, 3.4e38, allow_nan=False)
    return st.floats(allow_nan=False, allow_infinity=False)


def _expected(dtype: str, value: float | int) -> float | int:
    if dtype == "float32":
        return _meant(dtype, float(struct.unpack(">f", struct.pack(">f", value))[0]))
    return value


def _meant(dtype: str, value: float | int) -> float | int:
    """A float32 register decodes to the decimal the instrument meant (3.1415927, not
    3.1415927410125732); encoding that decimal gives back the same register words."""
    return float32_decimal(value) if dtype == "float32" else value


@pytest.mark.parametrize(("word_order", "byte_order"), ALL_ORDERS)
@pytest.mark.parametrize("dtype", TYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_decode_inverts_encode(
    dtype: str, word_order: str, byte_order: str, data: st.DataObject
) -> None:
    value = data.draw(_values(dtype), label="value")
    s = spec(type=dtype)
    words = encode_value(s, value, word_order=word_order, byte_order=byte_order)  # type: ignore[arg-type]
    assert len(words) == DATA_TYPES[dtype][1] == s.count
    assert all(0 <= w <= 0xFFFF for w in words)
    assert only_decoder(s, word_order, byte_order).decode(words) == _expected(dtype, value)


@pytest.mark.parametrize(("word_order", "byte_order"), ALL_ORDERS)
@pytest.mark.parametrize("dtype", TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_encode_inverts_decode(
    dtype: str, word_order: str, byte_order: str, data: st.DataObject
) -> None:
    """Any register contents (bar NaN patterns) survive decode then encode unchanged."""
    count = DATA_TYPES[dtype][1]
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    s = spec(type=dtype)
    value = only_decoder(s, word_order, byte_order).decode(words)
    if isinstance(value, float) and not math.isfinite(value):
        return  # NaN and infinities are refused by encode_value, tested below
    assert encode_value(s, value, word_order=word_order, byte_order=byte_order) == words  # type: ignore[arg-type]


# --- scale and offset ------------------------------------------------------------------------


def test_scale_and_offset_applied_on_decode() -> None:
    s = spec(type="int16", scale=0.1, offset=-5.0)
    decoder = only_decoder(s)
    assert decoder.decode([250]) == pytest.approx(20.0)
    assert decoder.decode([0xFFFF]) == pytest.approx(-5.1)  # raw -1
    assert isinstance(decoder.decode([250]), float)
    hundredths = only_decoder(spec(type="uint16", scale=0.01))
    assert hundredths.decode([65535]) == pytest.approx(655.35)


def test_scale_and_offset_inverted_on_encode() -> None:
    s = spec(type="int16", scale=0.1, offset=-5.0)
    assert encode_value(s, 20.0) == [250]
    assert encode_value(s, -5.1) == [0xFFFF]
    # Rounded to the nearest raw step.
    assert encode_value(s, 20.04) == [250]
    assert encode_value(s, 20.06) == [251]
    f = spec(type="float32", scale=2.0, offset=1.0)
    assert encode_value(f, 3.0) == [0x3F80, 0x0000]  # raw 1.0
    assert only_decoder(f).decode([0x3F80, 0x0000]) == 3.0


@settings(max_examples=100, deadline=None)
@given(raw=st.integers(-(2**15), 2**15 - 1))
def test_scaled_int16_round_trip(raw: int) -> None:
    s = spec(type="int16", scale=0.1, offset=-5.0)
    words = encode_value(s, raw * 0.1 - 5.0)
    assert words == [raw & 0xFFFF]
    assert only_decoder(s).decode(words) == pytest.approx(raw * 0.1 - 5.0)


def test_scaled_value_out_of_range_is_refused() -> None:
    s = spec(type="uint16", scale=0.1)
    assert encode_value(s, 6553.5) == [65535]
    with pytest.raises(ValueError, match="does not fit uint16"):
        encode_value(s, 6553.6)


# --- encode_value errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        ("int16", 40000),
        ("int16", 32768),
        ("int16", -32769),
        ("uint16", -1),
        ("uint16", 65536),
        ("int32", 2**31),
        ("int32", -(2**31) - 1),
        ("uint32", -1),
        ("uint32", 2**32),
    ],
)
def test_encode_out_of_range_raises_value_error(dtype: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"does not fit {dtype}"):
        encode_value(spec("setpoint", type=dtype), value)


@pytest.mark.parametrize(
    ("dtype", "value"), [("int16", 32767), ("int16", -32768), ("uint32", 2**32 - 1)]
)
def test_encode_range_limits_fit(dtype: str, value: int) -> None:
    s = spec(type=dtype)
    assert only_decoder(s).decode(encode_value(s, value)) == value


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_encode_non_finite_raises_value_error(dtype: str, value: float) -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        encode_value(spec("setpoint", type=dtype), value)


@pytest.mark.parametrize("value", [1e39, -1e39, 3.5e38])
def test_encode_float32_overflow_raises_value_error(value: float) -> None:
    """A finite double beyond float32's range does not fit: ValueError, as documented."""
    with pytest.raises(ValueError, match="does not fit float32"):
        encode_value(spec("setpoint", type="float32"), value)


# --- RegisterSpec validation -----------------------------------------------------------------


def test_register_spec_defaults_and_count() -> None:
    s = spec()
    assert (s.type, s.table, s.scale, s.offset, s.unit, s.access) == (
        "uint16",
        "holding",
        1.0,
        0.0,
        "1",
        "r",
    )
    assert s.word_order is None and s.byte_order is None
    assert [spec(type=t).count for t in TYPES] == [1, 1, 2, 2, 2, 4]


@pytest.mark.parametrize(
    "bad",
    [
        {"scale": 0},
        {"scale": math.nan},
        {"scale": math.inf},
        {"offset": math.inf},
        {"offset": math.nan},
        {"address": -1},
        {"address": 65537},
        {"type": "int8"},
        {"table": "coil"},
        {"word_order": "middle"},
        {"access": "w"},
        {"access": "rw", "table": "input"},
        {"colour": "red"},
        {"name": "-bad"},
        {"name": "has space"},
    ],
)
def test_register_spec_rejects(bad: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"name": "x", "address": 0, **bad}
    with pytest.raises(ValidationError):
        RegisterSpec(**fields)


def test_register_spec_is_frozen() -> None:
    s = spec()
    with pytest.raises(ValidationError):
        s.address = 5  # type: ignore[misc]


# --- plan_reads ------------------------------------------------------------------------------


def test_adjacent_registers_share_one_block() -> None:
    specs = [spec("c", 3), spec("a", 0), spec("b", 1, type="float32")]  # unsorted on purpose
    [block] = plan_reads(specs)
    assert (block.table, block.start, block.count) == ("holding", 0, 4)
    assert [(d.name, d.offset_in_block, d.count) for d in block.decoders] == [
        ("a", 0, 1),
        ("b", 1, 2),
        ("c", 3, 1),
    ]


def test_a_gap_splits_blocks() -> None:
    blocks = plan_reads([spec("a", 0), spec("b", 5, type="float32")])
    assert layout(blocks) == [("holding", 0, 1), ("holding", 5, 2)]
    assert [d.offset_in_block for b in blocks for d in b.decoders] == [0, 0]


def test_max_gap_bridges_exactly_that_many_registers() -> None:
    specs = [spec("a", 0), spec("b", 5, type="float32")]  # registers 1..4 unused: a gap of 4
    assert layout(plan_reads(specs, max_gap=3)) == [("holding", 0, 1), ("holding", 5, 2)]
    [block] = plan_reads(specs, max_gap=4)
    assert (block.start, block.count) == (0, 7)
    assert [(d.name, d.offset_in_block) for d in block.decoders] == [("a", 0), ("b", 5)]


def test_overlapping_registers_share_a_block() -> None:
    """A 32-bit value and an alias of its low word are read once."""
    [block] = plan_reads([spec("low", 1), spec("whole", 0, type="uint32")])
    assert (block.start, block.count) == (0, 2)
    words = [0x1234, 0x5678]
    assert {d.name: d.decode(words) for d in block.decoders} == {
        "whole": 0x12345678,
        "low": 0x5678,
    }


def test_holding_and_input_tables_are_read_separately() -> None:
    specs = [
        spec("i1", 1, table="input"),
        spec("h0", 0),
        spec("i0", 0, table="input"),
        spec("h1", 1),
    ]
    blocks = plan_reads(specs)
    assert layout(blocks) == [("holding", 0, 2), ("input", 0, 2)]
    assert [[d.name for d in b.decoders] for b in blocks] == [["h0", "h1"], ["i0", "i1"]]


def test_adjacent_addresses_in_different_tables_do_not_merge() -> None:
    blocks = plan_reads([spec("h", 0), spec("i", 1, table="input")])
    assert layout(blocks) == [("holding", 0, 1), ("input", 1, 1)]


def test_read_limit_of_125_registers_splits() -> None:
    assert MAX_READ == 125
    specs = [spec(f"r{i}", i) for i in range(126)]
    blocks = plan_reads(specs)
    assert layout(blocks) == [("holding", 0, 125), ("holding", 125, 1)]
    assert len(blocks[0].decoders) == 125
    assert blocks[1].decoders[0].name == "r125"
    assert blocks[1].decoders[0].offset_in_block == 0


def test_exactly_125_registers_fit_one_block() -> None:
    specs = [spec(f"r{i}", i) for i in range(123)] + [spec("tail", 123, type="float32")]
    assert layout(plan_reads(specs)) == [("holding", 0, 125)]


def test_a_value_crossing_the_limit_starts_a_new_block() -> None:
    specs = [spec(f"r{i}", i) for i in range(124)] + [spec("tail", 124, type="float32")]
    blocks = plan_reads(specs)
    assert layout(blocks) == [("holding", 0, 124), ("holding", 124, 2)]


def test_max_gap_never_exceeds_the_limit() -> None:
    blocks = plan_reads([spec("a", 0), spec("b", 130)], max_gap=200)
    assert layout(blocks) == [("holding", 0, 1), ("holding", 130, 1)]
    for block in plan_reads([spec(f"r{i}", i * 3) for i in range(100)], max_gap=2):
        assert block.count <= MAX_READ


def test_address_base_one_shifts_by_one() -> None:
    specs = [spec("a", 1), spec("b", 2, type="float32"), spec("c", 2090)]
    blocks = plan_reads(specs, address_base=1)
    assert layout(blocks) == [("holding", 0, 3), ("holding", 2089, 1)]
    assert [(d.name, d.offset_in_block) for b in blocks for d in b.decoders] == [
        ("a", 0),
        ("b", 1),
        ("c", 0),
    ]


def test_address_below_the_base_raises() -> None:
    with pytest.raises(ValueError, match="'zero'"):
        plan_reads([spec("ok", 1), spec("zero", 0)], address_base=1)


@pytest.mark.parametrize(
    ("address", "dtype"),
    [(65536, "uint16"), (65535, "float32"), (65533, "float64")],
)
def test_register_beyond_the_modbus_address_space_raises(address: int, dtype: str) -> None:
    """Protocol addresses are 16-bit (0..65535): a value ending past 65535 can never be read."""
    with pytest.raises(ValueError, match="'far'"):
        plan_reads([spec("far", address, type=dtype)], address_base=0)


def test_last_register_of_the_address_space_is_fine() -> None:
    assert layout(plan_reads([spec("end", 65535)])) == [("holding", 65535, 1)]
    assert layout(plan_reads([spec("end", 65536)], address_base=1)) == [("holding", 65535, 1)]


def test_plan_orders_apply_to_every_decoder() -> None:
    [block] = plan_reads(
        [spec("a", 0, type="float32"), spec("b", 2, type="float32", word_order="big")],
        word_order="little",
        byte_order="little",
    )
    a, b = block.decoders
    assert (a.swap_words, a.swap_bytes) == (True, True)
    assert (b.swap_words, b.swap_bytes) == (False, True)


def test_empty_plan() -> None:
    assert plan_reads([]) == []


# --- shipped profiles ------------------------------------------------------------------------


def test_available_profiles() -> None:
    names = available_profiles()
    assert {"feed_pump", "hamilton_arc_ph"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", available_profiles())
def test_every_shipped_profile_loads_and_plans(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, Profile)
    assert profile.registers
    names = [r.name for r in profile.registers]
    assert len(names) == len(set(names))
    for register in profile.registers:
        assert validate_ucum(register.unit) == register.unit
        if register.status is not None:
            assert register.status.status_register in names
    blocks = plan_reads(
        profile.registers,
        address_base=profile.address_base,
        word_order=profile.word_order,
        byte_order=profile.byte_order,
    )
    planned = sorted(d.name for b in blocks for d in b.decoders)
    assert planned == sorted(names)
    assert all(b.count <= MAX_READ for b in blocks)


def test_feed_pump_profile_is_one_holding_block_of_20() -> None:
    profile = load_profile("feed_pump")
    assert (profile.address_base, profile.word_order, profile.byte_order) == (0, "big", "big")
    blocks = plan_reads(profile.registers, address_base=profile.address_base)
    # The watchdog registers (15-19) follow the device id (14): still one read per poll.
    assert layout(blocks) == [("holding", 0, 20)]
    assert [(d.name, d.offset_in_block, d.count) for d in blocks[0].decoders] == [
        ("speed_setpoint", 0, 2),
        ("speed", 2, 2),
        ("flow", 4, 2),
        ("total_volume", 6, 4),
        ("running", 10, 1),
        ("fault_code", 11, 1),
        ("tubing_ml_per_rev", 12, 2),
        ("device_id", 14, 1),
        ("heartbeat", 15, 1),
        ("watchdog_s", 16, 1),
        ("safe_speed", 17, 2),
        ("watchdog_tripped", 19, 1),
    ]
    writable = {r.name for r in profile.registers if r.access == "rw"}
    assert writable == {
        "speed_setpoint",
        "running",
        "tubing_ml_per_rev",
        "heartbeat",
        "watchdog_s",
        "safe_speed",
    }


def test_feed_pump_block_decodes() -> None:
    profile = load_profile("feed_pump")
    [block] = plan_reads(profile.registers)
    words = [
        *(0x4270, 0x0000),  # speed_setpoint 60.0
        *(0x4270, 0x0000),  # speed 60.0
        *(0x4240, 0x0000),  # flow 48.0
        *(0x4059, 0x0000, 0x0000, 0x0000),  # total_volume 100.0 (float64)
        1,  # running
        0,  # fault_code
        *(0x3F4C, 0xCCCD),  # tubing_ml_per_rev float32 0.8
        0x5046,  # device_id
        7,  # heartbeat
        30,  # watchdog_s
        *(0x4120, 0x0000),  # safe_speed 10.0
        1,  # watchdog_tripped
    ]
    values = {d.name: d.decode(words) for d in block.decoders}
    assert values["speed_setpoint"] == 60.0
    assert values["flow"] == 48.0
    assert values["total_volume"] == 100.0
    assert values["running"] == 1
    assert values["fault_code"] == 0
    assert values["tubing_ml_per_rev"] == pytest.approx(0.8, rel=1e-7)
    assert (values["heartbeat"], values["watchdog_s"], values["watchdog_tripped"]) == (7, 30, 1)
    assert values["safe_speed"] == 10.0


def test_hamilton_arc_profile_plans_two_blocks_at_1_based_addresses() -> None:
    profile = load_profile("hamilton_arc_ph")
    assert profile.address_base == 1
    blocks = plan_reads(
        profile.registers,
        address_base=profile.address_base,
        word_order=profile.word_order,
        byte_order=profile.byte_order,
    )
    assert layout(blocks) == [("holding", 2089, 10), ("holding", 2409, 10)]
    assert [d.name for d in blocks[0].decoders] == [
        "ph_unit_bits",
        "ph",
        "ph_status",
        "ph_min",
        "ph_max",
    ]
    assert [d.offset_in_block for d in blocks[1].decoders] == [0, 2, 4, 6, 8]
    ph = next(r for r in profile.registers if r.name == "ph")
    assert ph.unit == "[pH]"
    assert ph.status is not None
    assert (ph.status.status_register, ph.status.bad_mask) == ("ph_status", 16)


def test_hamilton_arc_with_0_based_override_shifts_blocks() -> None:
    profile = load_profile("hamilton_arc_ph")
    blocks = plan_reads(profile.registers, address_base=0)
    assert layout(blocks) == [("holding", 2090, 10), ("holding", 2410, 10)]


def test_modbus_driver_uses_the_profile_plan() -> None:
    """The driver builds the same blocks from its options, without any I/O."""
    options = ModbusOptions(profile="hamilton_arc_ph", transport="rtu", serial_port="/dev/null")
    driver = ModbusDriver(options, PluginContext("arc", Path("data")))
    assert layout(driver.blocks) == [("holding", 2089, 10), ("holding", 2409, 10)]
    channels = {c.name: c.unit for c in driver.channels()}
    assert channels["ph"] == "[pH]"
    assert channels["temperature"] == "Cel"
    shifted = ModbusDriver(
        ModbusOptions(profile="hamilton_arc_ph", address_base=0),
        PluginContext("arc", Path("data")),
    )
    assert layout(shifted.blocks) == [("holding", 2090, 10), ("holding", 2410, 10)]


@pytest.mark.parametrize("name", ["nope", "../feed_pump", "feed_pump.yaml", ""])
def test_unknown_profile_raises_naming_the_known_ones(name: str) -> None:
    with pytest.raises(ValueError, match="unknown profile") as excinfo:
        load_profile(name)
    assert "feed_pump" in str(excinfo.value)
    assert "hamilton_arc_ph" in str(excinfo.value)
