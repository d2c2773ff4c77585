"""The emulated Raman spectrometer on the wire: a real pseudo-terminal and TCP, via pyserial.

The OBP client here is a few lines of ``struct`` written for these tests alone: it shares no
code with the emulator's framer nor with the gateway's driver, so it is an independent check
of what the emulator puts on the wire. Blocking pyserial calls run in ``asyncio.to_thread`` so
the emulator's event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import pytest_asyncio
import serial
import structlog.testing
from pydantic import ValidationError

from firmware_stubs.raman import Composition, Fault, RamanDevice, RamanEmulator
from firmware_stubs.raman.obp import Frame
from firmware_stubs.raman.plugin import RamanOptions, ScheduledRaman, factory
from gateway import GatewayError, PluginContext, PluginKind, Registry

# --------------------------------------------------------------------------- test-only client

HEADER = struct.Struct("<HHHHII6sBB16sI")
START = b"\xc1\xc0"
FOOTER_MAGIC = b"\xc5\xc4\xc3\xc2"

GET_SERIAL = 0x00000100
GET_COEFF_COUNT = 0x00180100
GET_COEFF = 0x00180101
SET_INTEGRATION = 0x00110010
SET_TRIGGER = 0x00110110
GET_SPECTRUM = 0x00101100
GET_TEMPERATURE = 0x00420004
SET_TEC_ENABLE = 0x00420010
SET_TEC_SETPOINT = 0x00420011

RESPONSE, ACK, REQUEST_ACK, NACK = 0x1, 0x2, 0x4, 0x8


def request(
    message_type: int,
    data: bytes = b"",
    *,
    flags: int = 0,
    regarding: int = 0,
    version: int = 0x1100,
    checksum_type: int = 1,
    corrupt_checksum: bool = False,
) -> bytes:
    """One host request: ≤16 bytes of data as immediate data, MD5 checksum by default."""
    immediate, payload = (data, b"") if len(data) <= 16 else (b"", data)
    head = HEADER.pack(
        0xC0C1,
        version,
        flags,
        0,
        message_type,
        regarding,
        bytes(6),
        checksum_type,
        len(immediate),
        immediate,
        len(payload) + 20,
    )
    checksum = hashlib.md5(head + payload).digest() if checksum_type == 1 else bytes(16)
    if corrupt_checksum:
        checksum = bytes(b ^ 0x55 for b in checksum)
    return head + payload + checksum + FOOTER_MAGIC


@dataclass
class Reply:
    flags: int
    error: int
    message_type: int
    regarding: int
    checksum_type: int
    data: bytes
    checksum_ok: bool


class Client:
    """Blocking OBP client over a pyserial port (pty or socket://); scans for C1 C0 and checks
    the footer magic, so garbage and truncated replies in the stream are stepped over."""

    def __init__(self, port: serial.SerialBase) -> None:
        self.port = port
        self.buffer = bytearray()

    def send(self, frame: bytes) -> None:
        self.port.write(frame)
        self.port.flush()

    def reply(self, timeout: float = 3.0) -> Reply | None:
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            if time.monotonic() > deadline:
                return None
            self.buffer += self.port.read(max(1, self.port.in_waiting))

    def query(self, frame: bytes, timeout: float = 3.0) -> Reply:
        self.send(frame)
        answer = self.reply(timeout)
        assert answer is not None, "no reply"
        return answer

    def raw(self, within: float, until: Callable[[bytes], bool] = lambda _: False) -> bytes:
        """What arrives within ``within`` seconds, or until ``until(bytes so far)`` holds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not until(bytes(self.buffer)):
            self.buffer += self.port.read(max(1, self.port.in_waiting))
        data, self.buffer = bytes(self.buffer), bytearray()
        return data

    def _parse(self) -> Reply | None:
        while True:
            start = self.buffer.find(START)
            if start < 0 or len(self.buffer) - start < HEADER.size:
                return None
            del self.buffer[:start]
            fields = HEADER.unpack_from(self.buffer)
            version, remaining = fields[1], fields[10]
            if version != 0x1100 or not 20 <= remaining <= 70_000:
                del self.buffer[:2]
                continue
            total = HEADER.size + remaining
            if len(self.buffer) < total:
                return None
            if self.buffer[total - 4 : total] != FOOTER_MAGIC:
                del self.buffer[:2]
                continue
            frame = bytes(self.buffer[:total])
            del self.buffer[:total]
            _, _, flags, error, mtype, regarding, _, ctype, ilen, imm, _ = fields
            digest = hashlib.md5(frame[:-20]).digest()
            return Reply(
                flags=flags,
                error=error,
                message_type=mtype,
                regarding=regarding,
                checksum_type=ctype,
                data=imm[:ilen] if ilen else frame[44:-20],
                checksum_ok=ctype == 0 or frame[-20:-4] == digest,
            )


def open_port(emulator: RamanEmulator) -> serial.SerialBase:
    if emulator.transport == "pty":
        return serial.Serial(emulator.device_path, timeout=0.02)
    return serial.serial_for_url(emulator.endpoint, timeout=0.02)


#: Tests marked with this run over both transports; the others over the pty only, because
#: pyserial's socket:// close() sleeps 0.3 s on purpose and the suite must stay fast.
both_transports = pytest.mark.parametrize("raman", ["pty", "tcp"], indirect=True)


@pytest_asyncio.fixture
async def raman(request: pytest.FixtureRequest) -> AsyncIterator[RamanEmulator]:
    transport: Literal["pty", "tcp"] = "tcp" if getattr(request, "param", "") == "tcp" else "pty"
    async with RamanEmulator(transport=transport, pixels=1024) as emulator:
        emulator.device.integration_us = 2_000  # fast spectra; the wire sets it in its own test
        yield emulator
    assert not emulator.is_serving


@pytest_asyncio.fixture
async def client(raman: RamanEmulator) -> AsyncIterator[Client]:
    port = await asyncio.to_thread(open_port, raman)
    try:
        yield Client(port)
    finally:
        await asyncio.to_thread(port.close)


async def query(client: Client, frame: bytes, within: float = 3.0) -> Reply:
    return await asyncio.to_thread(client.query, frame, within)


async def no_reply(client: Client, frame: bytes, within: float = 0.15) -> None:
    client.send(frame)
    assert await asyncio.to_thread(client.reply, within) is None


def use_until_closed(port: serial.SerialBase) -> None:
    """Keep asking on ``port`` until pyserial reports the connection gone (or give up)."""
    for _ in range(50):
        port.write(request(GET_SERIAL))
        port.read(1)
        time.sleep(0.01)


def u8(value: int) -> bytes:
    return struct.pack("<B", value)


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def f32(data: bytes) -> float:
    value: float = struct.unpack("<f", data)[0]
    return value


# --------------------------------------------------------------------------- the protocol


@pytest.mark.asyncio
@both_transports
async def test_serial_number_echoes_type_and_regarding(client: Client) -> None:
    reply = await query(client, request(GET_SERIAL, regarding=0xDEADBEEF))
    assert reply.data == b"EMU-RAMAN-0001"
    assert reply.flags & RESPONSE and not reply.flags & NACK
    assert reply.message_type == GET_SERIAL and reply.regarding == 0xDEADBEEF
    assert reply.checksum_type == 1 and reply.checksum_ok


@pytest.mark.asyncio
async def test_coefficients_give_a_raman_axis_over_the_fingerprint_region(
    raman: RamanEmulator, client: Client
) -> None:
    count = (await query(client, request(GET_COEFF_COUNT))).data
    assert count == b"\x04"
    coefficients = [f32((await query(client, request(GET_COEFF, u8(i)))).data) for i in range(4)]
    pixels = raman.device.pixels
    wavelengths = [sum(c * p**k for k, c in enumerate(coefficients)) for p in (0, pixels - 1)]
    shifts = [1e7 / 785.0 - 1e7 / w for w in wavelengths]
    assert shifts[0] < 400.0 and shifts[1] > 1800.0
    assert shifts[0] > 60.0 and shifts[1] < 2100.0
    beyond = await query(client, request(GET_COEFF, u8(4)))
    assert beyond.flags & NACK and beyond.error == 6


@pytest.mark.asyncio
async def test_integration_time_valid_and_invalid(raman: RamanEmulator, client: Client) -> None:
    ok = await query(client, request(SET_INTEGRATION, u32(5_000), flags=REQUEST_ACK))
    assert ok.flags == RESPONSE | ACK and ok.data == b""
    assert raman.device.integration_us == 5_000
    for bad in (999, 10_000_001):
        refused = await query(client, request(SET_INTEGRATION, u32(bad), flags=REQUEST_ACK))
        assert refused.flags & NACK and refused.error == 6
    assert raman.device.integration_us == 5_000


@pytest.mark.asyncio
async def test_command_without_ack_request_gets_no_reply(
    raman: RamanEmulator, client: Client
) -> None:
    await no_reply(client, request(SET_INTEGRATION, u32(3_000)))
    assert raman.device.integration_us == 3_000
    # An error is still answered, so the host does not wait in vain.
    refused = await query(client, request(SET_INTEGRATION, u32(1)))
    assert refused.flags & NACK and refused.error == 6


@pytest.mark.asyncio
async def test_trigger_mode_only_normal(client: Client) -> None:
    assert (await query(client, request(SET_TRIGGER, u8(0), flags=REQUEST_ACK))).flags & ACK
    refused = await query(client, request(SET_TRIGGER, u8(1), flags=REQUEST_ACK))
    assert refused.flags & NACK and refused.error == 6


@pytest.mark.asyncio
@both_transports
async def test_raw_spectrum_length_checksum_and_dark_pixels(
    raman: RamanEmulator, client: Client
) -> None:
    reply = await query(client, request(GET_SPECTRUM))
    assert len(reply.data) == raman.device.pixels * 2
    assert reply.checksum_type == 1 and reply.checksum_ok
    counts = struct.unpack(f"<{raman.device.pixels}H", reply.data)
    dark = sum(counts[:16]) / 16
    assert 900 < dark < 1300
    assert sum(counts[16:]) / (len(counts) - 16) > dark


@pytest.mark.asyncio
async def test_raw_spectrum_arrives_after_the_integration_time(client: Client) -> None:
    await query(client, request(SET_INTEGRATION, u32(150_000), flags=REQUEST_ACK))
    started = time.monotonic()
    reply = await query(client, request(GET_SPECTRUM))
    assert time.monotonic() - started >= 0.145
    assert len(reply.data) == 2048


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (request(0x00ABCDEF), 2),
        (request(GET_SERIAL, version=0x1000), 1),
        (request(GET_SERIAL, corrupt_checksum=True), 3),
        (request(GET_SERIAL, checksum_type=2), 8),
        (request(SET_INTEGRATION, b"\x01\x02"), 5),
        (request(GET_SERIAL, b"x"), 5),
        (request(SET_TEC_SETPOINT, struct.pack("<f", 80.0), flags=REQUEST_ACK), 6),
    ],
    ids=["unknown", "version", "checksum", "checksum-type", "arg-length", "extra-arg", "range"],
)
async def test_refused_requests_get_nack(client: Client, frame: bytes, error: int) -> None:
    message_type = HEADER.unpack_from(frame)[4]
    reply = await query(client, frame)
    assert reply.flags & RESPONSE and reply.flags & NACK
    assert reply.error == error and reply.message_type == message_type
    # The line is still usable afterwards.
    assert (await query(client, request(GET_SERIAL))).data == b"EMU-RAMAN-0001"


@pytest.mark.asyncio
async def test_oversized_message_is_nack_4(client: Client) -> None:
    head = bytearray(request(GET_SERIAL)[:44])
    head[40:44] = u32(1_000_000)
    reply = await query(client, bytes(head))
    assert reply.flags & NACK and reply.error == 4


@pytest.mark.asyncio
async def test_unchecked_request_is_accepted(client: Client) -> None:
    reply = await query(client, request(GET_SERIAL, checksum_type=0))
    assert reply.data == b"EMU-RAMAN-0001"


@pytest.mark.asyncio
@both_transports
async def test_garbage_before_a_request_is_skipped(client: Client) -> None:
    noise = bytes(range(256)) + b"\xc1\xc0\x99\x99" + os.urandom(100) + b"\xc1"
    reply = await query(client, noise + request(GET_SERIAL, regarding=7))
    assert reply.data == b"EMU-RAMAN-0001" and reply.regarding == 7


@pytest.mark.asyncio
async def test_a_false_start_claiming_a_long_frame_is_given_up() -> None:
    async with RamanEmulator(frame_timeout_s=0.05) as raman:
        port = await asyncio.to_thread(open_port, raman)
        try:
            client = Client(port)
            head = bytearray(request(GET_SERIAL)[:44])
            head[40:44] = u32(5_000)  # plausible length: the decoder waits for it...
            client.send(bytes(head))
            await asyncio.sleep(0.15)  # ...until the inter-byte timeout
            reply = await query(client, request(GET_SERIAL, regarding=9))
            assert reply.regarding == 9 and reply.data == b"EMU-RAMAN-0001"
        finally:
            await asyncio.to_thread(port.close)


@pytest.mark.asyncio
async def test_responses_without_checksum_when_disabled() -> None:
    async with RamanEmulator(checksum=False, serial_number="S-2") as raman:
        port = await asyncio.to_thread(open_port, raman)
        try:
            reply = await query(Client(port), request(GET_SERIAL))
        finally:
            await asyncio.to_thread(port.close)
    assert reply.checksum_type == 0 and reply.data == b"S-2"


@pytest.mark.asyncio
async def test_long_serial_number_travels_as_payload() -> None:
    serial_number = "EMU-RAMAN-LONG-SERIAL-0042"
    async with RamanEmulator(serial_number=serial_number) as raman:
        port = await asyncio.to_thread(open_port, raman)
        try:
            reply = await query(Client(port), request(GET_SERIAL))
        finally:
            await asyncio.to_thread(port.close)
    assert reply.data == serial_number.encode() and reply.checksum_ok


@pytest.mark.asyncio
async def test_detector_temperature_and_tec(client: Client) -> None:
    reading = f32((await query(client, request(GET_TEMPERATURE))).data)
    assert -12.0 < reading < 23.0
    ack = await query(client, request(SET_TEC_ENABLE, u8(0), flags=REQUEST_ACK))
    assert ack.flags & ACK
    ack = await query(client, request(SET_TEC_SETPOINT, struct.pack("<f", -5.0), flags=4))
    assert ack.flags & ACK
    refused = await query(client, request(SET_TEC_ENABLE, u8(2), flags=REQUEST_ACK))
    assert refused.error == 6


def test_tec_settles_towards_its_setpoint() -> None:
    now = [0.0]
    device = RamanDevice(pixels=1024, clock=lambda: now[0])
    device.power_on()
    assert device.detector_c == pytest.approx(22.0)
    now[0] = 30.0
    assert device.detector_c == pytest.approx(-10.0, abs=0.01)
    device.tec_setpoint_c = -60.0  # beyond what the TEC can pull: it bottoms out
    now[0] = 60.0
    assert device.detector_c == pytest.approx(22.0 - 35.0, abs=0.01)
    device.tec_enabled = False
    now[0] = 90.0
    assert device.detector_c == pytest.approx(22.0, abs=0.01)


@pytest.mark.asyncio
async def test_spectrum_follows_the_composition_callable() -> None:
    current = [Composition(glucose_g_L=0.0)]
    device = RamanDevice(pixels=1024, composition=lambda: current[0])
    shift = device.shift_cm1
    band = (shift > 1110) & (shift < 1140)

    async def glucose_band() -> float:
        device.integration_us = 1_000
        reply = await device.handle(_frame(GET_SPECTRUM))
        assert reply is not None
        counts = struct.unpack("<1024H", reply.data)
        return float(sum(c for c, b in zip(counts, band, strict=True) if b))

    low = await glucose_band()
    current[0] = Composition(glucose_g_L=400.0)
    assert await glucose_band() > low


@pytest.mark.asyncio
async def test_failing_process_model_is_a_hardware_exception_not_a_crash() -> None:
    def broken() -> Composition:
        raise RuntimeError("process model down")

    device = RamanDevice(pixels=1024, composition=broken)
    device.integration_us = 1_000
    with structlog.testing.capture_logs() as logs:
        reply = await device.handle(_frame(GET_SPECTRUM))
    assert reply is not None and reply.flags & NACK and reply.flags & 0x10
    assert reply.error == 7
    assert [entry["event"] for entry in logs] == ["emulator.request_failed"]


def _frame(message_type: int, data: bytes = b"") -> Frame:
    return Frame(message_type=message_type, data=data)


# --------------------------------------------------------------------------- faults


@pytest.mark.asyncio
async def test_fault_nack(raman: RamanEmulator, client: Client) -> None:
    raman.inject(Fault.NACK)
    reply = await query(client, request(GET_SERIAL, regarding=3))
    assert reply.flags & NACK and reply.error == 7 and reply.regarding == 3
    raman.inject(Fault.NACK, error=4)
    assert (await query(client, request(GET_SERIAL))).error == 4
    assert raman.active_faults == {Fault.NACK}
    raman.clear(Fault.NACK)
    assert (await query(client, request(GET_SERIAL))).data == b"EMU-RAMAN-0001"


@pytest.mark.asyncio
async def test_fault_bad_checksum(raman: RamanEmulator, client: Client) -> None:
    raman.inject(Fault.BAD_CHECKSUM)
    reply = await query(client, request(GET_SERIAL))
    assert reply.data == b"EMU-RAMAN-0001"
    assert reply.checksum_type == 1 and not reply.checksum_ok
    raman.clear_faults()
    assert (await query(client, request(GET_SERIAL))).checksum_ok


@pytest.mark.asyncio
async def test_fault_truncated(raman: RamanEmulator, client: Client) -> None:
    raman.inject(Fault.TRUNCATED, keep=0.5)
    client.send(request(GET_SPECTRUM))
    half = (44 + 2048 + 20) // 2
    partial = await asyncio.to_thread(client.raw, 2.0, lambda wire: len(wire) >= half)
    partial += await asyncio.to_thread(client.raw, 0.1)  # and nothing more comes
    assert partial.startswith(START) and len(partial) == half
    raman.clear(Fault.TRUNCATED)
    reply = await query(client, request(GET_SPECTRUM))
    assert len(reply.data) == 2048 and reply.checksum_ok


@pytest.mark.asyncio
async def test_fault_garbage_before_replies(raman: RamanEmulator, client: Client) -> None:
    raman.inject(Fault.GARBAGE, size=40)
    client.send(request(GET_SERIAL))
    wire = await asyncio.to_thread(client.raw, 2.0, lambda wire: wire.endswith(FOOTER_MAGIC))
    # 1..40 bytes of noise, then the intact 64-byte reply.
    assert 64 < len(wire) <= 64 + 40 and not wire.startswith(START)
    assert wire[-64:].startswith(START) and wire.endswith(FOOTER_MAGIC)
    raman.clear(Fault.GARBAGE)
    client.send(request(GET_SERIAL))
    wire = await asyncio.to_thread(client.raw, 2.0, lambda wire: wire.endswith(FOOTER_MAGIC))
    assert wire.startswith(START) and len(wire) == 64


@pytest.mark.asyncio
async def test_fault_spontaneous_garbage(raman: RamanEmulator, client: Client) -> None:
    raman.inject(Fault.GARBAGE, before_reply=False, every_s=0.01, size=8)
    noise = await asyncio.to_thread(client.raw, 0.1)
    assert len(noise) >= 3
    # Noise goes between frames, never into one: a request is still answered.
    assert (await query(client, request(GET_SERIAL))).data == b"EMU-RAMAN-0001"
    raman.clear(Fault.GARBAGE)
    await asyncio.to_thread(client.raw, 0.03)
    assert await asyncio.to_thread(client.raw, 0.1) == b""


@pytest.mark.asyncio
async def test_fault_silence(raman: RamanEmulator, client: Client) -> None:
    raman.inject(Fault.SILENCE)
    await no_reply(client, request(GET_SERIAL))
    raman.clear(Fault.SILENCE)
    reply = await query(client, request(GET_SERIAL, regarding=11))
    assert reply.regarding == 11  # the ignored request left nothing behind


def test_fault_parameters_are_checked() -> None:
    raman = RamanEmulator(transport="tcp")
    with pytest.raises(TypeError, match="keep"):
        raman.inject(Fault.NACK, keep=0.5)
    with pytest.raises(ValueError, match="keep"):
        raman.inject(Fault.TRUNCATED, keep=1.0)
    with pytest.raises(ValueError, match="every_s"):
        raman.inject(Fault.GARBAGE, every_s=0)
    assert raman.active_faults == frozenset()


# --------------------------------------------------------------------------- transports


@pytest.mark.asyncio
async def test_pty_survives_the_driver_closing_and_reopening_it() -> None:
    async with RamanEmulator(pixels=2048) as raman:
        raman.device.integration_us = 1_000
        for _ in range(3):
            port = await asyncio.to_thread(open_port, raman)
            try:
                client = Client(port)
                reply = await query(client, request(GET_SPECTRUM))
                assert len(reply.data) == 4096 and reply.checksum_ok
            finally:
                await asyncio.to_thread(port.close)


@pytest.mark.asyncio
async def test_pty_is_raw_binary_clean() -> None:
    # Bytes a cooked terminal would translate (CR, LF, ^C, ^D, ^S, XOFF...) in the payload.
    async with RamanEmulator(serial_number="\r\n\x03\x04\x13\x11\x7f\x00END") as raman:
        port = await asyncio.to_thread(open_port, raman)
        try:
            reply = await query(Client(port), request(GET_SERIAL, regarding=0x0A0D0A0D))
        finally:
            await asyncio.to_thread(port.close)
    assert reply.data == b"\r\n\x03\x04\x13\x11\x7f\x00END" and reply.checksum_ok


@pytest.mark.asyncio
async def test_symlink_points_at_the_pty_and_is_removed_on_stop(tmp_path: Path) -> None:
    link = tmp_path / "raman0"
    link.symlink_to("/nonexistent/old-device")  # a stale link from an earlier run
    raman = RamanEmulator(link=link)
    async with raman:
        assert os.readlink(link) == raman.device_path
        assert raman.endpoint == str(link)
        port = await asyncio.to_thread(serial.Serial, str(link), timeout=0.02)
        try:
            assert (await query(Client(port), request(GET_SERIAL))).data == b"EMU-RAMAN-0001"
        finally:
            await asyncio.to_thread(port.close)
        first = raman.device_path
    assert not link.exists() and not link.is_symlink()
    async with raman:  # started again: a new pty, the link follows it
        assert os.readlink(link) == raman.device_path
    assert first and not link.is_symlink()


@pytest.mark.asyncio
async def test_symlink_never_overwrites_a_regular_file(tmp_path: Path) -> None:
    precious = tmp_path / "raman0"
    precious.write_text("not a device")
    raman = RamanEmulator(link=precious)
    with pytest.raises(FileExistsError):
        await raman.start()
    assert precious.read_text() == "not a device"
    assert not raman.is_serving
    await raman.stop()


def test_link_only_with_a_pty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="link"):
        RamanEmulator(transport="tcp", link=tmp_path / "x")


@pytest.mark.asyncio
async def test_tcp_new_connection_replaces_the_old_one() -> None:
    async with RamanEmulator(transport="tcp") as raman:
        assert raman.endpoint == f"socket://127.0.0.1:{raman.port}"
        first = await asyncio.to_thread(open_port, raman)
        second = None
        try:
            assert (await query(Client(first), request(GET_SERIAL))).data
            second = await asyncio.to_thread(open_port, raman)
            assert (await query(Client(second), request(GET_SERIAL))).data
            # The device closed the first connection.
            with pytest.raises(serial.SerialException):
                await asyncio.to_thread(use_until_closed, first)
        finally:
            await asyncio.to_thread(first.close)
            if second is not None:
                await asyncio.to_thread(second.close)


@pytest.mark.asyncio
async def test_tcp_keeps_its_port_across_restarts_and_stop_is_idempotent() -> None:
    raman = RamanEmulator(transport="tcp")
    await raman.start()
    port = raman.port
    await raman.stop()
    await raman.stop()
    await raman.start()
    try:
        assert raman.port == port
    finally:
        await raman.stop()
    assert not raman.is_serving


@pytest.mark.asyncio
async def test_stop_does_not_wait_for_a_long_exposure() -> None:
    async with RamanEmulator() as raman:
        raman.device.integration_us = 10_000_000
        port = await asyncio.to_thread(open_port, raman)
        try:
            Client(port).send(request(GET_SPECTRUM))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await raman.stop()
            assert time.monotonic() - started < 1.0
        finally:
            await asyncio.to_thread(port.close)


# --------------------------------------------------------------------------- plugin


def registry() -> Registry:
    from firmware_stubs.raman import plugin

    reg = Registry()
    plugin.pat_gateway_register_emulators(registry=reg)
    return reg


def test_plugin_registers_raman_with_its_options_model() -> None:
    registration = registry().get(PluginKind.EMULATOR, "raman")
    assert registration is not None
    assert registration.options_model is RamanOptions
    assert registration.factory is factory
    for name, field in RamanOptions.model_fields.items():
        assert field.description, f"{name} is not described"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"link": "/tmp/raman0"}, "serial: true"),
        ({"bogus": 1}, "Extra inputs"),
        ({"pixels": 4096}, "less than or equal"),
        ({"faults": [{"fault": "silence", "after_s": 0, "error": 4}]}, "only to fault 'nack'"),
        ({"faults": [{"fault": "melt", "after_s": 0}]}, "fault"),
    ],
)
def test_plugin_options_are_validated(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RamanOptions.model_validate(raw)


@pytest.mark.asyncio
async def test_plugin_refuses_to_start_without_its_process(tmp_path: Path) -> None:
    emulator = factory(RamanOptions(process="reactor1", port=0), PluginContext("raman", tmp_path))
    with pytest.raises(GatewayError, match="no bioreactor process 'reactor1' is running"):
        async with emulator:
            pass
    assert not emulator.emulator.is_serving


@pytest.mark.asyncio
async def test_plugin_factory_serves_tcp_and_pty(tmp_path: Path) -> None:
    context = PluginContext("raman", tmp_path)
    tcp = factory(RamanOptions(port=0, pixels=1024), context)
    async with tcp:
        assert tcp.endpoint.startswith("socket://127.0.0.1:") and tcp.port
        port = await asyncio.to_thread(serial.serial_for_url, tcp.endpoint, timeout=0.02)
        try:
            assert (await query(Client(port), request(GET_SERIAL))).data == b"EMU-RAMAN-0001"
        finally:
            await asyncio.to_thread(port.close)
    link = tmp_path / "raman0"
    pty = factory(RamanOptions(serial=True, link=str(link), serial_number="SN-7"), context)
    async with pty:
        assert pty.endpoint == str(link) and pty.port is None
        port = await asyncio.to_thread(serial.Serial, pty.endpoint, timeout=0.02)
        try:
            assert (await query(Client(port), request(GET_SERIAL))).data == b"SN-7"
        finally:
            await asyncio.to_thread(port.close)
    assert not link.is_symlink()


@pytest.mark.asyncio
async def test_plugin_fault_schedule_plays_and_clears() -> None:
    options = RamanOptions.model_validate(
        {
            "port": 0,
            "faults": [
                {"fault": "nack", "after_s": 0.05, "for_s": 0.2, "error": 4},
                {"fault": "silence", "after_s": 0.15},
            ],
        }
    )
    scheduled = factory(options, PluginContext("raman", Path("data")))
    assert isinstance(scheduled, ScheduledRaman)
    async with scheduled:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def at(t: float) -> frozenset[Fault]:
            await asyncio.sleep(max(0.0, start + t - loop.time()))
            return scheduled.emulator.active_faults

        # Checked midway between events, 0.05 s from the nearest.
        assert await at(0.1) == {Fault.NACK}
        assert await at(0.2) == {Fault.NACK, Fault.SILENCE}
        assert await at(0.3) == {Fault.SILENCE}
    assert not scheduled.emulator.is_serving


# --------------------------------------------------------------------------- helpers' own check


def test_client_request_layout() -> None:
    frame = request(SET_INTEGRATION, u32(100_000), flags=REQUEST_ACK, regarding=5)
    assert frame[:4] == b"\xc1\xc0\x00\x11" and frame[-4:] == b"\xc5\xc4\xc3\xc2"
    assert len(frame) == 64 and frame[23] == 4 and frame[40:44] == u32(20)
    assert frame[-20:-4] == hashlib.md5(frame[:-20]).digest()
    assert not math.isnan(f32(struct.pack("<f", 1.0)))


@pytest.fixture(autouse=True)
def _no_stale_symlinks(tmp_path: Path) -> Iterator[None]:
    yield
    assert not list(tmp_path.glob(".*.tmp")), "a staging symlink was left behind"
