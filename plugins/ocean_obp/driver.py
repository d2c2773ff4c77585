"""The ``ocean_obp`` driver: an Ocean Insight spectrometer speaking OBP over a serial line.

Built for in-line Raman beside a bioreactor: each poll acquires one raw spectrum, publishes it
dark-corrected on the calibrated axis (Raman shift or wavelength), then the detector's TEC
temperature and the integration time in effect. Reconnection belongs to the runtime: any fault
on the link (silence, garbage, a truncated or corrupt reply, a NACK) raises ``InstrumentError``
with a reason naming what happened, the runtime marks the signals bad and calls ``run`` again,
which opens a fresh link.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import NamedTuple

import structlog

from gateway import (
    Channel,
    DeviceIdentity,
    InstrumentError,
    InstrumentIO,
    Output,
    PluginContext,
    PollingDriver,
    Quality,
    SignalKind,
    SpectralAxis,
    Spectrum,
    float32_decimal,
    now_ns,
)

from .obp import (
    GET_FIRMWARE_REVISION,
    GET_HARDWARE_REVISION,
    GET_RAW_SPECTRUM,
    GET_SERIAL_NUMBER,
    GET_TEC_TEMPERATURE,
    GET_WAVELENGTH_COEFFICIENT,
    GET_WAVELENGTH_COEFFICIENT_COUNT,
    SET_INTEGRATION_TIME,
    SET_TRIGGER_MODE,
    ObpNackError,
    message_name,
    unpack_f32,
    unpack_u8,
)
from .options import ObpOptions
from .spectrum import (
    MAX_COEFFICIENTS,
    build_axis,
    check_coefficients,
    dark_corrected,
    decode_counts,
    saturated_pixels,
)
from .transport import ObpLink

__all__ = ["ObpSpectrometer"]

log = structlog.get_logger("plugins.ocean_obp")

_TRIGGER_NORMAL = 0


class _Outputs(NamedTuple):
    spectrum: Output
    integration_time: Output
    detector_temperature: Output


class ObpSpectrometer(PollingDriver):
    """One spectrometer on one serial port (or pyserial URL such as ``socket://host:port``).

    On connect: identify (serial number, and the firmware and hardware revisions where the
    device tells them: reported to the runtime as the device identity), set normal trigger mode
    and the integration time (both acknowledged), read the wavelength calibration. The spectral
    axis is built from the first spectrum's pixel count and rebuilt only when the calibration or
    the pixel count changes. Spectra with saturated pixels are published ``uncertain``; a device
    without a readable TEC temperature (it refuses the request) gets a ``bad`` temperature, not
    a reconnect.
    """

    def __init__(self, options: ObpOptions, context: PluginContext) -> None:
        super().__init__(context)
        self.options = options
        self.serial_number: str | None = None
        """The device's serial number, once connected."""
        self._integration_us = round(options.integration_time_ms * 1000)
        self._link: ObpLink | None = None
        self._coefficients: tuple[float, ...] | None = None
        self._axis: SpectralAxis | None = None
        self._axis_pixels = 0
        self._outputs: _Outputs | None = None
        self._io: InstrumentIO | None = None
        self._log = log.bind(instrument=context.id, port=options.port)

    def channels(self) -> Sequence[Channel]:
        axis = "Raman shift (cm-1)" if self.options.axis == "raman_shift" else "wavelength (nm)"
        dark = (
            f", minus the mean of {self.options.dark_pixels} masked pixels"
            if self.options.dark_pixels
            else ""
        )
        return [
            Channel(
                "spectrum",
                "{counts}",
                kind=SignalKind.SPECTRUM,
                description=f"Detector counts per pixel{dark}, on the {axis} axis",
            ),
            Channel("integration_time", "ms", description="Detector integration time in effect"),
            Channel("detector_temperature", "Cel", description="Detector (TEC) temperature"),
        ]

    @property
    def axis(self) -> SpectralAxis | None:
        """The spectral axis in use (``None`` before the first spectrum)."""
        return self._axis

    async def connect(self) -> None:
        o = self.options
        link = ObpLink(
            o.port,
            baudrate=o.baudrate,
            write_timeout_s=o.timeout_s,
            checksum=o.checksum == "md5",
            name=f"obp-{self.context.id}",
        )
        # Owned by the driver from the start: PollingDriver.run calls close() after a failed
        # connect too, which stops the link's worker thread.
        self._link = link
        await link.open()
        self.device_identity = None
        serial_number = await self._identify(link)
        identity = DeviceIdentity(
            serial_number=serial_number or None,
            firmware_revision=await self._revision(link, GET_FIRMWARE_REVISION),
            hardware_revision=await self._revision(link, GET_HARDWARE_REVISION),
        )
        await link.request(
            SET_TRIGGER_MODE, bytes([_TRIGGER_NORMAL]), timeout_s=o.timeout_s, request_ack=True
        )
        await link.request(
            SET_INTEGRATION_TIME,
            struct.pack("<I", self._integration_us),
            timeout_s=o.timeout_s,
            request_ack=True,
        )
        coefficients = await self._read_coefficients(link)
        self.serial_number = serial_number
        self.device_identity = identity
        if coefficients != self._coefficients:
            self._coefficients = coefficients
            self._axis = None
        self._log.info(
            "obp.connected",
            serial_number=serial_number,
            firmware_revision=identity.firmware_revision,
            hardware_revision=identity.hardware_revision,
            wavelength_coefficients=coefficients,
            integration_time_ms=self._integration_us / 1000,
        )

    async def _identify(self, link: ObpLink) -> str:
        reply = await link.request(GET_SERIAL_NUMBER, timeout_s=self.options.timeout_s)
        return reply.data.split(b"\0", 1)[0].decode("ascii", "replace").strip()

    async def _revision(self, link: ObpLink, message_type: int) -> str | None:
        """The firmware (u16: major byte, minor byte) or hardware (u8) revision; ``None`` for a
        device that does not tell (it refuses the request: not a reason to reconnect)."""
        try:
            reply = await link.request(message_type, timeout_s=self.options.timeout_s)
        except ObpNackError:
            return None
        what = message_name(message_type)
        if message_type == GET_HARDWARE_REVISION:
            return str(unpack_u8(reply, what))
        if len(reply.data) != 2:
            raise InstrumentError(f"{what}: expected 2 bytes, got {len(reply.data)}")
        return f"{reply.data[1]}.{reply.data[0]}"

    async def _read_coefficients(self, link: ObpLink) -> tuple[float, ...]:
        timeout_s = self.options.timeout_s
        what = message_name(GET_WAVELENGTH_COEFFICIENT_COUNT)
        count = unpack_u8(
            await link.request(GET_WAVELENGTH_COEFFICIENT_COUNT, timeout_s=timeout_s), what
        )
        if not 1 <= count <= MAX_COEFFICIENTS:
            # Checked before asking for each one: a corrupt count must not cost 255 requests.
            raise InstrumentError(
                f"device reports {count} wavelength coefficients, expected 1 to {MAX_COEFFICIENTS}"
            )
        coefficients = []
        for index in range(count):
            reply = await link.request(
                GET_WAVELENGTH_COEFFICIENT, bytes([index]), timeout_s=timeout_s
            )
            coefficients.append(unpack_f32(reply, f"get wavelength coefficient {index}"))
        return check_coefficients(coefficients)

    async def poll(self, io: InstrumentIO) -> None:
        link = self._link
        if link is None:
            raise InstrumentError(f"{self.options.port}: not connected")
        outputs = self._outputs_for(io)
        o = self.options
        requested = now_ns()
        reply = await link.request(
            GET_RAW_SPECTRUM, timeout_s=o.integration_time_ms / 1000 + o.timeout_s
        )
        counts = decode_counts(reply.data)
        spectrum = Spectrum(dark_corrected(counts, o.dark_pixels), self._axis_for(counts.size))
        saturated = saturated_pixels(counts)
        if saturated:
            outputs.spectrum.publish(
                spectrum, requested, Quality.UNCERTAIN, f"saturated: {saturated} pixels"
            )
        else:
            outputs.spectrum.publish(spectrum, requested)
        outputs.integration_time.publish(self._integration_us / 1000, requested)

        asked = now_ns()
        what = message_name(GET_TEC_TEMPERATURE)
        try:
            reply = await link.request(GET_TEC_TEMPERATURE, timeout_s=o.timeout_s)
        except ObpNackError as exc:
            # The device answers but has no temperature to give (e.g. no TEC): that is a fact
            # about the reading, not a broken link.
            outputs.detector_temperature.publish(None, asked, Quality.BAD, str(exc))
            return
        celsius = unpack_f32(reply, what)
        if math.isfinite(celsius):
            # A float32 on the wire: publish the decimal the spectrometer meant.
            outputs.detector_temperature.publish(float32_decimal(celsius), asked)
        else:
            outputs.detector_temperature.publish(
                None, asked, Quality.BAD, f"detector temperature reads {celsius}"
            )

    def _outputs_for(self, io: InstrumentIO) -> _Outputs:
        if self._outputs is None or self._io is not io:
            self._io = io
            self._outputs = _Outputs(
                io.output("spectrum"),
                io.output("integration_time"),
                io.output("detector_temperature"),
            )
        return self._outputs

    def _axis_for(self, pixel_count: int) -> SpectralAxis:
        """The axis for a spectrum of ``pixel_count`` pixels; built only when that changes."""
        axis = self._axis
        if axis is not None and self._axis_pixels == pixel_count:
            return axis
        if self._coefficients is None:
            raise InstrumentError(f"{self.options.port}: no wavelength calibration read")
        o = self.options
        axis = build_axis(
            self._coefficients,
            pixel_count,
            dark_pixels=o.dark_pixels,
            kind=o.axis,
            laser_nm=o.laser_wavelength_nm,
        )
        self._axis, self._axis_pixels = axis, pixel_count
        self._log.info("obp.axis", pixels=pixel_count, axis=repr(axis))
        return axis

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()
