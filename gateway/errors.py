"""The gateway's exceptions: one small tree, so callers catch what they mean.

::

    GatewayError
     ├── ConfigError          bad configuration; carries one line per problem, each naming its path
     ├── UnitError            a UCUM code that does not parse, or two units that do not convert
     ├── PluginError          a plugin that breaks the contract (the plugin manager refuses it)
     ├── MissingDependencyError  a plugin needs a module that is not installed (an extra, e.g.
     │                        ``pat-gateway[opcua]``): its factory, or the loader, raises it
     ├── InstrumentError      an instrument cannot be reached or answered badly (drivers raise it;
     │                        the runtime marks the instrument's signals bad and reconnects)
     ├── WriteRefusedError    a write (setpoint) refused, nothing changed: not writable, a value the
 │                        target cannot hold, or refused by the device (its exception named)
     ├── SamplesRefusedError  a forwarding sink's destination took a batch but refused some of its
     │                        samples for good (an MQTT topic its ACL denies); carries Refusals
     └── StoreError           the durable store cannot be opened or written
          └── StoreFullError  the disk (or the store's page limit) is full

Library exceptions (pymodbus, pyserial, sqlite3, yaml, pydantic) are translated into these where
they enter, with ``raise ... from exc`` so the original stays visible in tracebacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "GatewayError",
    "InstrumentError",
    "MissingDependencyError",
    "PluginError",
    "Refusal",
    "SamplesRefusedError",
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
    """A plugin broke the contract: it could not be loaded, or registered something malformed or
    twice. The plugin manager refuses that plugin (``Registry.refused``) and loads the others."""


class MissingDependencyError(GatewayError):
    """A plugin needs modules that are not installed, e.g. the ``opcua`` driver without asyncua.

    A factory may raise it (when what it needs depends on its options: Modbus RTU needs pyserial,
    Modbus TCP does not); the loader raises it for the modules a registration declares
    (``requires=``). ``extra`` is the optional-dependency group of the plugin's distribution that
    installs them (``opcua`` for ``pip install 'pat-gateway[opcua]'``), ``None`` if there is none.
    The loader turns it into a configuration problem naming the plugin, the modules and the extra.
    """

    def __init__(self, modules: Sequence[str], extra: str | None = None) -> None:
        self.modules: tuple[str, ...] = tuple(modules)
        self.extra = extra
        super().__init__(f"{', '.join(self.modules)} not installed")


class InstrumentError(GatewayError):
    """An instrument is unreachable or its answer is unusable.

    Drivers raise this (translating their transport library's exceptions); the runtime then
    reports the instrument's signals as ``bad`` with ``str(error)`` as the reason and reconnects
    with jittered exponential backoff.
    """


class WriteRefusedError(GatewayError):
    """A write to an instrument was refused and changed nothing: the target is not writable,
    the value does not fit it, or the device itself refused the request (the message names the
    device's exception or status). Refusals are logged like the writes themselves."""


class StoreError(GatewayError):
    """The durable store cannot be opened, read or written."""


class StoreFullError(StoreError):
    """The store's disk is full (SQLITE_FULL); the configured overflow policy applies."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Samples of one ``forward`` call that the destination refused for good.

    ``indices`` are their positions in the samples handed to ``forward``; ``target`` names what
    the destination refused, in its own terms (an MQTT topic); ``reason`` is its reason, as
    precise as it gives one (for MQTT, the PUBACK's reason code). Neither holds numbers that
    change from call to call: the runtime logs once per target and merges loss records with
    the same reason.
    """

    indices: tuple[int, ...]
    target: str
    reason: str


class SamplesRefusedError(GatewayError):
    """Raised by a forwarding sink's ``forward`` when the destination acknowledged the batch
    except the samples in ``refusals``, which it refused on purpose (not a lost connection or a
    timeout: sending them again at once would be refused again).

    The runtime counts every other sample as delivered, gives the refused ones up for that sink
    (recorded as losses with the reason), and quarantines their signals: their next samples are
    given up too, except a probe on a backoff, until the destination takes one again.

    ``failure`` is None when every other sample was acknowledged. Otherwise the forward failed
    after the refusals came (a broker may drop the connection after refusing a message): the
    refused samples are given up all the same, and the others are sent again after a backoff,
    as after any failure, with ``failure`` as the reason.
    """

    def __init__(self, refusals: Sequence[Refusal], failure: str | None = None) -> None:
        self.refusals: tuple[Refusal, ...] = tuple(refusals)
        self.failure = failure
        shown = "; ".join(f"{r.target}: {r.reason}" for r in self.refusals[:3])
        more = f" (and {len(self.refusals) - 3} more)" if len(self.refusals) > 3 else ""
        then = f"; then {failure}" if failure else ""
        super().__init__(f"refused by the destination: {shown}{more}{then}")
