"""Modbus TCP face of the emulated capacitance probe, served by a real pymodbus server.

A :class:`ProbeModel` measuring every ``interval_s`` wall seconds the culture it is immersed in
(the shared bioreactor process, or a constant culture), behind the register map of
``registers.py``. The server, the communication faults and the pymodbus wiring are
:class:`firmware_stubs.modbus_device.ModbusDeviceServer`'s (shared with the feed pump emulator,
never with the gateway's driver).
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData

from ..modbus_device import CommFault, ModbusDeviceServer, RegisterAccessError
from ..schedule import Ramp, wall_hours
from .faults import Fault
from .model import Culture, ProbeModel, Reading
from .registers import (
    HOLDING_FIELDS,
    INPUT_FIELDS,
    apply_write,
    check_access,
    encode_holding,
    encode_input,
)

__all__ = ["CapacitanceProbeEmulator", "MeasuredCulture", "constant_culture"]

_log = structlog.get_logger(__name__)

#: Measurements whose truth the emulator keeps (for tests that pair readings with the truth).
TRUTH_KEPT = 1000


@dataclass(frozen=True, slots=True)
class MeasuredCulture:
    """Emulator truth of one measurement, never on the wire: what the probe was immersed in and
    what a perfect probe would have read."""

    count: int
    hours: float
    culture: Culture
    permittivity_pF_per_cm: float
    conductivity_mS_per_cm: float


def constant_culture(vcd_e6_per_mL: float = 5.0, temperature_C: float = 37.0) -> Culture:
    """A culture that never changes: what a probe linked to no process measures."""
    return Culture(vcd_e6_per_mL=vcd_e6_per_mL, temperature_C=temperature_C)


class CapacitanceProbeEmulator(ModbusDeviceServer):
    """A capacitance probe transmitter on the network: Modbus TCP server + a probe measuring
    every ``interval_s`` wall seconds.

    ``culture`` is called for every measurement (the truth the probe is immersed in);
    ``hours`` is its time base (the shared process's batch age once linked to one, wall hours
    since construction otherwise): the cell diameter drifts and the fouling grows with it.
    Use as ``async with CapacitanceProbeEmulator() as probe:``; restartable on the same port.
    """

    kind = "capacitance_probe"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model: ProbeModel | None = None,
        unit_id: int = 1,
        interval_s: float = 0.5,
        framing: Literal["tcp", "rtu"] = "tcp",
        culture: Callable[[], Culture] | None = None,
        serial_number: str = "CP-EMU-0001",
    ) -> None:
        super().__init__(
            host,
            port,
            unit_id=unit_id,
            tick_s=interval_s,
            framing=framing,
            identity={
                "VendorName": "PAT Gateway",
                "ProductCode": "CP",
                "MajorMinorRevision": "2.1",
                "ModelName": "Emulated capacitance (viable biomass) probe",
            },
            serial_number=serial_number,
        )
        self.model = model if model is not None else ProbeModel()
        self.interval_s = interval_s
        self.culture: Callable[[], Culture] = culture if culture is not None else constant_culture
        origin = wall_hours()
        self.hours: Callable[[], float] = lambda: wall_hours() - origin
        #: The truth of the latest measurements, oldest first (see :class:`MeasuredCulture`).
        self.truth: collections.deque[MeasuredCulture] = collections.deque(maxlen=TRUTH_KEPT)
        self.reading: Reading | None = None
        self._next_s = 0.0

    @property
    def active_faults(self) -> frozenset[Fault]:
        """Injected faults that stay active until cleared."""
        active = {Fault(fault.value) for fault in self.comm_faults}
        if self.model.bubble_probability > 0.0:
            active.add(Fault.BUBBLES)
        if self.model.fouling is not None:
            active.add(Fault.FOULING)
        if self.model.failed:
            active.add(Fault.PROBE_ERROR)
        return frozenset(active)

    def inject(
        self,
        fault: Fault,
        *,
        probability: float | None = None,
        rate_per_h: float | None = None,
        max_offset: float | None = None,
    ) -> None:
        """Inject ``fault`` now; see :class:`Fault` for what each one does.

        ``BUBBLES`` takes ``probability`` (0 < p <= 1, default 0.3); ``FOULING`` needs
        ``rate_per_h`` (pF/cm per hour, > 0) and takes ``max_offset`` (pF/cm, > 0, default 20);
        ``ValueError`` for a parameter out of range or given to another fault.
        """
        if probability is not None and fault is not Fault.BUBBLES:
            raise ValueError(f"fault {fault.value!r} takes no probability")
        if (rate_per_h is not None or max_offset is not None) and fault is not Fault.FOULING:
            raise ValueError(f"fault {fault.value!r} takes no rate_per_h or max_offset")
        if fault is Fault.BUBBLES:
            p = 0.3 if probability is None else probability
            if not (math.isfinite(p) and 0.0 < p <= 1.0):
                raise ValueError(f"bubbles probability {p!r} outside (0, 1]")
            self.model.bubble_probability = p
            _log.info("emulator.fault_injected", fault=fault.value, probability=p)
        elif fault is Fault.FOULING:
            if rate_per_h is None:
                raise ValueError("fouling needs rate_per_h: pF/cm per hour")
            limit = 20.0 if max_offset is None else max_offset
            self.model.fouling = Ramp(rate_per_h, limit, self.hours())
            _log.info(
                "emulator.fault_injected", fault=fault.value, rate_per_h=rate_per_h, limit=limit
            )
        elif fault is Fault.PROBE_ERROR:
            self.model.failed = True
            _log.info("emulator.fault_injected", fault=fault.value)
        else:
            self.inject_comm(CommFault(fault.value))

    def clear(self, fault: Fault) -> None:
        """Clear one fault, leaving any other injected fault active."""
        if fault is Fault.BUBBLES:
            self.model.bubble_probability = 0.0
        elif fault is Fault.FOULING:
            self.model.fouling = None
        elif fault is Fault.PROBE_ERROR:
            self.model.failed = False
        else:
            self.clear_comm(CommFault(fault.value))
        _log.info("emulator.fault_cleared", fault=fault.value)

    def clear_faults(self) -> None:
        """Clear every injected fault (a cleaned, repaired probe)."""
        for fault in self.active_faults:
            self.clear(fault)

    def measure(self) -> Reading:
        """Take a measurement now (the tick does, every ``interval_s``)."""
        culture = self.culture()
        hours = self.hours()
        permittivity, conductivity = self.model.clean(culture, hours)
        reading = self.model.measure(culture, hours)
        self.truth.append(
            MeasuredCulture(reading.count, hours, culture, permittivity, conductivity)
        )
        self.reading = reading
        return reading

    def _simdata(self) -> list[SimData]:
        blocks = []
        for fields, image in (
            (INPUT_FIELDS, encode_input(self._current())),
            (HOLDING_FIELDS, encode_holding(self.model)),
        ):
            start = fields[0].address
            blocks += [
                SimData(
                    address=field.address,
                    values=image[field.address - start : field.end - start],
                    datatype=DataType.REGISTERS,
                    readonly=not field.writable,
                )
                for field in fields
            ]
        return blocks

    def _current(self) -> Reading:
        return self.reading if self.reading is not None else self.measure()

    def _serve(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | None,
    ) -> ExcCodes | None:
        try:
            check_access(function_code, address, count)
            if set_values is not None:
                apply_write(self.model, address, set_values)
                _log.info("emulator.write_applied", address=address, count=count)
        except RegisterAccessError as exc:
            _log.info(
                "emulator.request_refused",
                function_code=function_code,
                address=address,
                count=count,
                code=int(exc.code),
                reason=str(exc),
            )
            return ExcCodes(int(exc.code))
        for fields, image in (
            (INPUT_FIELDS, encode_input(self._current())),
            (HOLDING_FIELDS, encode_holding(self.model)),
        ):
            offset = fields[0].address - start_address
            registers[offset : offset + len(image)] = image
        return None

    def _started(self) -> None:
        self._next_s = asyncio.get_running_loop().time()
        self._advance()

    def _advance(self) -> None:
        """Measure when a measuring interval is due (the tick, or an access after a late one)."""
        if not self.is_serving:
            return
        now = asyncio.get_running_loop().time()
        # A tick may wake a hair early; a quarter of an interval is "due" enough.
        if now < self._next_s - 0.25 * self.interval_s:
            return
        self.measure()
        # Late ticks (a loaded machine) skip measurements rather than burst to catch up.
        self._next_s = max(self._next_s + self.interval_s, now + 0.5 * self.interval_s)
