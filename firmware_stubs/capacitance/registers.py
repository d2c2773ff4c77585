"""The capacitance probe's Modbus register map, encoded the way the probe's firmware does it.

The emulator's *own* codec (:mod:`firmware_stubs.modbus_device`, stdlib ``struct``), independent
of the gateway's driver. 0-based PDU addresses, big-endian bytes, most-significant word first
("ABCD", as the feed pump). Two tables, as on a real transmitter:

* input registers 0-10 (FC 4 only): the latest measurement, refreshed every measuring interval;
* holding registers 100-109 (FC 3, FC 6, FC 16): the configuration; the cell factor and the
  zero command (write 1) are writable.

A read of one table's addresses with the other table's function code is refused (exception 2),
so a register map that names the wrong table fails loudly instead of reading something else.
"""

from __future__ import annotations

from ..modbus_device import (
    ExceptionCode,
    Field,
    RegisterAccessError,
    covered_fields,
    encode_fields,
    field_rows,
)
from .model import STATUS_ERROR, STATUS_RANGE, STATUS_UNSTABLE, ProbeModel, Reading

__all__ = [
    "DEVICE_ID",
    "HOLDING_FIELDS",
    "INPUT_FIELDS",
    "REGISTER_MAP_DOC",
    "apply_write",
    "check_access",
    "encode_holding",
    "encode_input",
]

#: Model code served at holding register 106: ASCII "CP" (capacitance probe).
DEVICE_ID = 0x4350

INPUT_FIELDS: tuple[Field, ...] = (
    Field(
        "permittivity",
        0,
        "float32",
        "pF/cm",
        False,
        "Dual-frequency permittivity of the viable cells (measuring minus background frequency).",
    ),
    Field("conductivity", 2, "float32", "mS/cm", False, "Conductivity at the culture temperature."),
    Field(
        "viable_cell_density",
        4,
        "float32",
        "10*6/mL",
        False,
        "The probe's VCD: permittivity x cell factor (not a cell count).",
    ),
    Field("temperature", 6, "float32", "Cel", False, "The probe's temperature sensor."),
    Field(
        "measurement_count",
        8,
        "uint32",
        "1",
        False,
        "Measurements since power-up; a new value means a new measurement.",
    ),
    Field(
        "status",
        10,
        "uint16",
        "1",
        False,
        f"Bits: 0x{STATUS_UNSTABLE:02x} unstable (conductivity jump: bubbles),"
        f" 0x{STATUS_RANGE:02x} outside the measuring range,"
        f" 0x{STATUS_ERROR:02x} probe failure (readings 0).",
    ),
)

HOLDING_FIELDS: tuple[Field, ...] = (
    Field(
        "cell_factor",
        100,
        "float32",
        "10*6.cm/(mL.pF)",
        True,
        "1e6 cells/mL per pF/cm, (0, 100]; from the next measurement on.",
    ),
    Field("frequency", 102, "float32", "kHz", False, "Measuring frequency."),
    Field("background_frequency", 104, "float32", "kHz", False, "Background frequency."),
    Field("device_id", 106, "uint16", "1", False, "Model code 0x4350 ('CP')."),
    Field(
        "zero",
        107,
        "uint16",
        "1",
        True,
        "Write 1: the latest permittivity becomes the zero (from the next measurement on);"
        " reads 0.",
    ),
    Field("zero_offset", 108, "float32", "pF/cm", False, "Permittivity the zero subtracts."),
)

_INPUT = (INPUT_FIELDS[0].address, INPUT_FIELDS[-1].end)
_HOLDING = (HOLDING_FIELDS[0].address, HOLDING_FIELDS[-1].end)


def encode_input(reading: Reading) -> list[int]:
    """The input registers (addresses 0..10) holding ``reading``."""
    return encode_fields(
        INPUT_FIELDS,
        (
            reading.permittivity_pF_per_cm,
            reading.conductivity_mS_per_cm,
            reading.vcd_e6_per_mL,
            reading.temperature_C,
            reading.count & 0xFFFFFFFF,
            reading.status & 0xFFFF,
        ),
    )


def encode_holding(model: ProbeModel) -> list[int]:
    """The holding registers (addresses 100..109) of the probe's configuration."""
    p = model.params
    return encode_fields(
        HOLDING_FIELDS,
        (model.cell_factor, p.frequency_khz, p.background_khz, DEVICE_ID, 0, model.zero_offset),
    )


def check_access(function_code: int, address: int, count: int) -> None:
    """Refuse (ILLEGAL_DATA_ADDRESS) a request outside its function code's table."""
    table, (start, end) = ("input", _INPUT) if function_code == 4 else ("holding", _HOLDING)
    if count < 1 or address < start or address + count > end:
        raise RegisterAccessError(
            ExceptionCode.ILLEGAL_DATA_ADDRESS,
            f"{address}+{count} outside the {table} registers {start}..{end - 1}",
        )


def apply_write(model: ProbeModel, address: int, words: list[int]) -> None:
    """Apply a register write (FC 6 / FC 16 payload) to the probe's configuration.

    ILLEGAL_DATA_ADDRESS for writes outside the holding registers, to read-only fields or to
    half of a float; ILLEGAL_DATA_VALUE for a cell factor outside (0, 100] or NaN, or a zero
    other than 1; SLAVE_DEVICE_FAILURE for a zero the probe cannot take (a latched failure).
    Nothing is changed when an error is raised.
    """
    for field, value in covered_fields(HOLDING_FIELDS, address, words):
        if field.name == "cell_factor":
            try:
                model.set_cell_factor(float(value))
            except ValueError as exc:
                raise RegisterAccessError(ExceptionCode.ILLEGAL_DATA_VALUE, str(exc)) from exc
        elif field.name == "zero":
            if value != 1:
                raise RegisterAccessError(
                    ExceptionCode.ILLEGAL_DATA_VALUE, "write 1 to zero the permittivity"
                )
            try:
                model.zero()
            except ValueError as exc:
                raise RegisterAccessError(ExceptionCode.SLAVE_DEVICE_FAILURE, str(exc)) from exc


def _register_map_doc() -> str:
    header = (
        "0-based PDU addresses, big-endian words, most-significant word first"
        ' ("ABCD").\n\n'
        "| addr | count | name | type | unit | access | notes |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    return (
        "## Capacitance probe register map\n\n"
        "Input registers (FC 4), the latest measurement. "
        + header
        + field_rows(INPUT_FIELDS)
        + "\nHolding registers (FC 3; FC 6 and FC 16 write whole fields). "
        + header
        + field_rows(HOLDING_FIELDS)
        + "\nExceptions: 1 = unsupported function code, 2 = address outside the function"
        " code's table, read-only field or partial write, 3 = value refused, 4 = device failure"
        " (injected fault), 11 = unknown unit id.\n"
    )


#: Markdown description of the register map, generated from the field tables.
REGISTER_MAP_DOC: str = _register_map_doc()
