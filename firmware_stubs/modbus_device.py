"""What every emulated Modbus device shares: its own register codec and its TCP server.

Emulator side only: the gateway's Modbus driver (``plugins/modbus``) never imports this, so a
test of the driver against an emulator checks the driver's decoding rather than compare a codec
with itself (stdlib ``struct`` here, none of the driver's code).

* :class:`Field` — one named value of a register map; :func:`encode_fields` packs a block of
  contiguous fields into 16-bit words (big-endian bytes, most-significant word first, "ABCD"),
  :func:`decode_field` reads one back.
* :class:`RegisterAccessError` — a request the device refuses, with its Modbus exception code.
* :class:`ModbusDeviceServer` — a pymodbus 3.16 ``ModbusTcpServer`` around one device: start and
  stop (restartable on the same port), a model tick, unknown unit ids answered with exception 11,
  and the communication faults every emulated Modbus device can play: answer every request with
  exception 4 (``exception_responses``), never answer (``stall``), drop every open connection.

How it hooks into pymodbus (all public constructor parameters):

* ``SimDevice(action=...)``: pymodbus calls the async action on every register access before it
  touches its own register image. The action steps the device to "now", refreshes the image
  (live values), validates and applies writes, and returns an ``ExcCodes`` member to refuse.
* ``trace_pdu``: rewrites every outgoing response to exception 4 while exception responses are
  injected, so even requests pymodbus rejects before the action runs (bad address) get it.
* ``trace_packet``: returns ``b""`` for outgoing frames while stalled; pymodbus then writes
  nothing, so the client never gets an answer.
* ``active_connections`` of the listener (public attribute of pymodbus' ``ModbusProtocol``):
  closed one by one to drop the connections.
* Read Device Identification (function 43 / MEI 14): pymodbus answers it from one identity per
  *process* (its ``ModbusControlBlock`` singleton), so two emulated devices in one process
  would answer alike. ``trace_pdu`` swaps each incoming request for one answered from this
  device's own objects (:attr:`ModbusDeviceServer.identity` and its ``serial_number`` as private
  object 0x80, read when asked: a swapped device answers another serial number).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Self, TypeVar, cast

import structlog
from pymodbus.constants import DeviceInformation, ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.device import DeviceInformationFactory, ModbusDeviceIdentification
from pymodbus.pdu.mei_message import ReadDeviceInformationRequest, ReadDeviceInformationResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .schedule import FaultSchedule, ScheduledEmulator, ScheduledStep

__all__ = [
    "CommFault",
    "ExceptionCode",
    "Field",
    "FieldKind",
    "ModbusDeviceServer",
    "RegisterAccessError",
    "ScheduledModbusDevice",
    "covered_fields",
    "decode_field",
    "encode_fields",
    "field_rows",
]

_log = structlog.get_logger(__name__)

FieldKind = Literal["float32", "float64", "uint16", "uint32"]

_STRUCT_CODE: dict[FieldKind, str] = {"float32": "f", "float64": "d", "uint16": "H", "uint32": "I"}

_CLOSE_TIMEOUT_S = 1.0


class ExceptionCode(enum.IntEnum):
    """Modbus exception codes an emulated device answers with (same numbers as the spec)."""

    ILLEGAL_FUNCTION = 1
    ILLEGAL_DATA_ADDRESS = 2
    ILLEGAL_DATA_VALUE = 3
    SLAVE_DEVICE_FAILURE = 4


class RegisterAccessError(Exception):
    """A register read or write was refused; ``code`` is the Modbus exception code."""

    def __init__(self, code: ExceptionCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


@dataclass(frozen=True, slots=True)
class Field:
    """One named value in a register map."""

    name: str
    address: int
    kind: FieldKind
    unit: str
    writable: bool
    description: str

    @property
    def count(self) -> int:
        """Number of 16-bit registers the value occupies."""
        return struct.calcsize(">" + _STRUCT_CODE[self.kind]) // 2

    @property
    def end(self) -> int:
        """First address after this field."""
        return self.address + self.count


def encode_fields(fields: Sequence[Field], values: Sequence[float | int]) -> list[int]:
    """The words of ``fields`` (contiguous, in address order) holding ``values``."""
    code = ">" + "".join(_STRUCT_CODE[field.kind] for field in fields)
    raw = struct.pack(code, *values)
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def decode_field(field: Field, words: Sequence[int]) -> float | int:
    """Decode one field from exactly ``field.count`` words."""
    raw = struct.pack(f">{field.count}H", *words)
    value: float | int = struct.unpack(">" + _STRUCT_CODE[field.kind], raw)[0]
    return value


def covered_fields(
    fields: Sequence[Field], address: int, words: Sequence[int]
) -> list[tuple[Field, float | int]]:
    """Split a write of ``words`` at ``address`` into the whole ``fields`` (contiguous, in
    address order) it covers, decoded; outside the fields, partial or read-only fields are
    ILLEGAL_DATA_ADDRESS, a word that is not 16-bit ILLEGAL_DATA_VALUE."""
    end = address + len(words)
    if not words or address < fields[0].address or end > fields[-1].end:
        raise RegisterAccessError(
            ExceptionCode.ILLEGAL_DATA_ADDRESS, f"write {address}+{len(words)} outside map"
        )
    if any(not 0 <= word <= 0xFFFF for word in words):
        raise RegisterAccessError(ExceptionCode.ILLEGAL_DATA_VALUE, "register value not 16-bit")
    covered: list[tuple[Field, float | int]] = []
    for field in fields:
        if field.end <= address or field.address >= end:
            continue
        if field.address < address or field.end > end:
            # Half a float is meaningless on its own, so the firmware refuses it
            # rather than combining it with stale words.
            raise RegisterAccessError(
                ExceptionCode.ILLEGAL_DATA_ADDRESS, f"partial write of {field.name}"
            )
        if not field.writable:
            raise RegisterAccessError(
                ExceptionCode.ILLEGAL_DATA_ADDRESS, f"{field.name} is read-only"
            )
        offset = field.address - address
        covered.append((field, decode_field(field, words[offset : offset + field.count])))
    return covered


def field_rows(fields: Sequence[Field]) -> str:
    """Markdown table rows (address, count, name, type, unit, access, notes) of ``fields``."""
    return "".join(
        f"| {f.address} | {f.count} | {f.name} | {f.kind} | {f.unit} | "
        f"{'read/write' if f.writable else 'read'} | {f.description} |\n"
        for f in fields
    )


class CommFault(enum.Enum):
    """Communication faults every emulated Modbus device can play (its own ``Fault`` enum
    names them with the same values)."""

    #: Close every open client connection now; new connections are still accepted.
    DROP_CONNECTIONS = "drop_connections"
    #: Answer every request with Modbus exception 4 (slave device failure).
    EXCEPTION_RESPONSES = "exception_responses"
    #: Accept requests but never answer them (nor act on them).
    STALL = "stall"


class ModbusDeviceServer:
    """One emulated device on the network: a Modbus TCP server and a model ticked in real time.

    Subclasses say what the device holds (:meth:`_simdata`), what a register access does
    (:meth:`_serve`) and how the model advances (:meth:`_advance`, also called every ``tick_s``).
    Use as ``async with`` or call :meth:`start` / :meth:`stop` explicitly (it can be started
    again after a stop). With ``port=0`` an ephemeral port is bound on the first start and reused
    on later starts, so clients can reconnect to the same address. Only ``unit_id`` is served;
    other unit ids get exception 11 (gateway target failed to respond); ``unit_id=0`` answers
    every unit id.
    """

    #: Short name of the device kind: names its task and its errors.
    kind = "modbus_device"
    #: Function codes the device implements; anything else is ILLEGAL_FUNCTION (43: Read Device
    #: Identification).
    function_codes: frozenset[int] = frozenset({3, 4, 6, 16, 43})

    def __init__(
        self,
        host: str,
        port: int,
        *,
        unit_id: int,
        tick_s: float,
        framing: Literal["tcp", "rtu"],
        identity: dict[str, str],
        serial_number: str | None = None,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id {unit_id} outside 0..255")
        if not tick_s > 0.0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        self.unit_id = unit_id
        self.tick_s = tick_s
        # "rtu" serves RTU frames (CRC, no MBAP header) over TCP: what a serial device server
        # sends, and what a driver opening the pyserial URL socket://host:port expects.
        self.framing = framing
        #: Read Device Identification objects by name (VendorName, ProductCode,
        #: MajorMinorRevision, ModelName...); the serial number is private object 0x80.
        self.identity = dict(identity)
        self.serial_number = serial_number
        self._host = host
        self._port = port
        self._comm_faults: set[CommFault] = set()
        self._server: ModbusTcpServer | None = None
        self._model_task: asyncio.Task[None] | None = None

    @property
    def host(self) -> str:
        """Address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """Bound TCP port once started (the requested port before the first start)."""
        return self._port

    @property
    def is_serving(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    async def start(self) -> None:
        """Bind the listening socket and start ticking the model."""
        if self._server is not None:
            raise RuntimeError(f"{self.kind} emulator already started")
        server = ModbusTcpServer(
            self._devices(),
            address=(self._host, self._port),
            trace_pdu=self._trace_pdu,
            trace_packet=self._trace_packet,
            framer=FramerType.RTU if self.framing == "rtu" else FramerType.SOCKET,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            # pymodbus reports a failed bind as RuntimeError; callers expect OSError.
            raise OSError(
                f"{self.kind} emulator cannot listen on {self._host}:{self._port}"
            ) from exc
        listener = cast(asyncio.Server, server.transport)
        self._port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        self._started()
        self._model_task = asyncio.create_task(self._run_model(), name=f"{self.kind}.model")
        _log.info(
            "emulator.started", kind=self.kind, host=self._host, port=self._port, unit=self.unit_id
        )

    async def stop(self) -> None:
        """Stop the model task, close the listening socket and every connection."""
        server, self._server = self._server, None
        task, self._model_task = self._model_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is None:
            return
        listener = server.transport
        await server.shutdown()  # type: ignore[no-untyped-call]
        if isinstance(listener, asyncio.Server):
            # On 3.12+ wait_closed() also waits for connections; pymodbus has
            # closed them already, the timeout only guards against a stuck peer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), _CLOSE_TIMEOUT_S)
        _log.info("emulator.stopped", kind=self.kind, host=self._host, port=self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- communication faults --------------------------------------------------------------------
    def inject_comm(self, fault: CommFault) -> None:
        """Inject a communication fault now (dropping connections acts once, the others stay
        until :meth:`clear_comm`)."""
        if fault is CommFault.DROP_CONNECTIONS:
            dropped = self._drop_connections()
            _log.info("emulator.fault_injected", fault=fault.value, connections=dropped)
            return
        self._comm_faults.add(fault)
        _log.info("emulator.fault_injected", fault=fault.value)

    def clear_comm(self, fault: CommFault | None = None) -> None:
        """Clear one communication fault, or all of them (``None``)."""
        if fault is None:
            self._comm_faults.clear()
        else:
            self._comm_faults.discard(fault)

    @property
    def comm_faults(self) -> frozenset[CommFault]:
        """The communication faults active now."""
        return frozenset(self._comm_faults)

    # -- what a subclass provides ----------------------------------------------------------------
    def _simdata(self) -> list[SimData]:
        """The device's register blocks (pymodbus' initial image; refreshed on every access)."""
        raise NotImplementedError

    def _serve(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | None,
    ) -> ExcCodes | None:
        """One access to the device, the model already advanced to now: apply a write, refresh
        ``registers`` (pymodbus' image, ``registers[0]`` is address ``start_address``), or
        refuse with an exception code."""
        raise NotImplementedError

    def _advance(self) -> None:
        """Bring the model up to now (called on every access and every ``tick_s``)."""

    def _started(self) -> None:
        """Called once the server listens, before the first tick."""

    # -- pymodbus wiring -------------------------------------------------------------------------
    def _devices(self) -> list[SimDevice]:
        device = SimDevice(id=self.unit_id, simdata=self._simdata(), action=self._on_access)
        if self.unit_id == 0:
            return [device]
        # Device id 0 is pymodbus' catch-all for unit ids without a SimDevice;
        # it spans the whole address space so every request reaches the action.
        other_units = SimDevice(
            id=0,
            simdata=SimData(address=0, count=0x10000, datatype=DataType.REGISTERS),
            action=self._on_unknown_unit,
        )
        return [device, other_units]

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """SimDevice action: serve live values and apply writes to the model."""
        if self._comm_faults:
            # The trace hooks replace or swallow the answer; refusing here
            # keeps a stalled or failing device from acting on writes.
            return ExcCodes.DEVICE_FAILURE
        if function_code not in self.function_codes:
            return ExcCodes.ILLEGAL_FUNCTION
        self._advance()
        words = None if set_values is None else [int(value) for value in set_values]
        return self._serve(function_code, start_address, address, count, registers, words)

    async def _on_unknown_unit(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """SimDevice action for unit ids that are not this device."""
        return ExcCodes.GATEWAY_NO_RESPONSE

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending and isinstance(pdu, ReadDeviceInformationRequest):
            return _OwnIdentityRequest(pdu, self)
        if sending and CommFault.EXCEPTION_RESPONSES in self._comm_faults:
            return ExceptionResponse(
                pdu.function_code & 0x7F,
                ExcCodes.DEVICE_FAILURE,
                device_id=pdu.dev_id,
                transaction=pdu.transaction_id,
            )
        return pdu

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        if sending and CommFault.STALL in self._comm_faults:
            # pymodbus has no "do not answer" switch for a handled request;
            # an empty frame makes its transport.write() a no-op.
            return b""
        return packet

    def _drop_connections(self) -> int:
        if self._server is None:
            return 0
        connections = list(self._server.active_connections.values())
        for connection in connections:
            connection.close()
        return len(connections)

    async def _run_model(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self._advance()


DeviceT = TypeVar("DeviceT", bound=ModbusDeviceServer)
StepT = TypeVar("StepT", bound=ScheduledStep)


class ScheduledModbusDevice(ScheduledEmulator[DeviceT, StepT], Generic[DeviceT, StepT]):
    """What a Modbus device emulator plugin hands the gateway: the device, its fault schedule
    (played by :meth:`_inject` and :meth:`_clear`) and the name of the shared bioreactor process
    it is linked to, if any (a subclass links it in :meth:`before_start`)."""

    def __init__(
        self, emulator: DeviceT, faults: Sequence[StepT], process: str | None = None
    ) -> None:
        name = f"{emulator.kind}.faults"
        super().__init__(emulator, FaultSchedule(faults, self._inject, self._clear, name))
        self.process = process

    @property
    def port(self) -> int:
        return self.emulator.port

    @property
    def endpoint(self) -> str:
        """Where a driver connects: ``host:port``."""
        return f"{self.emulator.host}:{self.emulator.port}"

    def _inject(self, step: StepT) -> None:
        raise NotImplementedError

    def _clear(self, step: StepT) -> None:
        raise NotImplementedError


class _OwnIdentityRequest(ReadDeviceInformationRequest):
    """A Read Device Identification request answered from one device's objects (the checks
    are pymodbus's own, for the same exception replies)."""

    def __init__(self, request: ReadDeviceInformationRequest, device: ModbusDeviceServer) -> None:
        super().__init__(
            request.read_code, request.object_id, request.dev_id, request.transaction_id
        )
        self._device = device

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        _ = context
        device = self._device
        if self.function_code not in device.function_codes:
            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_FUNCTION)
        if device.unit_id and device_id != device.unit_id:
            return ExceptionResponse(self.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        if not 0x01 <= self.read_code <= 0x04:
            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_VALUE)
        info: dict[int, str] = {0x80: device.serial_number} if device.serial_number else {}
        identity = ModbusDeviceIdentification(info=info, info_name=device.identity)  # type: ignore[no-untyped-call]
        information = DeviceInformationFactory.get(  # type: ignore[no-untyped-call]
            _Control(identity), self.read_code, self.object_id
        )
        if self.read_code == DeviceInformation.SPECIFIC and (
            0x07 <= self.object_id < 0x80 or not information.get(self.object_id)
        ):
            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_ADDRESS)
        return ReadDeviceInformationResponse(
            read_code=self.read_code,
            information=information,
            dev_id=device_id,
            transaction_id=self.transaction_id,
        )


@dataclass(frozen=True, slots=True)
class _Control:
    """What pymodbus's DeviceInformationFactory reads: a control block's ``Identity``."""

    Identity: ModbusDeviceIdentification  # (pymodbus's attribute name)
