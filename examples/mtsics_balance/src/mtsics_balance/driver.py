"""The driver: reads a Mettler-Toledo balance over MT-SICS on TCP (a balance's Ethernet option,
or a serial device server in front of its RS-232 port).

MT-SICS is line based: a command in upper case ending in CR LF, one answer line. Used here:
``SI`` (the weight now, stable or not: ``S S      12.345 g`` stable, ``S D ...`` dynamic), ``T``
(tare: ``T S ... g``), ``TI`` (tare immediately, stable or not: ``TI S ... g`` / ``TI D ... g``),
``Z`` (zero: ``Z A``), ``ZI`` (zero immediately: ``ZI S`` / ``ZI D``), and at each connect
``I2`` (model and capacity: ``I2 A "XS205DU 220.00000 g"``), ``I3`` (software version) and
``I4`` (serial number) for the device's identity. ``S I`` means busy,
``S +`` / ``S -`` overload / underload, ``ES`` / ``ET`` / ``EL`` a syntax, transmission or
logical error.

The four actions are the driver's commands (:class:`gateway.CommandDriver`): the gateway runs
them through its controlled write path, for the users the configuration's ``commands:`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway import (
    Channel,
    DeviceCommand,
    DeviceIdentity,
    InstrumentError,
    InstrumentIO,
    PluginContext,
    PollingDriver,
    Quality,
    WriteRefusedError,
)

__all__ = ["BalanceOptions", "MtSicsBalance", "Reading", "parse_info", "parse_weight"]

_TO_GRAM = {"g": 1.0, "kg": 1000.0, "mg": 0.001}
_ERRORS = {"ES": "syntax error", "ET": "transmission error", "EL": "logical error"}
_STATUS = {"I": "busy (command not executable now)", "+": "overload", "-": "underload"}


class BalanceOptions(BaseModel):
    """The instrument's ``options:``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="The balance's address.")
    port: int = Field(default=4305, ge=1, le=65535, description="Its MT-SICS TCP port.")
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="Answer timeout, seconds.")


@dataclass(frozen=True, slots=True)
class Reading:
    """One weight answer: grams (``None`` without a value), stable or not, and why not good."""

    grams: float | None
    stable: bool | None
    problem: str | None = None


def parse_weight(line: str, command: str) -> Reading:
    """The answer ``line`` to a weight or tare ``command`` (``S``, ``SI``, ``T``).

    Raises ``ValueError`` for a line that is no MT-SICS answer to it."""
    parts = line.split()
    if len(parts) == 1 and parts[0] in _ERRORS:
        return Reading(None, None, f"balance answered {parts[0]} ({_ERRORS[parts[0]]})")
    head = "S" if command in ("S", "SI") else command  # SI answers "S ...", T answers "T ..."
    if len(parts) == 2 and parts[0] == head and parts[1] in _STATUS:
        return Reading(None, None, _STATUS[parts[1]])
    if len(parts) != 4 or parts[0] != head or parts[1] not in ("S", "D"):
        raise ValueError(f"not an answer to {command}: {line!r}")
    stable = parts[1] == "S"
    try:
        value = float(parts[2])
    except ValueError:
        raise ValueError(f"not a weight in {line!r}") from None
    factor = _TO_GRAM.get(parts[3])
    if factor is None:
        return Reading(None, stable, f"unit {parts[3]!r} not supported (g, kg, mg)")
    return Reading(value * factor, stable)


def parse_info(line: str, command: str) -> str | None:
    """The text of an ``I2``/``I3``/``I4`` answer (``I4 A "B123456789"``); ``None`` when the
    balance does not know the command (``ES``, ``EL``) or is busy (``I4 I``)."""
    head, _, rest = line.partition(" ")
    if head != command or not rest.startswith('A "') or not rest.endswith('"'):
        return None
    return rest[3:-1].strip() or None


_COMMANDS = (
    DeviceCommand("tare", "Tare with the next stable weight (T)", changes_process=False),
    DeviceCommand("tare_immediately", "Tare with the weight now, stable or not (TI)", (), False),
    DeviceCommand("zero", "Zero with the next stable weight (Z)", changes_process=False),
    DeviceCommand("zero_immediately", "Zero with the weight now, stable or not (ZI)", (), False),
)


class MtSicsBalance(PollingDriver):
    """Polls the net weight with ``SI``; :meth:`tare` and :meth:`zero` act on the balance, and
    the gateway runs them (and their immediate forms) as commands."""

    def __init__(self, options: BalanceOptions, context: PluginContext) -> None:
        super().__init__(context)
        self.options = options
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()  # one command at a time: a poll and a tare share the line

    def channels(self) -> Sequence[Channel]:
        return [
            Channel("weight", "g", description="Net weight"),
            Channel("stable", "1", description="1 when the balance reports a stable weight"),
        ]

    async def connect(self) -> None:
        where = f"{self.options.host}:{self.options.port}"
        try:
            async with asyncio.timeout(self.options.timeout_s):
                self._reader, self._writer = await asyncio.open_connection(
                    self.options.host, self.options.port
                )
        except (OSError, TimeoutError) as exc:
            raise InstrumentError(f"cannot connect to balance at {where}: {exc!r}") from exc
        # Which balance answers (plugin API 1.1): PollingDriver.run reports it to the gateway,
        # which stores it, audits a changed serial number and shows it. What the balance does
        # not tell stays None: not knowing is no reason to fail.
        model = parse_info(await self._ask("I2"), "I2")
        self.device_identity = DeviceIdentity(
            manufacturer="Mettler-Toledo",
            model=model.split()[0] if model else None,
            serial_number=parse_info(await self._ask("I4"), "I4"),
            firmware_revision=parse_info(await self._ask("I3"), "I3"),
        )

    async def poll(self, io: InstrumentIO) -> None:
        line = await self._ask("SI")
        try:
            reading = parse_weight(line, "SI")
        except ValueError as exc:
            raise InstrumentError(str(exc)) from exc
        weight, stable = io.output("weight"), io.output("stable")
        if reading.grams is None:
            weight.publish(None, quality=Quality.BAD, reason=reading.problem)
        elif reading.stable:
            weight.publish(reading.grams)
        else:
            weight.publish(reading.grams, quality=Quality.UNCERTAIN, reason="dynamic (not stable)")
        if reading.stable is None:
            stable.publish(None, quality=Quality.BAD, reason=reading.problem)
        else:
            stable.publish(int(reading.stable))

    async def tare(self) -> float:
        """Tare the balance; return the tare weight in grams. ``WriteRefusedError`` when the
        balance refuses (not stable, overload...)."""
        line = await self._ask("T")
        try:
            reading = parse_weight(line, "T")
        except ValueError as exc:
            raise InstrumentError(str(exc)) from exc
        if reading.grams is None:
            raise WriteRefusedError(f"tare refused: {reading.problem}")
        return reading.grams

    async def tare_immediately(self) -> Reading:
        """Tare with the weight now, stable or not (``TI``): the tare in grams and whether it
        was stable. ``WriteRefusedError`` when the balance refuses."""
        line = await self._ask("TI")
        try:
            reading = parse_weight(line, "TI")
        except ValueError as exc:
            raise InstrumentError(str(exc)) from exc
        if reading.grams is None:
            raise WriteRefusedError(f"tare refused: {reading.problem}")
        return reading

    async def zero(self) -> None:
        """Zero the balance. ``WriteRefusedError`` when the balance refuses."""
        self._zeroed("Z", await self._ask("Z"), ("A",))

    async def zero_immediately(self) -> bool:
        """Zero with the weight now (``ZI``); whether it was stable. ``WriteRefusedError``
        when the balance refuses."""
        return self._zeroed("ZI", await self._ask("ZI"), ("S", "D")) == "S"

    def commands(self) -> Sequence[DeviceCommand]:
        return _COMMANDS

    async def command(self, name: str, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        if name == "tare":
            return {"tare": await self.tare(), "unit": "g"}
        if name == "tare_immediately":
            reading = await self.tare_immediately()
            return {"tare": reading.grams, "unit": "g", "stable": reading.stable}
        if name == "zero":
            await self.zero()
            return {}
        if name == "zero_immediately":
            return {"stable": await self.zero_immediately()}
        raise WriteRefusedError(f"the balance has no command {name!r}")

    @staticmethod
    def _zeroed(command: str, line: str, done: tuple[str, ...]) -> str:
        """The status of a zero answer that says done; ``WriteRefusedError`` for a refusal."""
        parts = line.split()
        if len(parts) == 2 and parts[0] == command and parts[1] in done:
            return parts[1]
        if len(parts) == 2 and parts[0] == command and parts[1] in _STATUS:
            raise WriteRefusedError(f"zero refused: {_STATUS[parts[1]]}")
        if len(parts) == 1 and parts[0] in _ERRORS:
            raise WriteRefusedError(f"zero refused: balance answered {parts[0]}")
        raise InstrumentError(f"not an answer to {command}: {line!r}")

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):  # already broken: nothing left to close
                await writer.wait_closed()

    async def _ask(self, command: str) -> str:
        """Send ``command``, return its answer line without CR LF."""
        async with self._lock:
            if self._reader is None or self._writer is None:
                raise InstrumentError("balance not connected")
            try:
                async with asyncio.timeout(self.options.timeout_s):
                    self._writer.write(command.encode("ascii") + b"\r\n")
                    await self._writer.drain()
                    raw = await self._reader.readuntil(b"\n")
            except TimeoutError as exc:
                raise InstrumentError(
                    f"no answer to {command} within {self.options.timeout_s} s"
                ) from exc
            except asyncio.IncompleteReadError as exc:
                raise InstrumentError(f"balance closed the connection during {command}") from exc
            except (OSError, asyncio.LimitOverrunError) as exc:
                raise InstrumentError(f"{command} failed: {exc!r}") from exc
            return raw.decode("ascii", "replace").rstrip("\r\n")
