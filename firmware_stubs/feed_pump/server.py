"""Modbus TCP face of the emulated feed pump, served by a real pymodbus server.

For gateway integration tests, demos and ``patgw emulate feed_pump``: a
:class:`PumpModel` advanced in real time, exposed through pymodbus 3.16's
``ModbusTcpServer`` with the register map of ``registers.py``, plus fault
injection so tests can exercise the gateway's error handling.

The Modbus TCP server, its communication faults and pymodbus wiring are
:class:`firmware_stubs.modbus_device.ModbusDeviceServer`'s, shared with the other emulated
Modbus devices (never with the gateway's driver).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData

from ..modbus_device import CommFault, ModbusDeviceServer
from ..schedule import Ramp, wall_hours
from .faults import Fault
from .model import FAULT_NONE, FAULT_TUBE, PumpModel
from .registers import FIELDS, RegisterAccessError, apply_write, encode_registers

_log = structlog.get_logger(__name__)


class FeedPumpEmulator(ModbusDeviceServer):
    """A feed pump on the network: Modbus TCP server + model stepped in real time.

    Use as ``async with FeedPumpEmulator() as pump:`` or call :meth:`start` /
    :meth:`stop` explicitly (it can be started again after a stop). With
    ``port=0`` an ephemeral port is bound on the first start and reused on
    later starts, so clients can reconnect to the same address. Only
    ``unit_id`` is served; other unit ids get exception 11 (gateway target
    failed to respond). ``unit_id=0`` answers every unit id.

    The model only advances while the emulator is started.
    """

    kind = "feed_pump"

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
        serial_number: str = "FP-EMU-0001",
    ) -> None:
        super().__init__(
            host,
            port,
            unit_id=unit_id,
            tick_s=tick_s,
            framing=framing,
            identity={
                "VendorName": "PAT Gateway",
                "ProductCode": "PF",
                "MajorMinorRevision": "1.4",
                "ModelName": "Emulated peristaltic feed pump",
            },
            serial_number=serial_number,
        )
        self.model = model if model is not None else PumpModel()
        # Told every millilitre the pump delivers (the shared bioreactor process takes it in).
        self.on_delivered = on_delivered
        # The time base of gradual faults: the shared process's hours once linked to one.
        self.hours: Callable[[], float] = wall_hours
        #: Volume truly delivered, mL: total_volume less what worn tubing lost (emulator truth,
        #: never on the wire).
        self.delivered_ml = 0.0
        self._wear: Ramp | None = None
        self._wear_at_h = 0.0
        self._last_step = 0.0

    @property
    def active_faults(self) -> frozenset[Fault]:
        """Injected faults that stay active until :meth:`clear_faults`."""
        return frozenset(Fault(fault.value) for fault in self.comm_faults)

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
        if fault is Fault.PUMP_FAULT:
            self._advance()
            self.model.trip(FAULT_TUBE)
            _log.info("emulator.fault_injected", fault=fault.value)
        else:
            self.inject_comm(CommFault(fault.value))

    def clear_faults(self) -> None:
        """Clear every injected fault, acknowledging a pump fault too (worn tubing is replaced).

        Like an operator acknowledge, this leaves a tripped pump stopped.
        """
        self._advance()
        self._wear = None
        self.clear_comm()
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
            self.clear_comm(CommFault(fault.value))
        _log.info("emulator.fault_cleared", fault=fault.value)

    def _simdata(self) -> list[SimData]:
        image = encode_registers(self.model)
        return [
            SimData(
                address=field.address,
                values=image[field.address : field.end],
                datatype=DataType.REGISTERS,
                readonly=not field.writable,
            )
            for field in FIELDS
        ]

    def _serve(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | None,
    ) -> ExcCodes | None:
        if set_values is not None:
            try:
                apply_write(self.model, address, set_values)
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

    def _started(self) -> None:
        self._last_step = asyncio.get_running_loop().time()

    def _advance(self) -> None:
        """Step the model up to the current loop time (no-op while stopped)."""
        if not self.is_serving:
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


async def serve_forever(host: str, port: int, stop: asyncio.Event) -> None:
    """Serve one feed pump on ``host:port`` until ``stop`` is set (CLI entry point)."""
    async with FeedPumpEmulator(host, port) as emulator:
        _log.info("emulator.serving", host=emulator.host, port=emulator.port)
        await stop.wait()
