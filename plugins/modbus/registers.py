"""Register maps, pure: decoding words into values, encoding values into words, grouping reads.

No I/O here. A :class:`RegisterSpec` is validated once (pydantic, at configuration time) and then
compiled into a :class:`Decoder` holding a ``struct`` format and the word/byte order, so decoding
a poll is one ``struct.unpack`` per register (plus reordering words or bytes when the map says so).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import float32_decimal

__all__ = [
    "DATA_TYPES",
    "CommandSpec",
    "Decoder",
    "ReadBlock",
    "RegisterSpec",
    "StatusRule",
    "encode_value",
    "plan_reads",
]

DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64"]
Order = Literal["big", "little"]
Table = Literal["holding", "input"]

# data type -> (struct code, number of 16-bit registers)
DATA_TYPES: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "float32": ("f", 2),
    "float64": ("d", 4),
}

MAX_READ = 125  # registers per read request (Modbus spec, function codes 3 and 4)


class StatusRule(BaseModel):
    """Derive a value's quality from a status register's bits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status_register: str = Field(description="Name of the register holding the status bits.")
    bad_mask: int = Field(default=0, ge=0, description="Any of these bits set → bad.")
    uncertain_mask: int = Field(default=0, ge=0, description="Any of these bits set → uncertain.")


class RegisterSpec(BaseModel):
    """One value in the instrument's register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Channel name.")
    address: int = Field(ge=0, le=65536, description="Register number (see address_base).")
    type: DataType = Field(default="uint16", description="Data type of the raw value.")
    table: Table = Field(default="holding", description="holding (FC 3) or input (FC 4).")
    word_order: Order | None = Field(
        default=None, description="Order of 16-bit words; big = most significant first."
    )
    byte_order: Order | None = Field(default=None, description="Order of bytes within a word.")
    scale: float = Field(default=1.0, description="Engineering value = raw * scale + offset.")
    offset: float = 0.0
    unit: str = Field(default="1", description="UCUM unit of the engineering value.")
    access: Literal["r", "rw"] = Field(default="r", description="rw allows writes (setpoints).")
    description: str = ""
    status: StatusRule | None = Field(default=None, description="Quality from status bits.")

    @model_validator(mode="after")
    def _scale_nonzero(self) -> RegisterSpec:
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise ValueError("scale must be finite and non-zero, offset finite")
        if self.access == "rw" and self.table != "holding":
            # Input registers are read-only in Modbus: a write would go to the holding
            # register at the same address, another value.
            raise ValueError("access: rw needs table: holding (input registers are read-only)")
        return self

    @property
    def count(self) -> int:
        """How many 16-bit registers the value occupies."""
        return DATA_TYPES[self.type][1]


class CommandSpec(BaseModel):
    """A device command as a fixed value written to a holding register (a pump's start is a
    1 written to its run register)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Command name.")
    channel: str = Field(description="The register of this map written (a holding register).")
    value: float = Field(description="The engineering value written (scaled as the register).")
    description: str = ""
    changes_process: bool = Field(
        default=True, description="False: it acts on the instrument's reading only."
    )


@dataclass(frozen=True, slots=True)
class Decoder:
    """A compiled register: where it is in a read block and how to turn words into a value."""

    name: str
    offset_in_block: int
    count: int
    fmt: struct.Struct
    words: struct.Struct
    swap_words: bool
    swap_bytes: bool
    scale: float
    offset: float
    is_float: bool
    float32: bool

    def decode(self, words: Sequence[int]) -> float | int:
        """Decode this register from ``words`` (the whole block's registers).

        A float32 is taken as the decimal the instrument meant (1.6, not 1.600000023841858:
        :func:`gateway.float32_decimal`) before the scale and offset apply."""
        part = words[self.offset_in_block : self.offset_in_block + self.count]
        if self.swap_words:
            part = part[::-1]
        # The words packed as 16-bit integers in the byte order of the map: the value's bytes.
        raw = self.words.pack(*part)
        value: float | int = self.fmt.unpack(raw)[0]
        if self.float32:
            value = float32_decimal(value)
        if self.scale != 1.0 or self.offset != 0.0:
            return value * self.scale + self.offset
        return value if self.is_float else int(value)


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request covering adjacent registers of one table."""

    table: Table
    start: int  # protocol (0-based) address
    count: int
    decoders: tuple[Decoder, ...]


def _decoder(spec: RegisterSpec, start: int, word_order: Order, byte_order: Order) -> Decoder:
    code, count = DATA_TYPES[spec.type]
    swap_bytes = (spec.byte_order or byte_order) == "little"
    return Decoder(
        name=spec.name,
        offset_in_block=start,
        count=count,
        fmt=struct.Struct(">" + code),
        words=struct.Struct(("<" if swap_bytes else ">") + "H" * count),
        swap_words=(spec.word_order or word_order) == "little",
        swap_bytes=swap_bytes,
        scale=spec.scale,
        offset=spec.offset,
        is_float=spec.type.startswith("float") or spec.scale != 1.0 or spec.offset != 0.0,
        float32=spec.type == "float32",
    )


def plan_reads(
    specs: Sequence[RegisterSpec],
    *,
    address_base: int = 0,
    word_order: Order = "big",
    byte_order: Order = "big",
    max_gap: int = 0,
) -> list[ReadBlock]:
    """Group registers into as few read requests as possible.

    Registers of the same table whose addresses are adjacent (or at most ``max_gap`` registers
    apart, or overlapping) share a request of at most 125 registers. ``address_base`` is 1 when
    the map numbers registers from 1 (as many manuals do); requests use 0-based addresses.
    """
    blocks: list[ReadBlock] = []
    for table in ("holding", "input"):
        items = sorted((s for s in specs if s.table == table), key=lambda s: (s.address, s.count))
        group: list[RegisterSpec] = []
        start = end = 0
        for spec in items:
            address = spec.address - address_base
            if address < 0:
                raise ValueError(f"register {spec.name!r}: address below address_base")
            if address + spec.count > 65536:
                raise ValueError(
                    f"register {spec.name!r}: {spec.type} at {spec.address} runs past the"
                    " last Modbus address"
                )
            if (
                group
                and address <= end + max_gap
                and max(end, address + spec.count) - start <= MAX_READ
            ):
                end = max(end, address + spec.count)
                group.append(spec)
                continue
            if group:
                blocks.append(
                    _block(table, group, start, end, address_base, word_order, byte_order)
                )
            group, start, end = [spec], address, address + spec.count
        if group:
            blocks.append(_block(table, group, start, end, address_base, word_order, byte_order))
    return blocks


def _block(
    table: Table,
    group: list[RegisterSpec],
    start: int,
    end: int,
    address_base: int,
    word_order: Order,
    byte_order: Order,
) -> ReadBlock:
    decoders = tuple(
        _decoder(s, s.address - address_base - start, word_order, byte_order) for s in group
    )
    return ReadBlock(table, start, end - start, decoders)


def encode_value(
    spec: RegisterSpec, value: float, *, word_order: Order = "big", byte_order: Order = "big"
) -> list[int]:
    """The registers to write for engineering ``value`` (inverse of decoding, for setpoints).

    Raises ``ValueError`` when the value does not fit the data type.
    """
    code, count = DATA_TYPES[spec.type]
    raw: float | int = (value - spec.offset) / spec.scale
    if not spec.type.startswith("float"):
        if not math.isfinite(raw):
            raise ValueError(f"{spec.name}: {value} is not a finite number")
        raw = round(raw)
    elif not math.isfinite(raw):
        raise ValueError(f"{spec.name}: {value} is not a finite number")
    try:
        data = struct.pack(">" + code, raw)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{spec.name}: {value} does not fit {spec.type}") from exc
    if (spec.byte_order or byte_order) == "little":
        data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if (spec.word_order or word_order) == "little":
        words.reverse()
    assert len(words) == count
    return words
