"""The gateway's exceptions: one small tree, so callers catch what they mean.

::

    GatewayError
     ├── ConfigError          bad configuration; carries one line per problem, each naming its path
     ├── UnitError            a UCUM code that does not parse, or two units that do not convert
     ├── PluginError          a plugin that fails to load or registers something twice
     ├── InstrumentError      an instrument cannot be reached or answered badly (drivers raise it;
     │                        the runtime marks the instrument's signals bad and reconnects)
     ├── WriteRefusedError    a write (setpoint) outside the configured allow-list, or unencodable
     └── StoreError           the durable store cannot be opened or written
          └── StoreFullError  the disk (or the store's page limit) is full

Library exceptions (pymodbus, pyserial, sqlite3, yaml, pydantic) are translated into these where
they enter, with ``raise ... from exc`` so the original stays visible in tracebacks.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "GatewayError",
    "InstrumentError",
    "PluginError",
    "StoreError",
    "StoreFullError",
    "UnitError",
    "WriteRefusedError",
]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid. ``problems`` holds ``"path: message"`` lines."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


class UnitError(GatewayError):
    """A unit code is not valid UCUM, or a conversion between two units is impossible."""


class PluginError(GatewayError):
    """A plugin could not be loaded, or registered a name that is already taken."""


class InstrumentError(GatewayError):
    """An instrument is unreachable or its answer is unusable.

    Drivers raise this (translating their transport library's exceptions); the runtime then
    reports the instrument's signals as ``bad`` with ``str(error)`` as the reason and reconnects
    with jittered exponential backoff.
    """


class WriteRefusedError(GatewayError):
    """A write to an instrument was refused before anything was sent (not allow-listed, or the
    value does not fit the target). Refusals are logged like the writes themselves."""


class StoreError(GatewayError):
    """The durable store cannot be opened, read or written."""


class StoreFullError(StoreError):
    """The store's disk is full (SQLITE_FULL); the configured overflow policy applies."""
