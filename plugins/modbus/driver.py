"""The Modbus driver: polls register blocks over pymodbus and publishes decoded values.

Reconnection belongs to the gateway runtime (one owner, jittered backoff), so pymodbus's own
reconnect is switched off and its exceptions become ``InstrumentError``, named as precisely as
the connection lets us see (:mod:`.wire`): silence, replies for another unit or transaction,
bytes that are no frame, a malformed frame, a reset or close by the peer. A reply that is
well-formed but not what was asked (an exception code, another function, more or fewer
registers than requested, a byte count that disagrees with its data) leaves the connection up
and publishes the affected channels as ``bad`` with what was wrong as reason.

Commands (:class:`~gateway.CommandDriver`: a pump's start, stop) are a fixed value written to a
holding register, declared in the profile or the options (``commands:``); like writes, they
share the connection with the polls.

Writes (setpoints, :class:`~gateway.WritableDriver`) and their read-backs share the one
connection with the polls: requests go out one at a time, under the driver's lock, so each one's
failure is named from what the connection saw while *it* was in flight. A device's exception
reply to a write is a refusal (:class:`~gateway.WriteRefusedError`, the exception named).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gateway import (
    Channel,
    CommandDriver,
    DeviceCommand,
    DeviceIdentity,
    InstrumentError,
    InstrumentIO,
    Output,
    PluginContext,
    PollingDriver,
    Quality,
    WritableDriver,
    WriteRefusedError,
    now_ns,
)

from .identity import BASIC, IdentityOptions, identity_from_objects, read_code_for
from .options import ModbusOptions
from .profiles import Profile, load_profile
from .registers import CommandSpec, Decoder, ReadBlock, RegisterSpec, encode_value, plan_reads
from .wire import ConnectionLostError, ReplyWatch

__all__ = ["ModbusDriver"]

log = structlog.get_logger("plugins.modbus")

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


# Exception codes of a Modbus gateway that could not reach the device: the path failed, the
# device did not refuse anything.
_PATH_EXCEPTIONS = frozenset({10, 11})


_MAX_IDENTIFICATION_READS = 8  # "more follows" replies; a device that never stops is cut off


def _exception_reason(response: Any) -> str:
    code = getattr(response, "exception_code", 0)
    return f"exception {code} ({_EXCEPTION_NAMES.get(code, 'unknown')})"


class ModbusDriver(PollingDriver):
    """One Modbus device, over TCP or RTU."""

    def __init__(self, options: ModbusOptions, context: PluginContext) -> None:
        super().__init__(context)
        self.options = options
        profile = load_profile(options.profile) if options.profile else Profile()
        specs = {r.name: r for r in profile.registers}
        specs.update({r.name: r for r in options.registers})
        self.specs: dict[str, RegisterSpec] = specs
        for spec in specs.values():
            if spec.status is None:
                continue
            status = specs.get(spec.status.status_register)
            if status is None:
                # Without this, a misspelt name would make every value silently "good".
                raise ValueError(
                    f"register {spec.name!r}: status_register {spec.status.status_register!r}"
                    " is not a register of this map"
                )
            if status.type.startswith("float") or status.scale != 1 or status.offset != 0:
                raise ValueError(
                    f"register {status.name!r} holds status bits: it must be an unscaled"
                    " integer type"
                )
        commands = {c.name: c for c in profile.commands}
        commands.update({c.name: c for c in options.commands})
        for command in commands.values():
            target = specs.get(command.channel)
            if target is None or target.table != "holding":
                raise ValueError(
                    f"command {command.name!r}: register {command.channel!r} is not a holding"
                    " register of this map"
                )
        self.command_specs: dict[str, CommandSpec] = commands
        self.address_base = (
            options.address_base if options.address_base is not None else profile.address_base
        )
        self.word_order = options.word_order or profile.word_order
        self.byte_order = options.byte_order or profile.byte_order
        self.identity_spec: IdentityOptions | None = options.identity or profile.identity
        self.blocks: list[ReadBlock] = plan_reads(
            list(specs.values()),
            address_base=self.address_base,
            word_order=self.word_order,
            byte_order=self.byte_order,
            max_gap=options.max_gap,
        )
        # One read block per register, for read-backs.
        self._single: dict[str, ReadBlock] = {
            name: plan_reads(
                [spec],
                address_base=self.address_base,
                word_order=self.word_order,
                byte_order=self.byte_order,
            )[0]
            for name, spec in specs.items()
        }
        self._client: Any = None
        self._watch = ReplyWatch()
        # Held from a request's send to the end of its reply's checks: polls, writes and
        # read-backs never overlap on the connection, and the ReplyWatch's state is always the
        # request's in flight (a request cancelled while waiting its turn must not end another's).
        self._lock = asyncio.Lock()
        self._wired: list[tuple[Decoder, Output, RegisterSpec]] | None = None
        self._io: InstrumentIO | None = None
        if options.transport == "tcp":
            self.where = f"{options.host}:{options.port}"
        else:
            self.where = str(options.serial_port)

    def channels(self) -> Sequence[Channel]:
        return [
            Channel(s.name, s.unit, description=s.description, writable=s.access == "rw")
            for s in self.specs.values()
        ]

    async def connect(self) -> None:
        o = self.options
        self._watch = watch = ReplyWatch()
        common: dict[str, Any] = {
            "timeout": o.timeout_s,
            "retries": 0,
            "reconnect_delay": 0,
            "trace_pdu": watch.trace_pdu,
        }
        if o.transport == "tcp":
            self._client = AsyncModbusTcpClient(o.host, port=o.port, **common)
        else:
            self._client = AsyncModbusSerialClient(
                str(o.serial_port),
                baudrate=o.baudrate,
                bytesize=o.bytesize,
                parity=o.parity,
                stopbits=o.stopbits,
                **common,
            )
        watch.attach(self._client)
        try:
            ok = await self._client.connect()
        except (ModbusException, OSError) as exc:
            raise InstrumentError(f"cannot connect to {self.where}: {exc}") from exc
        if not ok:
            raise InstrumentError(f"cannot connect to {self.where}")
        self.device_identity = None
        if self.identity_spec is not None:
            self.device_identity = await self._read_identity(self.identity_spec)

    async def _read_identity(self, spec: IdentityOptions) -> DeviceIdentity | None:
        """Read Device Identification, following "more follows" across replies. A device that
        refuses it (an exception reply) or does not answer has none: logged, not a failure (a
        dead link fails the first poll)."""
        objects: dict[int, Any] = {}
        read_code, object_id = read_code_for(spec), 0
        for _ in range(_MAX_IDENTIFICATION_READS):

            def request(client: Any, code: int = read_code, first: int = object_id) -> Any:
                return client.read_device_information(
                    read_code=code, object_id=first, device_id=self.options.unit_id
                )

            try:
                response, inconsistent = await self._execute(request)
            except InstrumentError as exc:
                self._log_no_identity(str(exc))
                return None
            if inconsistent is not None or response.isError():
                why = inconsistent or _exception_reason(response)
                if read_code != BASIC:  # the mandatory objects, at least
                    read_code, object_id, objects = BASIC, 0, {}
                    continue
                self._log_no_identity(why)
                return None
            objects.update(response.information)
            if not response.more_follows:
                break
            object_id = response.next_object_id
        identity = identity_from_objects(spec, objects)
        return None if identity.is_empty() else identity

    def _log_no_identity(self, why: str) -> None:
        log.warning(
            "modbus.identity_unavailable", instrument=self.context.id, where=self.where, reason=why
        )

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def poll(self, io: InstrumentIO) -> None:
        if self._wired is None or self._io is not io:
            self._io = io
            self._wired = [
                (d, io.output(d.name), self.specs[d.name]) for b in self.blocks for d in b.decoders
            ]
        values: dict[str, float | int] = {}
        failed: dict[str, str] = {}
        for block in self.blocks:
            words, error = await self._read(block)
            if error is not None:
                for d in block.decoders:
                    failed[d.name] = error
                continue
            for d in block.decoders:
                values[d.name] = d.decode(words)
        source_ts = now_ns()
        for decoder, output, spec in self._wired:
            name = decoder.name
            if name in failed:
                output.publish(None, source_ts, Quality.BAD, failed[name])
                continue
            value = values[name]
            rule = spec.status
            if rule is not None:
                if rule.status_register in failed:
                    output.publish(
                        value, source_ts, Quality.UNCERTAIN, "status register unavailable"
                    )
                    continue
                bits = int(values[rule.status_register])
                if bits & rule.bad_mask:
                    output.publish(value, source_ts, Quality.BAD, f"status 0x{bits:02x}")
                    continue
                if bits & rule.uncertain_mask:
                    output.publish(value, source_ts, Quality.UNCERTAIN, f"status 0x{bits:02x}")
                    continue
            output.publish(value, source_ts)

    async def _read(self, block: ReadBlock) -> tuple[list[int], str | None]:
        def request(client: Any) -> Awaitable[Any]:
            read = (
                client.read_holding_registers
                if block.table == "holding"
                else client.read_input_registers
            )
            return read(block.start, count=block.count, device_id=self.options.unit_id)  # type: ignore[no-any-return]

        response, inconsistent = await self._execute(request)
        if inconsistent is not None:
            return [], f"malformed reply: {inconsistent}"
        if response.isError():
            return [], _exception_reason(response)
        registers = response.registers
        if len(registers) != block.count:
            carried = f"{len(registers)} register{'' if len(registers) == 1 else 's'}"
            return [], f"reply carries {carried}, {block.count} requested"
        return registers, None

    async def _execute(self, request: Callable[[Any], Awaitable[Any]]) -> tuple[Any, str | None]:
        """Send one pymodbus request, made by ``request(client)``, when the connection is free;
        its reply, and what is wrong with it that pymodbus does not check (or ``None``).

        A failure becomes an ``InstrumentError`` that says what the connection saw (the stored
        reason of the instrument's samples)."""
        async with self._lock:
            client, watch = self._client, self._watch
            if client is None:
                raise InstrumentError(f"{self.where}: not connected")
            try:
                return await request(client), watch.inconsistent
            except ConnectionLostError as exc:
                raise InstrumentError(f"{self.where}: {exc}") from exc
            except ConnectionException as exc:
                raise InstrumentError(f"{self.where}: {watch.describe_lost()}") from exc
            except ModbusIOException as exc:
                if "No response received" not in str(exc):
                    raise InstrumentError(f"{self.where}: {exc}") from exc
                # pymodbus's only word for "nothing acceptable arrived before the timeout".
                reason = watch.describe_timeout(self.options.timeout_s)
                raise InstrumentError(f"{self.where}: {reason}") from exc
            except ModbusException as exc:
                raise InstrumentError(f"{self.where}: {exc}") from exc
            finally:
                watch.finished()

    async def write(self, channel: str, value: float) -> None:
        """Write a setpoint (:class:`~gateway.WritableDriver`). Only registers declared
        ``access: rw`` may be written; every write, refused, failed or done, is logged
        (instrument, channel, value, registers)."""
        # audit=True: never suppressed as a repeat by the log's rate limit.
        audit = log.bind(instrument=self.context.id, channel=channel, value=value, audit=True)
        spec = self.specs.get(channel)
        if spec is None or spec.access != "rw":
            audit.warning("modbus.write_refused", reason="not declared access: rw")
            raise WriteRefusedError(f"channel {channel!r} is not writable")
        await self._write_register(spec, value, channel, audit)

    def commands(self) -> Sequence[DeviceCommand]:
        return [
            DeviceCommand(c.name, c.description, changes_process=c.changes_process)
            for c in self.command_specs.values()
        ]

    async def command(self, name: str, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run a command (:class:`~gateway.CommandDriver`): its value written to its register,
        logged as writes are."""
        command = self.command_specs.get(name)
        if command is None:
            raise WriteRefusedError(f"no command {name!r}")
        spec = self.specs[command.channel]
        audit = log.bind(
            instrument=self.context.id, command=name, channel=spec.name, value=command.value
        )
        await self._write_register(spec, command.value, f"command {name}", audit.bind(audit=True))
        return {"channel": spec.name, "value": command.value}

    async def _write_register(
        self, spec: RegisterSpec, value: float, what: str, audit: Any
    ) -> None:
        """Write ``value`` to ``spec``'s registers; ``WriteRefusedError`` if it does not fit or
        the device refuses, ``InstrumentError`` if the request failed."""
        try:
            words = encode_value(
                spec, value, word_order=self.word_order, byte_order=self.byte_order
            )
        except ValueError as exc:
            audit.warning("modbus.write_refused", reason=str(exc))
            raise WriteRefusedError(str(exc)) from exc
        address = spec.address - self.address_base
        unit_id = self.options.unit_id
        try:
            response, _ = await self._execute(
                lambda client: client.write_registers(address, words, device_id=unit_id)
            )
        except InstrumentError as exc:
            audit.warning("modbus.write_failed", reason=str(exc))
            raise InstrumentError(f"write of {what} failed: {exc}") from exc
        if response.isError():
            reason = _exception_reason(response)
            if getattr(response, "exception_code", 0) in _PATH_EXCEPTIONS:
                audit.warning("modbus.write_failed", reason=reason)
                raise InstrumentError(f"{self.where}: write of {what} failed: {reason}")
            audit.warning("modbus.write_refused", reason=f"refused by the device: {reason}")
            raise WriteRefusedError(
                f"{self.where}: write of {what} refused by the device: {reason}"
            )
        audit.info("modbus.write", words=words)

    async def read_back(self, channel: str) -> float:
        """The value of ``channel`` read from the device now (:class:`~gateway.WritableDriver`),
        decoded with the register map's type and scale."""
        block = self._single.get(channel)
        if block is None:
            raise WriteRefusedError(f"channel {channel!r} is not a register of this map")
        words, error = await self._read(block)
        if error is not None:
            raise InstrumentError(f"{self.where}: read-back of {channel} failed: {error}")
        return float(block.decoders[0].decode(words))


if TYPE_CHECKING:
    # mypy checks here that the driver has the write capability's exact signatures.
    _writable: type[WritableDriver] = ModbusDriver
    _commandable: type[CommandDriver] = ModbusDriver
