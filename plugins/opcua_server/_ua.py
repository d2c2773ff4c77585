"""Typed shortcuts for asyncua's ``ua`` types.

asyncua types its fields with ``int``/``str``/``datetime`` subclasses (``ua.Int32``,
``ua.String``, ``ua.DateTime``) that plain values do not satisfy under strict type checking;
these helpers build node ids and status codes once, at start-up, from plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Final, cast

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

__all__ = [
    "AttributeIds",
    "ObjectIds",
    "StatusCodes",
    "from_timestamp",
    "numeric_node",
    "status",
    "string_node",
]


def numeric_node(identifier: int, namespace: int = 0) -> ua.NodeId:
    """``ns=<namespace>;i=<identifier>``."""
    return ua.NodeId(ua.Int32(identifier), ua.Int16(namespace))


def string_node(identifier: str, namespace: int) -> ua.NodeId:
    """``ns=<namespace>;s=<identifier>``."""
    return ua.NodeId(ua.String(identifier), ua.Int16(namespace))


def status(code: int) -> ua.StatusCode:
    """The StatusCode of a ``StatusCodes`` constant."""
    return ua.StatusCode(ua.UInt32(code))


from_timestamp: Final = cast("Callable[[float, tzinfo], ua.DateTime]", datetime.fromtimestamp)
"""``datetime.fromtimestamp``, typed as returning asyncua's DateTime (a plain ``datetime`` is
what asyncua encodes; building its subclass per sample would only cost time)."""
