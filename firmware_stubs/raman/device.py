"""The emulated spectrometer's firmware: its state and its answer to each OBP request.

For :class:`~firmware_stubs.raman.server.RamanEmulator`, which owns the transports; this
module does no I/O. The one wait it does is the integration time before a spectrum is read
out (``asyncio.sleep``), because that delay is part of how the real device behaves.

Requests and answers (data little-endian; arguments travel as immediate data)::

    0x00000080  get hardware revision        -> u8
    0x00000090  get firmware revision        -> u16 (major << 8 | minor)
    0x00000100  get serial number            -> ASCII serial
    0x00180100  get wavelength coeff. count  -> u8 (4)
    0x00180101  get wavelength coefficient   u8 index -> f32, λ(p) = c0 + c1·p + c2·p² + c3·p³ nm
    0x00110010  set integration time         u32 µs, 1 000 … 10 000 000 (else NACK 6)
    0x00110110  set trigger mode             u8, only 0 = normal (else NACK 6)
    0x00101100  get raw spectrum             -> pixels x u16 counts, after the integration time
    0x00420004  get detector temperature     -> f32 °C
    0x00420010  set TEC enable               u8, 0 or 1
    0x00420011  set TEC setpoint             f32 °C, -40 … 25 (else NACK 6)

Any other type is NACK 2; an argument of the wrong length is NACK 5. A reply has the
RESPONSE flag, echoes the request's message type and ``regarding``, and carries an MD5
checksum unless the device was made with ``checksum=False``. A command that returns no data
is answered with an ACK when the request asked for one (REQUEST_ACK) and not at all
otherwise; a query that asked for an ACK gets its data with the ACK flag set as well. An
error is always answered with a NACK, so a host never waits in vain for a command it got
wrong; a failing composition source is NACK 7 with the HW_EXCEPTION flag.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import Awaitable, Callable

import numpy as np
import structlog

from .obp import ChecksumType, Flag, Frame, FrameError, MessageType, ObpError
from .spectrum import (
    DARK_PIXELS,
    DEFAULT_COMPOSITION,
    Composition,
    SpectrumSynthesizer,
    raman_shift_cm1,
    wavelength_coefficients,
    wavelengths_nm,
)

__all__ = [
    "AMBIENT_C",
    "DEFAULT_INTEGRATION_US",
    "DEFAULT_SERIAL_NUMBER",
    "MAX_INTEGRATION_US",
    "MIN_INTEGRATION_US",
    "RamanDevice",
]

_log = structlog.get_logger(__name__)

DEFAULT_SERIAL_NUMBER = "EMU-RAMAN-0001"
FIRMWARE_REVISION = (2, 3)  # major, minor
HARDWARE_REVISION = 1
MIN_INTEGRATION_US = 1_000
MAX_INTEGRATION_US = 10_000_000
DEFAULT_INTEGRATION_US = 100_000

AMBIENT_C = 22.0
_DEFAULT_SETPOINT_C = -10.0
_SETPOINT_RANGE_C = (-40.0, 25.0)
# A TEC pulls the detector at most this far below ambient; colder setpoints are not reached.
_TEC_MAX_DELTA_K = 35.0
# Settling time constant: a few seconds, so a demo shows the cool-down without a long wait.
_TEC_TIME_CONSTANT_S = 3.0
_TEMPERATURE_NOISE_K = 0.02

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_F32 = struct.Struct("<f")

_Handler = Callable[[bytes], Awaitable[bytes | None]]


class _Refused(Exception):
    """A request the device understood but will not carry out; becomes a NACK."""

    def __init__(self, error: ObpError, reason: str) -> None:
        super().__init__(reason)
        self.error = error


class RamanDevice:
    """One spectrometer: calibration, settings, detector temperature and spectrum read-out.

    ``composition`` is asked for the broth's composition once per spectrum (a process model
    plugs in here); ``clock`` gives seconds for the TEC's settling and defaults to
    :func:`time.monotonic`. Spectra are reproducible for a seed given the same composition,
    integration time and detector temperature.
    """

    def __init__(
        self,
        *,
        pixels: int = 2048,
        laser_nm: float = 785.0,
        composition: Callable[[], Composition] | None = None,
        seed: int = 0,
        checksum: bool = True,
        serial_number: str = DEFAULT_SERIAL_NUMBER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(laser_nm) and 200.0 <= laser_nm <= 1100.0):
            raise ValueError(f"laser_nm must be 200..1100 nm, got {laser_nm}")
        if not (serial_number.isascii() and 0 < len(serial_number) <= 32):
            raise ValueError("serial_number must be 1..32 ASCII characters")
        self.pixels = pixels
        self.laser_nm = laser_nm
        self.serial_number = serial_number
        self.checksum = checksum
        self.coefficients = wavelength_coefficients(pixels)
        self.wavelengths_nm = wavelengths_nm(self.coefficients, pixels)
        if not self.wavelengths_nm[0] > laser_nm:
            raise ValueError(f"laser_nm {laser_nm} must be below the first pixel's wavelength")
        self.shift_cm1 = raman_shift_cm1(self.wavelengths_nm, laser_nm)
        self._synthesizer = SpectrumSynthesizer(self.shift_cm1, DARK_PIXELS)
        self._composition = composition or _constant_default
        #: What fraction of their nominal intensity the Raman bands have now (the laser's
        #: output); ``None`` = full. The emulator's ``laser_decay`` fault sets it.
        self.band_scale: Callable[[], float] | None = None
        self._spectrum_rng = np.random.default_rng(seed)
        # A second stream, so that reading the temperature does not change later spectra.
        self._temperature_rng = np.random.default_rng([seed, 1])
        self._clock = clock
        self.integration_us = DEFAULT_INTEGRATION_US
        self.trigger_mode = 0
        self.tec_enabled = True
        self.tec_setpoint_c = _DEFAULT_SETPOINT_C
        self._detector_c = AMBIENT_C
        self._detector_at = clock()
        self._handlers: dict[int, tuple[int, _Handler]] = {
            MessageType.GET_HARDWARE_REVISION: (0, self._get_hardware_revision),
            MessageType.GET_FIRMWARE_REVISION: (0, self._get_firmware_revision),
            MessageType.GET_SERIAL_NUMBER: (0, self._get_serial_number),
            MessageType.GET_WAVELENGTH_COEFFICIENT_COUNT: (0, self._get_coefficient_count),
            MessageType.GET_WAVELENGTH_COEFFICIENT: (1, self._get_coefficient),
            MessageType.SET_INTEGRATION_TIME_US: (4, self._set_integration_time),
            MessageType.SET_TRIGGER_MODE: (1, self._set_trigger_mode),
            MessageType.GET_RAW_SPECTRUM: (0, self._get_raw_spectrum),
            MessageType.GET_DETECTOR_TEMPERATURE: (0, self._get_detector_temperature),
            MessageType.SET_TEC_ENABLE: (1, self._set_tec_enable),
            MessageType.SET_TEC_SETPOINT: (4, self._set_tec_setpoint),
        }

    def power_on(self) -> None:
        """Start from a warm detector, as after switching the device on; settings stay."""
        self._detector_c = AMBIENT_C
        self._detector_at = self._clock()

    @property
    def detector_c(self) -> float:
        """Detector temperature now (°C), without measurement noise."""
        return self._settle()

    def _settle(self) -> float:
        """Advance the detector temperature to now under the current TEC settings."""
        now = self._clock()
        target = AMBIENT_C
        if self.tec_enabled:
            target = max(self.tec_setpoint_c, AMBIENT_C - _TEC_MAX_DELTA_K)
        decay = math.exp(-max(0.0, now - self._detector_at) / _TEC_TIME_CONSTANT_S)
        self._detector_c = target + (self._detector_c - target) * decay
        self._detector_at = now
        return self._detector_c

    async def handle(self, request: Frame) -> Frame | None:
        """The reply to ``request``, or ``None`` for a command that asked for no ACK."""
        entry = self._handlers.get(request.message_type)
        if entry is None:
            return self.nack(request, ObpError.UNKNOWN_MESSAGE_TYPE)
        length, handler = entry
        if len(request.data) != length:
            return self.nack(request, ObpError.PAYLOAD_LENGTH)
        try:
            data = await handler(request.data)
        except _Refused as exc:
            _log.info(
                "emulator.request_refused",
                message_type=f"{request.message_type:#010x}",
                error=int(exc.error),
                reason=str(exc),
            )
            return self.nack(request, exc.error)
        except Exception:
            # A failing process model must not take the device down; a real device reports
            # an internal fault as a hardware exception.
            _log.exception("emulator.request_failed", message_type=f"{request.message_type:#010x}")
            return self.nack(request, ObpError.NOT_READY, Flag.HW_EXCEPTION)
        requested_ack = bool(request.flags & Flag.REQUEST_ACK)
        if data is None:
            if not requested_ack:
                return None
            return self._reply(request, Flag.RESPONSE | Flag.ACK)
        return self._reply(request, Flag.RESPONSE | (Flag.ACK if requested_ack else 0), data)

    def nack(self, request: Frame | FrameError, error: int, extra: int = 0) -> Frame:
        """A NACK with ``error`` echoing ``request``'s message type and ``regarding``."""
        return self._reply(request, Flag.RESPONSE | Flag.NACK | extra, error=error)

    def _reply(
        self, request: Frame | FrameError, flags: int, data: bytes = b"", error: int = 0
    ) -> Frame:
        return Frame(
            message_type=request.message_type,
            data=data,
            flags=flags,
            error=error,
            regarding=request.regarding,
            checksum_type=ChecksumType.MD5 if self.checksum else ChecksumType.NONE,
        )

    async def _get_hardware_revision(self, _: bytes) -> bytes:
        return _U8.pack(HARDWARE_REVISION)

    async def _get_firmware_revision(self, _: bytes) -> bytes:
        major, minor = FIRMWARE_REVISION
        return struct.pack("<H", major << 8 | minor)

    async def _get_serial_number(self, _: bytes) -> bytes:
        return self.serial_number.encode("ascii")

    async def _get_coefficient_count(self, _: bytes) -> bytes:
        return _U8.pack(len(self.coefficients))

    async def _get_coefficient(self, argument: bytes) -> bytes:
        (index,) = _U8.unpack(argument)
        if index >= len(self.coefficients):
            raise _Refused(ObpError.PAYLOAD_INVALID, f"no wavelength coefficient {index}")
        return _F32.pack(self.coefficients[index])

    async def _set_integration_time(self, argument: bytes) -> None:
        (microseconds,) = _U32.unpack(argument)
        if not MIN_INTEGRATION_US <= microseconds <= MAX_INTEGRATION_US:
            raise _Refused(ObpError.PAYLOAD_INVALID, f"integration time {microseconds} µs")
        self.integration_us = microseconds

    async def _set_trigger_mode(self, argument: bytes) -> None:
        (mode,) = _U8.unpack(argument)
        if mode != 0:
            raise _Refused(ObpError.PAYLOAD_INVALID, f"trigger mode {mode} (only 0 = normal)")
        self.trigger_mode = mode

    async def _get_raw_spectrum(self, _: bytes) -> bytes:
        integration_s = self.integration_us / 1e6
        # The detector integrates first; the reply leaves when the exposure is over.
        await asyncio.sleep(integration_s)
        scale = 1.0 if self.band_scale is None else self.band_scale()
        counts = self._synthesizer.counts(
            self._composition(), integration_s, self.detector_c, self._spectrum_rng, scale
        )
        return counts.tobytes()

    async def _get_detector_temperature(self, _: bytes) -> bytes:
        noise = _TEMPERATURE_NOISE_K * float(self._temperature_rng.standard_normal())
        return _F32.pack(self.detector_c + noise)

    async def _set_tec_enable(self, argument: bytes) -> None:
        (enable,) = _U8.unpack(argument)
        if enable > 1:
            raise _Refused(ObpError.PAYLOAD_INVALID, f"TEC enable {enable} (0 or 1)")
        self._settle()  # up to now under the old setting
        self.tec_enabled = bool(enable)

    async def _set_tec_setpoint(self, argument: bytes) -> None:
        (setpoint,) = _F32.unpack(argument)
        low, high = _SETPOINT_RANGE_C
        if not (math.isfinite(setpoint) and low <= setpoint <= high):
            raise _Refused(ObpError.PAYLOAD_INVALID, f"TEC setpoint {setpoint} °C")
        self._settle()
        self.tec_setpoint_c = setpoint


def _constant_default() -> Composition:
    return DEFAULT_COMPOSITION
