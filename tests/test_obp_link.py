"""The ``ocean_obp`` link and driver against a scripted device, over loopback TCP and a pty.

The device here is a few dozen lines written for these tests — deliberately neither the codec
under test nor the emulator — so that it can answer exactly wrong on demand: silence, NACKs,
garbage, a bad MD5, a truncated frame, a stray frame, a hang-up. Its frames are packed with
``struct`` straight from the protocol layout.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import time
import tty
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import pytest_asyncio
from conftest import connected, plan_for, running, stored_by_signal, wait_for
from structlog.testing import capture_logs

from gateway import DeviceIdentity, InstrumentError, PluginContext, Quality, Spectrum
from gateway.testing import RecordingIO
from plugins.ocean_obp.driver import ObpSpectrometer
from plugins.ocean_obp.obp import (
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
)
from plugins.ocean_obp.options import ObpOptions
from plugins.ocean_obp.transport import ObpLink

HEADER = struct.Struct("<HHHHII6sBB16sI")
RESPONSE, ACK, REQUEST_ACK, NACK = 0x1, 0x2, 0x4, 0x8
COEFFICIENTS = (790.0, 0.1, -1e-6)
SERIAL = b"QE-TEST-0042\0\0"


def pack_frame(
    msg_type: int, regarding: int, data: bytes = b"", *, flags: int = RESPONSE, error: int = 0,
    md5: bool = False,
) -> bytes:  # fmt: skip
    immediate, payload = (data, b"") if len(data) <= 16 else (b"", data)
    head = HEADER.pack(
        0xC0C1, 0x1100, flags, error, msg_type, regarding, bytes(6), int(md5), len(immediate),
        immediate.ljust(16, b"\0"), len(payload) + 20,
    )  # fmt: skip
    body = head + payload
    checksum = hashlib.md5(body).digest() if md5 else bytes(16)
    return body + checksum + struct.pack("<I", 0xC2C3C4C5)


class Request(NamedTuple):
    msg_type: int
    flags: int
    checksum_type: int
    data: bytes


class HangUp(Exception):
    pass


Send = Callable[[bytes], Awaitable[None]]


class ScriptedSpectrometer:
    """Answers OBP requests like a small Raman spectrometer; ``faults`` maps a message type to
    what goes wrong with its reply."""

    def __init__(self, pixels: int = 1024, md5_replies: bool = False) -> None:
        self.counts = (1000 + np.arange(pixels) % 50).astype("<u2")
        self.coefficients: tuple[float, ...] = COEFFICIENTS
        self.temperature = -10.0
        self.md5_replies = md5_replies
        self.faults: dict[int, str] = {}
        self.echo_regarding = True  # False: answer 0, as firmware that ignores the field may
        self.requests: list[Request] = []
        self.regardings: list[int] = []
        self.integration_us = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> ScriptedSpectrometer:
        self._server = await asyncio.start_server(self._serve_tcp, "127.0.0.1", 0)
        self.url = f"socket://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        try:
            await self.serve(reader, send)
        finally:
            writer.close()

    async def serve(self, reader: asyncio.StreamReader, send: Send) -> None:
        """Answer requests from ``reader`` until the host goes away (or a hang-up fault)."""
        try:
            while True:
                head = await reader.readexactly(HEADER.size)
                fields = HEADER.unpack(head)
                rest = await reader.readexactly(fields[10])
                flags, msg_type, regarding = fields[2], fields[4], fields[5]
                checksum_type, immediate_len = fields[7], fields[8]
                data = fields[9][:immediate_len] if immediate_len else rest[:-20]
                if checksum_type == 1:
                    assert rest[-20:-4] == hashlib.md5(head + rest[:-20]).digest()
                self.requests.append(Request(msg_type, flags, checksum_type, data))
                self.regardings.append(regarding)
                await send(await self.answer(msg_type, regarding, flags, data))
        except (asyncio.IncompleteReadError, ConnectionError, HangUp, OSError):
            pass

    async def answer(self, msg_type: int, regarding: int, flags: int, data: bytes) -> bytes:
        if not self.echo_regarding:
            regarding = 0
        fault = self.faults.get(msg_type)
        if fault == "silence":
            return b""
        if fault == "hangup":
            raise HangUp
        if fault is not None and fault.startswith("nack"):
            return pack_frame(msg_type, regarding, flags=RESPONSE | NACK, error=int(fault[4:]))
        if fault == "garbage":
            return bytes(range(0x20, 0x80)) * 3
        if msg_type in UNKNOWN_TO_IT:
            # As a real device answers a message type it does not implement (NACK 2).
            return pack_frame(msg_type, regarding, flags=RESPONSE | NACK, error=2)
        reply = self.reply(msg_type, regarding, flags, data)
        if msg_type == GET_RAW_SPECTRUM:
            await asyncio.sleep(self.integration_us / 1e6)  # the device answers after exposure
        if fault == "bad_md5":
            damaged = bytearray(
                pack_frame(msg_type, regarding, self.payload(msg_type, data), md5=True)
            )
            damaged[50] ^= 0x04
            return bytes(damaged)
        if fault == "truncated":
            return reply[: len(reply) // 2]
        if fault == "unrelated":
            return pack_frame(msg_type, regarding ^ 0x5A5A5A5A, b"old") + reply
        return reply

    def payload(self, msg_type: int, data: bytes) -> bytes:
        if msg_type == GET_SERIAL_NUMBER:
            return SERIAL
        if msg_type == GET_WAVELENGTH_COEFFICIENT_COUNT:
            return bytes([len(self.coefficients)])
        if msg_type == GET_WAVELENGTH_COEFFICIENT:
            return struct.pack("<f", self.coefficients[data[0]])
        if msg_type == GET_RAW_SPECTRUM:
            return self.counts.tobytes()
        if msg_type == GET_TEC_TEMPERATURE:
            return struct.pack("<f", self.temperature)
        raise AssertionError(f"unexpected message 0x{msg_type:08x}")

    def reply(self, msg_type: int, regarding: int, flags: int, data: bytes) -> bytes:
        if msg_type in (SET_INTEGRATION_TIME, SET_TRIGGER_MODE):
            if msg_type == SET_INTEGRATION_TIME:
                (self.integration_us,) = struct.unpack("<I", data)
            return (
                pack_frame(msg_type, regarding, flags=RESPONSE | ACK)
                if flags & REQUEST_ACK
                else b""
            )
        return pack_frame(msg_type, regarding, self.payload(msg_type, data), md5=self.md5_replies)


# This device tells no revisions (the emulator in firmware_stubs/raman does).
UNKNOWN_TO_IT = (GET_FIRMWARE_REVISION, GET_HARDWARE_REVISION)


def make_driver(port: str, tmp_path: Path, **options: Any) -> ObpSpectrometer:
    config = {
        "port": port, "laser_wavelength_nm": 785.0, "integration_time_ms": 5, "timeout_s": 0.3,
        **options,
    }  # fmt: skip
    return ObpSpectrometer(
        ObpOptions.model_validate(config), PluginContext("raman", tmp_path, 0.01)
    )


@pytest_asyncio.fixture
async def device() -> AsyncIterator[ScriptedSpectrometer]:
    async with ScriptedSpectrometer() as spectrometer:
        yield spectrometer


# -- a healthy device -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_connect_then_poll_publishes_spectrum_integration_time_and_temperature(
    tmp_path: Path, device: ScriptedSpectrometer
) -> None:
    driver = make_driver(device.url, tmp_path, dark_pixels=8)
    io = RecordingIO(driver, "raman")
    async with connected(driver):
        before = time.time_ns()
        await driver.poll(io)
        after = time.time_ns()
    assert driver.serial_number == "QE-TEST-0042"
    # Revisions asked for, refused (this device does not tell them): not an error.
    assert [r.msg_type for r in device.requests[1:3]] == list(UNKNOWN_TO_IT)
    assert driver.device_identity == DeviceIdentity(serial_number="QE-TEST-0042")
    setup = [(r.msg_type, r.data, r.flags) for r in device.requests[3:5]]
    assert setup == [
        (SET_TRIGGER_MODE, b"\x00", REQUEST_ACK),
        (SET_INTEGRATION_TIME, struct.pack("<I", 5000), REQUEST_ACK),
    ]
    assert all(r.checksum_type == 0 for r in device.requests)

    [spectrum] = io.samples("spectrum")
    assert isinstance(spectrum.value, Spectrum)
    assert spectrum.quality is Quality.GOOD and spectrum.reason is None
    assert spectrum.source_ts is not None and before <= spectrum.source_ts <= after
    counts = device.counts.astype(np.float64)
    np.testing.assert_allclose(spectrum.value.values, counts[8:] - counts[:8].mean(), rtol=1e-6)
    axis = spectrum.value.axis
    assert axis.unit == "cm-1" and len(axis) == 1016
    p = np.arange(8, 1024)
    c = np.array(COEFFICIENTS, dtype=np.float32).astype(np.float64)  # sent as float32
    np.testing.assert_allclose(axis.values, 1e7 / 785 - 1e7 / (c[0] + c[1] * p + c[2] * p**2))
    assert [
        (s.value, s.source_ts, s.quality, s.reason) for s in io.samples("integration_time")
    ] == [(5.0, spectrum.source_ts, Quality.GOOD, None)]
    [temperature] = io.samples("detector_temperature")
    assert temperature.value == -10.0 and temperature.quality is Quality.GOOD
    assert temperature.source_ts is not None and temperature.source_ts >= spectrum.source_ts


@pytest.mark.asyncio
async def test_saturated_pixels_make_the_spectrum_uncertain(
    tmp_path: Path, device: ScriptedSpectrometer
) -> None:
    device.counts[100:103] = 65535
    driver = make_driver(device.url, tmp_path, axis="wavelength")
    io = RecordingIO(driver, "raman")
    async with connected(driver):
        await driver.poll(io)
    [spectrum] = io.samples("spectrum")
    assert spectrum.quality is Quality.UNCERTAIN
    assert spectrum.reason == "saturated: 3 pixels"
    assert spectrum.value.axis.unit == "nm" and len(spectrum.value) == 1024


@pytest.mark.asyncio
async def test_axis_is_built_once_and_rebuilt_when_the_pixel_count_changes(
    tmp_path: Path, device: ScriptedSpectrometer
) -> None:
    driver = make_driver(device.url, tmp_path)
    io = RecordingIO(driver, "raman")
    async with connected(driver):
        await driver.poll(io)
        await driver.poll(io)
        device.counts = device.counts[:512].copy()
        await driver.poll(io)
    first, second, third = (p.value.axis for p in io.samples("spectrum"))
    assert first is second
    assert len(third) == 512 and third.values[0] == first.values[0]


@pytest.mark.asyncio
async def test_md5_both_ways(tmp_path: Path) -> None:
    async with ScriptedSpectrometer(md5_replies=True) as device:
        driver = make_driver(device.url, tmp_path, checksum="md5")
        io = RecordingIO(driver, "raman")
        async with connected(driver):
            await driver.poll(io)
    assert all(r.checksum_type == 1 for r in device.requests)  # and the device checked them
    assert io.samples("spectrum")[0].quality is Quality.GOOD


@pytest.mark.asyncio
async def test_run_connects_publishes_and_closes_when_cancelled(
    tmp_path: Path, device: ScriptedSpectrometer
) -> None:
    driver = make_driver(device.url, tmp_path)
    io = RecordingIO(driver, "raman")
    task = asyncio.create_task(driver.run(io), name="test.obp.run")
    await wait_for(lambda: len(io.samples("spectrum")) >= 3, what="three spectra")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert io.connects == 1
    assert len(io.samples("spectrum")) >= 3
    # The thread guard (conftest) checks that the link's worker is gone.


# -- faults -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("nack7", r"^device NACK: device not ready \(7\), in reply to get raw spectrum$"),
        ("silence", r"^no reply to get raw spectrum within 0\.305 s$"),
        ("garbage", r"^no reply to get raw spectrum within 0\.305 s \(\d+ bytes of garbage\)$"),
        ("bad_md5", r"^bad MD5 checksum in reply to get raw spectrum$"),
        ("truncated", r"^no reply to get raw spectrum .*\(truncated frame: \d+ of 2112 bytes\)$"),
        ("hangup", r"^socket://127\.0\.0\.1:\d+: get raw spectrum failed: .*disconnected"),
    ],
)
async def test_a_fault_raises_a_reason_and_a_reconnect_recovers(
    tmp_path: Path, device: ScriptedSpectrometer, fault: str, reason: str
) -> None:
    driver = make_driver(device.url, tmp_path)
    io = RecordingIO(driver, "raman")
    device.faults[GET_RAW_SPECTRUM] = fault
    async with connected(driver):
        with pytest.raises(InstrumentError, match=reason):
            await driver.poll(io)
    assert io.samples("spectrum") == []
    # What the runtime does next: run the driver again, which opens a fresh link.
    del device.faults[GET_RAW_SPECTRUM]
    async with connected(driver):
        await driver.poll(io)
    assert io.samples("spectrum")[0].quality is Quality.GOOD


@pytest.mark.asyncio
async def test_a_device_without_temperature_gets_a_bad_temperature_not_a_reconnect(
    tmp_path: Path, device: ScriptedSpectrometer
) -> None:
    device.faults[GET_TEC_TEMPERATURE] = "nack12"
    driver = make_driver(device.url, tmp_path)
    io = RecordingIO(driver, "raman")
    async with connected(driver):
        await driver.poll(io)
    assert io.samples("spectrum")[0].quality is Quality.GOOD
    [temperature] = io.samples("detector_temperature")
    assert temperature.value is None and temperature.quality is Quality.BAD
    assert temperature.reason is not None
    assert temperature.reason.startswith("device NACK: information does not exist (12)")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"faults": {SET_INTEGRATION_TIME: "nack6"}}, r"payload data invalid \(6\)"),
        ({"faults": {SET_TRIGGER_MODE: "silence"}}, "no reply to set trigger mode within 0.3 s"),
        ({"coefficients": ()}, "device reports 0 wavelength coefficients"),
        ({"coefficients": (790.0, float("nan"))}, "wavelength coefficient 1 is nan"),
    ],
)
async def test_a_failed_connect_raises_and_leaves_no_thread(
    tmp_path: Path, device: ScriptedSpectrometer, setup: dict[str, Any], reason: str
) -> None:
    # (the autouse guard fails the test if the session leaves the link's thread behind)
    for name, value in setup.items():
        setattr(device, name, value)
    driver = make_driver(device.url, tmp_path)
    with pytest.raises(InstrumentError, match=reason):
        async with connected(driver):
            pass


@pytest.mark.asyncio
async def test_a_laser_above_the_pixels_fails_at_the_first_spectrum(
    tmp_path: Path, device: ScriptedSpectrometer
) -> None:
    driver = make_driver(device.url, tmp_path, laser_wavelength_nm=800.0)
    async with connected(driver):
        with pytest.raises(InstrumentError, match="laser_wavelength_nm 800 is not below"):
            await driver.poll(RecordingIO(driver, "raman"))


@pytest.mark.asyncio
@pytest.mark.parametrize("port", ["/nonexistent/ttyOBP0", "socket://127.0.0.1:1", "nope://x"])
async def test_an_unreachable_port_is_an_instrument_error_naming_it(
    tmp_path: Path, port: str
) -> None:
    driver = make_driver(port, tmp_path)
    with pytest.raises(InstrumentError, match=f"cannot open {port}"):
        async with connected(driver):
            pass


# -- the link ---------------------------------------------------------------------------------


@asynccontextmanager
async def open_link(url: str) -> AsyncIterator[ObpLink]:
    link = ObpLink(url, baudrate=115200, write_timeout_s=1.0, name="test-obp")
    try:
        await link.open()
        yield link
    finally:
        await link.close()


@pytest.mark.asyncio
async def test_unrelated_frames_are_skipped_and_counted(device: ScriptedSpectrometer) -> None:
    device.faults[GET_SERIAL_NUMBER] = "unrelated"
    async with open_link(device.url) as link:
        reply = await link.request(GET_SERIAL_NUMBER, timeout_s=1.0)
        assert reply.data == SERIAL
        assert link.unrelated_frames == 1


async def in_flight(device: ScriptedSpectrometer, msg_type: int) -> None:
    """Return once the device has received a request of ``msg_type``."""
    await wait_for(lambda: any(r.msg_type == msg_type for r in device.requests), within=5)


@pytest.mark.asyncio
async def test_a_cancelled_request_leaves_the_link_usable(device: ScriptedSpectrometer) -> None:
    device.faults[GET_RAW_SPECTRUM] = "silence"
    async with open_link(device.url) as link:
        waiting = asyncio.create_task(
            link.request(GET_RAW_SPECTRUM, timeout_s=30.0), name="test.obp.request"
        )
        await in_flight(device, GET_RAW_SPECTRUM)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        started = time.monotonic()
        reply = await link.request(GET_SERIAL_NUMBER, timeout_s=2.0)
        # The worker gave the cancelled request up within a read timeout, not after 30 s.
        assert time.monotonic() - started < 1.0
        assert reply.data == SERIAL


@pytest.mark.asyncio
async def test_close_stops_a_request_in_progress_promptly(device: ScriptedSpectrometer) -> None:
    device.faults[GET_RAW_SPECTRUM] = "silence"
    link = ObpLink(device.url, baudrate=115200, write_timeout_s=1.0, name="test-obp")
    await link.open()
    waiting = asyncio.create_task(
        link.request(GET_RAW_SPECTRUM, timeout_s=30.0), name="test.obp.request"
    )
    await in_flight(device, GET_RAW_SPECTRUM)
    started = time.monotonic()
    await link.close()
    assert time.monotonic() - started < 1.0
    with pytest.raises(InstrumentError, match="abandoned"):
        await waiting
    with pytest.raises(InstrumentError, match="not open"):
        await link.request(GET_SERIAL_NUMBER, timeout_s=1.0)


@pytest.mark.asyncio
async def test_nack_reaches_the_caller_with_its_number(device: ScriptedSpectrometer) -> None:
    device.faults[GET_SERIAL_NUMBER] = "nack2"
    async with open_link(device.url) as link:
        with pytest.raises(ObpNackError, match=r"unknown message type \(2\)") as caught:
            await link.request(GET_SERIAL_NUMBER, timeout_s=1.0)
    assert caught.value.error == 2


@pytest.mark.asyncio
async def test_the_event_loop_keeps_running_while_a_reply_is_awaited(
    device: ScriptedSpectrometer,
) -> None:
    device.faults[GET_RAW_SPECTRUM] = "silence"
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick(), name="test.obp.ticker")
    try:
        async with open_link(device.url) as link:
            with pytest.raises(InstrumentError, match="no reply"):
                await link.request(GET_RAW_SPECTRUM, timeout_s=0.3)
    finally:
        ticker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ticker
    assert ticks >= 15


# -- a real serial device path: a pseudo-terminal ---------------------------------------------


class PtyLine(NamedTuple):
    path: str
    """The serial side, as the driver opens it (``/dev/pts/N``)."""
    hang_up: Callable[[], Awaitable[None]]
    """Close the device side (both descriptors of the master), as an unplugged adapter would
    vanish; returns once they are closed."""


@asynccontextmanager
async def pty_device(device: ScriptedSpectrometer) -> AsyncIterator[PtyLine]:
    """Serve ``device`` on the master side of a pty; yield the serial side's path."""
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line discipline: a plain byte pipe like a USB serial port
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", buffering=0)
    )
    write_transport, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(os.dup(master), "wb", buffering=0)
    )

    async def send(data: bytes) -> None:
        write_transport.write(data)

    async def hang_up() -> None:
        pipes = [t.get_extra_info("pipe") for t in (read_transport, write_transport)]
        read_transport.close()  # each transport closes its own descriptor, a turn of the loop later
        write_transport.close()
        await wait_for(lambda: all(pipe.closed for pipe in pipes), what="the device side closed")

    serving = asyncio.create_task(device.serve(reader, send), name="test.obp.pty")
    try:
        yield PtyLine(os.ttyname(slave), hang_up)
    finally:
        serving.cancel()  # it may have ended already: a hung-up device stops serving
        await asyncio.wait({serving})
        await hang_up()
        os.close(slave)
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_driver_over_a_pty(tmp_path: Path) -> None:
    device = ScriptedSpectrometer(pixels=2048)
    async with pty_device(device) as line:
        driver = make_driver(line.path, tmp_path, timeout_s=1.0)
        io = RecordingIO(driver, "raman")
        async with connected(driver):
            await driver.poll(io)
    [spectrum] = io.samples("spectrum")
    assert len(spectrum.value) == 2048
    np.testing.assert_array_equal(spectrum.value.values, device.counts.astype(np.float32))


@pytest.mark.asyncio
async def test_a_device_that_does_not_echo_regarding_still_works(
    tmp_path: Path, device: ScriptedSpectrometer
) -> None:
    device.echo_regarding = False
    driver = make_driver(device.url, tmp_path)
    io = RecordingIO(driver, "raman")
    async with connected(driver):
        await driver.poll(io)
    assert io.samples("spectrum")[0].quality is Quality.GOOD


@pytest.mark.asyncio
async def test_transaction_ids_differ_between_links(device: ScriptedSpectrometer) -> None:
    # A late reply to the previous link must not match the next link's first request.
    ids = []
    for _ in range(2):
        async with open_link(device.url) as link:
            await link.request(GET_SERIAL_NUMBER, timeout_s=1.0)
        ids.append(device.regardings[-1])
    assert ids[0] != ids[1]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("when", "why"),
    [
        ("between requests", {"Input/output error"}),
        # Linux reads a pty whose master is gone as end of file (pyserial: readable, no data);
        # a kernel that answers EIO instead is the same loss.
        ("during a request", {"device disconnected", "Input/output error"}),
    ],
)
async def test_a_vanished_serial_port_is_named_as_lost(
    tmp_path: Path, when: str, why: set[str]
) -> None:
    # Between requests pyserial's input flush raises termios.error (no OSError); during one,
    # the read fails. Either way: the port lost, by name, for the runtime to reconnect.
    device = ScriptedSpectrometer()
    async with pty_device(device) as line:
        driver = make_driver(line.path, tmp_path, timeout_s=5.0)
        async with connected(driver):
            io = RecordingIO(driver, "raman")
            await driver.poll(io)
            if when == "between requests":
                await line.hang_up()
                polled = asyncio.create_task(driver.poll(io), name="test.obp.poll")
            else:
                device.faults[GET_RAW_SPECTRUM] = "silence"
                asked = len(device.requests)
                polled = asyncio.create_task(driver.poll(io), name="test.obp.poll")
                await wait_for(lambda: len(device.requests) > asked, what="the request")
                await line.hang_up()
            with pytest.raises(InstrumentError) as caught:
                await polled
    assert str(caught.value) in {f"serial port {line.path} lost: {text}" for text in why}
    assert len(io.samples("spectrum")) == 1


@pytest.mark.asyncio
async def test_in_the_runtime_a_lost_port_is_a_named_reason_not_a_crash(tmp_path: Path) -> None:
    device = ScriptedSpectrometer()
    async with pty_device(device) as line:
        plan = plan_for(tmp_path, instruments=[{
            "id": "raman", "driver": "ocean_obp", "poll_interval_s": 0.05,
            "backoff": {"initial_s": 0.05, "max_s": 0.2},
            "options": {"port": line.path, "laser_wavelength_nm": 785.0,
                        "integration_time_ms": 5, "timeout_s": 1.0},
        }])  # fmt: skip
        with capture_logs() as logs:
            async with running(plan) as (gateway, _):
                runner = await wait_for(lambda: gateway.runners and gateway.runners[0])
                await wait_for(lambda: runner.sessions == 1, what="a first session")
                await line.hang_up()
                await wait_for(lambda: runner.failures >= 2, what="a loss and a reconnect try")
    lost = f"serial port {line.path} lost: Input/output error"
    down = [e for e in logs if e["event"] == "instrument.down"]
    assert down[0]["reason"] == lost and down[0]["log_level"] == "warning"
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    assert not [e for e in logs if "exc_info" in e or "exception" in e]
    # Reconnect as for any loss: the next tries open the port again (it is gone for good here).
    assert all(e["reason"].startswith(f"cannot open {line.path}") for e in down[1:])
    spectra = stored_by_signal(tmp_path / "store.sqlite")["reactor1/raman/spectrum"]
    assert spectra[0].quality is Quality.GOOD
    assert next(s.reason for s in spectra if s.quality is Quality.BAD) == f"unreachable: {lost}"
