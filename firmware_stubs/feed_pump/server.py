"""Modbus TCP face of the emulated feed pump, served by a real pymodbus server.

For gateway integration tests, demos and ``patgw emulate feed_pump``: a
:class:`PumpModel` advanced in real time, exposed through pymodbus 3.16's
``ModbusTcpServer`` with the register map of ``registers.py``, plus fault
injection so tests can exercise the gateway's error handling.

How it hooks into pymodbus (all public constructor parameters):

* ``SimDevice(action=...)``: pymodbus calls the async action on every register
  access before it touches its own register image. The action steps the model
  to "now", refreshes the image from the model (live values), validates and
  applies writes, and returns an ``ExcCodes`` member to refuse a request.
* ``trace_pdu``: rewrites every outgoing response to exception 4 while
  ``Fault.EXCEPTION_RESPONSES`` is active, so even requests pymodbus rejects
  before the action runs (bad address) get the injected answer.
* ``trace_packet``: returns ``b""`` for outgoing frames while ``Fault.STALL`` is
  active; pymodbus then writes nothing, so the client never gets an answer.
* ``active_connections`` of the listener (public attribute of pymodbus'
  ``ModbusProtocol``): closed one by one for ``Fault.DROP_CONNECTIONS``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Literal, Self, cast

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from ..schedule import Ramp, wall_hours
from .faults import Fault
from .model import FAULT_NONE, FAULT_TUBE, PumpModel
from .registers import FIELDS, RegisterAccessError, apply_write, encode_registers

_log = structlog.get_logger(__name__)

#: Function codes the pump implements; anything else is ILLEGAL_FUNCTION.
SUPPORTED_FUNCTION_CODES = frozenset({3, 4, 6, 16})

_CLOSE_TIMEOUT_S = 1.0


class FeedPumpEmulator:
    """A feed pump on the network: Modbus TCP server + model stepped in real time.

    Use as ``async with FeedPumpEmulator() as pump:`` or call :meth:`start` /
    :meth:`stop` explicitly (it can be started again after a stop). With
    ``port=0`` an ephemeral port is bound on the first start and reused on
    later starts, so clients can reconnect to the same address. Only
    ``unit_id`` is served; other unit ids get exception 11 (gateway target
    failed to respond). ``unit_id=0`` answers every unit id.

    The model only advances while the emulator is started.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model: PumpModel | None = None,
        unit_id: int = 1,
        tick_s: float = 0.05,
        framing: Literal["tcp", "rtu"] = "tcp",
        on_delivered: Callable[[float], None] | None = None,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit_id {unit_id} outside 0..255")
        if not tick_s > 0.0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        self.model = model if model is not None else PumpModel()
        self.unit_id = unit_id
        self.tick_s = tick_s
        # Told every millilitre the pump delivers (the shared bioreactor process takes it in).
        self.on_delivered = on_delivered
        # The time base of gradual faults: the shared process's hours once linked to one.
        self.hours: Callable[[], float] = wall_hours
        #: Volume truly delivered, mL: total_volume less what worn tubing lost (emulator truth,
        #: never on the wire).
        self.delivered_ml = 0.0
        self._wear: Ramp | None = None
        self._wear_at_h = 0.0
        # "rtu" serves RTU frames (CRC, no MBAP header) over TCP: what a serial device server
        # sends, and what a driver opening the pyserial URL socket://host:port expects.
        self.framing = framing
        self._host = host
        self._port = port
        self._faults: set[Fault] = set()
        self._server: ModbusTcpServer | None = None
        self._model_task: asyncio.Task[None] | None = None
        self._last_step = 0.0

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

    @property
    def active_faults(self) -> frozenset[Fault]:
        """Injected faults that stay active until :meth:`clear_faults`."""
        return frozenset(self._faults)

    async def start(self) -> None:
        """Bind the listening socket and start stepping the model."""
        if self._server is not None:
            raise RuntimeError("feed pump emulator already started")
        server = ModbusTcpServer(
            self._devices(),
            address=(self._host, self._port),
            identity=ModbusDeviceIdentification(  # type: ignore[no-untyped-call]
                info_name={
                    "VendorName": "PAT Gateway",
                    "ProductCode": "PF",
                    "ModelName": "Emulated peristaltic feed pump",
                }
            ),
            trace_pdu=self._trace_pdu,
            trace_packet=self._trace_packet,
            framer=FramerType.RTU if self.framing == "rtu" else FramerType.SOCKET,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            # pymodbus reports a failed bind as RuntimeError; callers expect OSError.
            raise OSError(f"feed pump emulator cannot listen on {self._host}:{self._port}") from exc
        listener = cast(asyncio.Server, server.transport)
        self._port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        self._last_step = asyncio.get_running_loop().time()
        self._model_task = asyncio.create_task(self._run_model(), name="feed_pump.model")
        _log.info("emulator.started", host=self._host, port=self._port, unit_id=self.unit_id)

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
        _log.info("emulator.stopped", host=self._host, port=self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def wear_loss(self) -> float:
        """Fraction of the delivery worn tubing loses now (0 without ``TUBING_WEAR``)."""
        return 0.0 if self._wear is None else self._wear.at(self.hours())

    def inject(
        self, fault: Fault, *, rate_per_h: float | None = None, max_loss: float = 0.5
    ) -> None:
        """Inject ``fault`` now; see :class:`Fault` for what each one does.

        ``TUBING_WEAR`` needs ``rate_per_h`` (fraction of the delivery lost per hour of
        :attr:`hours`, > 0) and takes ``max_loss`` (0 < max_loss <= 1); ``ValueError`` otherwise.
        """
        if fault is Fault.TUBING_WEAR:
            if rate_per_h is None or not 0.0 < max_loss <= 1.0:
                raise ValueError("tubing_wear needs rate_per_h > 0 and 0 < max_loss <= 1")
            self._advance()  # the time up to now ran on good tubing
            now_h = self.hours()
            self._wear = Ramp(rate_per_h, max_loss, now_h)
            self._wear_at_h = now_h
            _log.info(
                "emulator.fault_injected",
                fault=fault.value,
                rate_per_h=rate_per_h,
                max_loss=max_loss,
            )
            return
        if rate_per_h is not None:
            raise ValueError(f"fault {fault.value!r} takes no rate_per_h")
        if fault is Fault.DROP_CONNECTIONS:
            dropped = self._drop_connections()
            _log.info("emulator.fault_injected", fault=fault.value, connections=dropped)
            return
        if fault is Fault.PUMP_FAULT:
            self._advance()
            self.model.trip(FAULT_TUBE)
        else:
            self._faults.add(fault)
        _log.info("emulator.fault_injected", fault=fault.value)

    def clear_faults(self) -> None:
        """Clear every injected fault, acknowledging a pump fault too (worn tubing is replaced).

        Like an operator acknowledge, this leaves a tripped pump stopped.
        """
        self._advance()
        self._wear = None
        self._faults.clear()
        if self.model.fault_code != FAULT_NONE:
            self._advance()
            self.model.acknowledge_fault()
        _log.info("emulator.faults_cleared")

    def clear(self, fault: Fault) -> None:
        """Clear one fault, leaving any other injected fault active."""
        if fault is Fault.TUBING_WEAR:
            self._advance()  # the time up to now ran on the worn tubing
            self._wear = None
        elif fault is Fault.PUMP_FAULT:
            if self.model.fault_code != FAULT_NONE:
                self._advance()
                self.model.acknowledge_fault()
        else:
            self._faults.discard(fault)
        _log.info("emulator.fault_cleared", fault=fault.value)

    def _devices(self) -> list[SimDevice]:
        image = encode_registers(self.model)
        pump = SimDevice(
            id=self.unit_id,
            simdata=[
                SimData(
                    address=field.address,
                    values=image[field.address : field.end],
                    datatype=DataType.REGISTERS,
                    readonly=not field.writable,
                )
                for field in FIELDS
            ],
            action=self._on_access,
        )
        if self.unit_id == 0:
            return [pump]
        # Device id 0 is pymodbus' catch-all for unit ids without a SimDevice;
        # it spans the whole address space so every request reaches the action.
        other_units = SimDevice(
            id=0,
            simdata=SimData(address=0, count=0x10000, datatype=DataType.REGISTERS),
            action=self._on_unknown_unit,
        )
        return [pump, other_units]

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
        if self._faults:
            # The trace hooks replace or swallow the answer; refusing here
            # keeps a stalled or failing pump from acting on writes.
            return ExcCodes.DEVICE_FAILURE
        if function_code not in SUPPORTED_FUNCTION_CODES:
            return ExcCodes.ILLEGAL_FUNCTION
        self._advance()
        if set_values is not None:
            try:
                apply_write(self.model, address, [int(value) for value in set_values])
            except RegisterAccessError as exc:
                _log.info(
                    "emulator.write_rejected",
                    address=address,
                    count=count,
                    code=int(exc.code),
                    reason=str(exc),
                )
                return ExcCodes(int(exc.code))
            _log.info("emulator.write_applied", address=address, count=count)
        image = encode_registers(self.model)
        registers[start_address : start_address + len(image)] = image
        return None

    async def _on_unknown_unit(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """SimDevice action for unit ids that are not this pump."""
        return ExcCodes.GATEWAY_NO_RESPONSE

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending and Fault.EXCEPTION_RESPONSES in self._faults:
            return ExceptionResponse(
                pdu.function_code & 0x7F,
                ExcCodes.DEVICE_FAILURE,
                device_id=pdu.dev_id,
                transaction=pdu.transaction_id,
            )
        return pdu

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        if sending and Fault.STALL in self._faults:
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

    def _advance(self) -> None:
        """Step the model up to the current loop time (no-op while stopped)."""
        if self._server is None:
            return
        now = asyncio.get_running_loop().time()
        before = self.model.total_ml
        self.model.step(now - self._last_step)
        self._last_step = now
        delivered = self.model.total_ml - before
        if self._wear is not None:
            now_h = self.hours()
            delivered *= 1.0 - self._wear.mean(self._wear_at_h, now_h)
            self._wear_at_h = now_h
        if delivered <= 0.0:
            return
        self.delivered_ml += delivered
        if self.on_delivered is not None:
            self.on_delivered(delivered)

    async def _run_model(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self._advance()


async def serve_forever(host: str, port: int, stop: asyncio.Event) -> None:
    """Serve one feed pump on ``host:port`` until ``stop`` is set (CLI entry point)."""
    async with FeedPumpEmulator(host, port) as emulator:
        _log.info("emulator.serving", host=emulator.host, port=emulator.port)
        await stop.wait()
