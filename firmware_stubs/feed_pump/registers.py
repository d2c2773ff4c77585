"""The feed pump's Modbus register map, encoded the way the device firmware does it.

This is the emulator's *own* codec, deliberately independent of the gateway's
decoding code (stdlib ``struct`` only, in :mod:`firmware_stubs.modbus_device`), so gateway
tests against the emulator check the gateway's decoding rather than compare a codec with itself.

Holding registers, 0-based PDU addresses, byte order big-endian within a word
and most-significant word first ("ABCD"). Input registers (FC 4) mirror the
same data read-only.
"""

from __future__ import annotations

from dataclasses import replace

from ..modbus_device import (
    ExceptionCode,
    Field,
    RegisterAccessError,
    covered_fields,
    decode_field,
    encode_fields,
    field_rows,
)
from .model import PumpModel, PumpStateError

__all__ = [
    "DEVICE_ID",
    "FIELDS",
    "FIELDS_BY_NAME",
    "REGISTER_COUNT",
    "REGISTER_MAP_DOC",
    "ExceptionCode",
    "RegisterAccessError",
    "apply_write",
    "decode_field",
    "encode_registers",
    "read_registers",
]

#: Model code served at address 14: ASCII "PF" (peristaltic feed pump).
DEVICE_ID = 0x5046

#: Number of 16-bit registers in the map (addresses 0..REGISTER_COUNT-1).
REGISTER_COUNT = 20

FIELDS: tuple[Field, ...] = (
    Field(
        "speed_setpoint",
        0,
        "float32",
        "rpm ({rev}/min)",
        True,
        "Speed setpoint, 0..400; clamped to the drive's limit.",
    ),
    Field("actual_speed", 2, "float32", "rpm ({rev}/min)", False, "Measured roller head speed."),
    Field("flow", 4, "float32", "mL/min", False, "actual_speed x tubing_ml_per_rev."),
    Field("total_volume", 6, "float64", "mL", False, "Volume dispensed since power-up."),
    Field("running", 10, "uint16", "-", True, "Run state; write 1 = start, 0 = stop."),
    Field("fault_code", 11, "uint16", "-", True, "0 = ok, 1 = tube/occlusion; write 0 = ack."),
    Field("tubing_ml_per_rev", 12, "float32", "mL", True, "Tubing calibration, (0, 100]."),
    Field("device_id", 14, "uint16", "-", False, "Model code 0x5046 ('PF')."),
    Field(
        "heartbeat",
        15,
        "uint16",
        "-",
        True,
        "Watchdog heartbeat: any write is a beat (clears watchdog_tripped); reads the last.",
    ),
    Field(
        "watchdog_s",
        16,
        "uint16",
        "s",
        True,
        "Communication watchdog timeout, 0 = off; a write restarts the timer.",
    ),
    Field(
        "safe_speed",
        17,
        "float32",
        "rpm ({rev}/min)",
        True,
        "Speed the setpoint is limited to when the watchdog trips, 0..400.",
    ),
    Field(
        "watchdog_tripped",
        19,
        "uint16",
        "-",
        False,
        "1 = no beat within watchdog_s: setpoint limited to safe_speed (it stays so until"
        " written again, even after a beat clears this flag).",
    ),
)

FIELDS_BY_NAME: dict[str, Field] = {field.name: field for field in FIELDS}


def _field_values(model: PumpModel) -> tuple[float | int, ...]:
    return (
        model.setpoint_rpm,
        model.actual_rpm,
        model.flow_ml_per_min,
        model.total_ml,
        1 if model.running else 0,
        model.fault_code & 0xFFFF,
        model.ml_per_rev,
        DEVICE_ID,
        model.heartbeat & 0xFFFF,
        model.watchdog_s & 0xFFFF,
        model.safe_rpm,
        1 if model.watchdog_tripped else 0,
    )


def encode_registers(model: PumpModel) -> list[int]:
    """Return the full register image (REGISTER_COUNT words) for the model's current state."""
    return encode_fields(FIELDS, _field_values(model))


def read_registers(model: PumpModel, address: int, count: int) -> list[int]:
    """Return ``count`` words from ``address``; out-of-map ranges raise ILLEGAL_DATA_ADDRESS."""
    if count < 1 or address < 0 or address + count > REGISTER_COUNT:
        raise RegisterAccessError(
            ExceptionCode.ILLEGAL_DATA_ADDRESS,
            f"read {address}+{count} outside 0..{REGISTER_COUNT - 1}",
        )
    return encode_registers(model)[address : address + count]


def _apply_fields(model: PumpModel, fields: list[tuple[Field, float | int]]) -> None:
    values = {field.name: value for field, value in fields}
    # Acknowledge before start so "ack + start" in one FC 16 write works.
    if "fault_code" in values:
        if values["fault_code"] != 0:
            raise PumpStateError("fault_code only accepts 0 (acknowledge)")
        model.acknowledge_fault()
    if "tubing_ml_per_rev" in values:
        model.set_ml_per_rev(float(values["tubing_ml_per_rev"]))
    # Watchdog settings and the beat before the setpoint, so that a write of them together
    # leaves the setpoint as written.
    if "safe_speed" in values:
        model.set_safe_rpm(float(values["safe_speed"]))
    if "watchdog_s" in values:
        model.set_watchdog(int(values["watchdog_s"]))
    if "heartbeat" in values:
        model.beat(int(values["heartbeat"]))
    if "speed_setpoint" in values:
        model.set_setpoint(float(values["speed_setpoint"]))
    if "running" in values:
        if values["running"] == 1:
            model.start()
        elif values["running"] == 0:
            model.stop()
        else:
            raise PumpStateError("running only accepts 0 or 1")


def apply_write(model: PumpModel, address: int, words: list[int]) -> None:
    """Apply a register write (FC 6 / FC 16 payload) to the model, atomically.

    Raises :class:`RegisterAccessError` with ILLEGAL_DATA_ADDRESS for writes
    outside the map, to read-only fields or to part of a multi-word field, and
    ILLEGAL_DATA_VALUE for values the pump refuses (setpoint or safe speed outside
    0..400 or NaN, running not 0/1, fault_code not 0, start while a fault is latched).
    Nothing is changed when an error is raised.
    """
    fields = covered_fields(FIELDS, address, words)
    try:
        # Dry run on a copy first so a bad value late in a multi-field write
        # cannot leave the earlier fields applied.
        _apply_fields(replace(model), fields)
    except PumpStateError as exc:
        raise RegisterAccessError(ExceptionCode.ILLEGAL_DATA_VALUE, str(exc)) from exc
    _apply_fields(model, fields)


def _register_map_doc() -> str:
    header = (
        "Holding registers (FC 3; FC 4 serves the same data read-only), 0-based PDU\n"
        'addresses, big-endian words, most-significant word first ("ABCD").\n'
        "Writes (FC 6, FC 16) must cover whole fields.\n\n"
        "| addr | count | name | type | unit | access | notes |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    rows = field_rows(FIELDS)
    footer = (
        "\nExceptions: 1 = unsupported function code, "
        f"2 = address outside 0..{REGISTER_COUNT - 1}, "
        "read-only field or partial field write, 3 = value refused, "
        "4 = device failure (injected fault), 11 = unknown unit id.\n"
    )
    return "## Feed pump register map\n\n" + header + rows + footer


#: Markdown description of the register map, generated from :data:`FIELDS`.
REGISTER_MAP_DOC: str = _register_map_doc()
