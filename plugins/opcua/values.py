"""OPC UA data values to gateway readings and back, pure (no I/O).

A ``DataValue`` carries a value, a ``StatusCode`` whose two top bits are its severity (Good,
Uncertain, Bad; OPC UA Part 4 §7.39), and a source and a server timestamp. The gateway keeps the
source timestamp as received (the server's timestamp stands in when a server sends none), the
quality from the severity, and the status code's name as the reason for anything not Good.
A ``Float`` (float32) value is taken as the decimal the server meant (``1.6``, not
``1.600000023841858``: :func:`gateway.float32_decimal`).
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import ua

from gateway import Quality, float32_decimal

__all__ = [
    "coerce_for_write",
    "plain_value",
    "reading",
    "status_name",
    "timestamp_ns",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OPC_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)  # DateTime 0: "no timestamp" on the wire
_MICROSECOND = timedelta(microseconds=1)
_SEVERITY = (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.BAD)  # 0b11 is Bad too
_SEVERITY_WORD = ("Good", "Uncertain", "Bad", "Bad")
_CODE_BITS = 0xFFFF0000  # the low 16 bits are info bits (overflow, limits), not the code

_INTEGER_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
_FLOAT_MAX = 3.4028234663852886e38


def reading(dv: ua.DataValue) -> tuple[Any, int | None, Quality, str | None]:
    """``(value, source_ts, quality, reason)`` of one data value, ready to publish."""
    variant = dv.Value
    value = plain_value(variant.Value) if variant is not None else None
    if variant is not None and variant.VariantType is ua.VariantType.Float:
        value = _float32_decimals(value)
    status = dv.StatusCode
    code = status.value if status is not None else 0
    source_ts = None
    for when in (dv.SourceTimestamp, dv.ServerTimestamp):
        # The server's timestamp stands in only when the source sent none (or the null one).
        if when is not None and (source_ts := timestamp_ns(when)) is not None:
            break
    severity = code >> 30
    if severity == 0:
        if value is None:
            return None, source_ts, Quality.BAD, "Good status without a value"
        return value, source_ts, Quality.GOOD, None
    return value, source_ts, _SEVERITY[severity], status_name(code)


def _float32_decimals(value: Any) -> Any:
    if type(value) is float:
        return float32_decimal(value)
    if type(value) is list:  # an array of Float
        return [_float32_decimals(v) for v in value]
    return value


def status_name(code: int) -> str:
    """The symbolic name of a status code (``BadSensorFailure``), info bits ignored; a code the
    specification does not define is named by its severity and hex value."""
    name, doc = ua.status_codes.get_name_and_doc(code & _CODE_BITS)
    if doc.startswith("Unknown StatusCode"):
        return f"{_SEVERITY_WORD[code >> 30]} (0x{code & _CODE_BITS:08X})"
    return str(name)


def timestamp_ns(when: datetime) -> int | None:
    """UTC nanoseconds since 1970 of an OPC UA timestamp; ``None`` for the null DateTime.

    The library decodes timestamps as aware UTC datetimes; a naive one is taken as UTC. Integer
    arithmetic throughout, so no float rounding changes a timestamp.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= _OPC_EPOCH:
        return None
    return ((when - _EPOCH) // _MICROSECOND) * 1000


def plain_value(value: Any) -> Any:
    """A value the gateway can store: numbers, booleans and strings as they are, arrays as lists,
    text-like OPC UA types as text. Anything else is passed on for the gateway to judge."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, list | tuple):
        return [plain_value(v) for v in value]
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.QualifiedName | ua.NodeId):
        return value.to_string()
    if isinstance(value, ua.StatusCode):
        return status_name(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def coerce_for_write(value: float, variant_type: ua.VariantType) -> bool | int | float:
    """``value`` as the node's data type expects it; ``ValueError`` saying why it does not fit."""
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    if variant_type is ua.VariantType.Boolean:
        if value not in (0, 1):
            raise ValueError(f"{value!r} does not fit a Boolean node (0 or 1)")
        return bool(value)
    if variant_type is ua.VariantType.Double:
        return float(value)
    if variant_type is ua.VariantType.Float:
        if abs(value) > _FLOAT_MAX:
            raise ValueError(f"{value!r} is out of range for a Float node")
        return float(value)
    limits = _INTEGER_RANGES.get(variant_type)
    if limits is None:
        raise ValueError(f"the node's data type {variant_type.name} is not numeric")
    if value != int(value):
        raise ValueError(f"{value!r} is not a whole number ({variant_type.name} node)")
    low, high = limits
    if not low <= int(value) <= high:
        raise ValueError(f"{value!r} is out of range for a {variant_type.name} node")
    return int(value)
