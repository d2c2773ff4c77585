"""The ``options:`` of a Modbus instrument."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import SerialPort

from .identity import IdentitySpec
from .profiles import load_profile
from .registers import CommandSpec, RegisterSpec

__all__ = ["ModbusOptions"]


class ModbusOptions(BaseModel):
    """How to reach a Modbus instrument and which registers to read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["tcp", "rtu"] = Field(default="tcp", description="Modbus TCP or RTU.")
    host: str = Field(default="127.0.0.1", description="TCP: instrument address.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP: instrument port.")
    serial_port: SerialPort | None = Field(
        default=None,
        description="RTU: device path (/dev/ttyUSB0; a relative one is relative to the config"
        " file's folder) or pyserial URL (socket://host:port).",
    )
    baudrate: int = Field(default=19200, gt=0, description="RTU: bits per second.")
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (device) id.")
    timeout_s: float = Field(default=1.0, gt=0, le=60, description="Per-request timeout.")
    profile: str | None = Field(default=None, description="Named register map, e.g. feed_pump.")
    registers: tuple[RegisterSpec, ...] = Field(
        default=(), description="Registers added to the profile's (same name replaces)."
    )
    commands: tuple[CommandSpec, ...] = Field(
        default=(),
        description="Commands added to the profile's (same name replaces): a fixed value written"
        " to a holding register, e.g. {name: start, channel: running, value: 1}.",
    )
    address_base: Literal[0, 1] | None = Field(
        default=None, description="1 when register numbers start at 1; overrides the profile."
    )
    word_order: Literal["big", "little"] | None = Field(
        default=None, description="Word order of 32/64-bit values; overrides the profile."
    )
    byte_order: Literal["big", "little"] | None = Field(
        default=None, description="Byte order within a word; overrides the profile."
    )
    max_gap: int = Field(
        default=0, ge=0, le=32, description="Unused registers a single read may span."
    )
    identity: IdentitySpec = Field(
        default=None,
        description="Read the device's identity when connecting: 'device_identification'"
        " (function 43 / MEI 14), or a mapping with the private objects of its serial number"
        " and hardware revision; overrides the profile's. None: the profile's, if any.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModbusOptions:
        if self.transport == "rtu" and not self.serial_port:
            raise ValueError("transport 'rtu' needs serial_port")
        if self.profile is not None:
            load_profile(self.profile)
        elif not self.registers:
            raise ValueError("give a profile or at least one register")
        names = [r.name for r in self.registers]
        if len(names) != len(set(names)):
            raise ValueError("register names must be unique")
        commands = [c.name for c in self.commands]
        if len(commands) != len(set(commands)):
            raise ValueError("command names must be unique")
        return self
