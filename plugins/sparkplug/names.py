"""Sparkplug ids: the namespace, and the group, edge node and device ids the topics are made of
(no ``+``, ``#`` or ``/`` in them). Pure and light: the sink's options check ids with it when a
configuration loads, without the protobuf runtime."""

from __future__ import annotations

__all__ = ["NAMESPACE", "check_id", "device_of", "sanitize"]

NAMESPACE = "spBv1.0"

_FORBIDDEN = str.maketrans({"+": "_", "#": "_", "/": "_"})


def sanitize(name: str) -> str:
    """``name`` as a Sparkplug id element: ``+``, ``#`` and ``/`` replaced by ``_``."""
    return name.translate(_FORBIDDEN)


def check_id(value: str, what: str) -> str:
    """``value`` if it is a valid group, edge node or host id; ``ValueError`` otherwise."""
    if not value:
        raise ValueError(f"{what} cannot be empty")
    bad = sorted({c for c in value if c in "+#/"})
    if bad:
        raise ValueError(f"{what} {value!r} holds {' '.join(bad)}: Sparkplug ids may not")
    if "\0" in value:
        raise ValueError(f"{what} {value!r} holds a NUL character")
    return value


def device_of(signal_id: str) -> tuple[str, str]:
    """(device id, metric name) of a signal id ``<area>/<instrument>/<signal...>``."""
    parts = signal_id.split("/")
    if len(parts) >= 3:
        return sanitize(parts[1]), "/".join(parts[2:])
    if len(parts) == 2:
        return sanitize(parts[0]), parts[1]
    return "gateway", signal_id
