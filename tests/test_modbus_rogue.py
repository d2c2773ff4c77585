"""The Modbus driver against scripted rogue devices: each misbehaviour ends as a sample reason
that names it, and a device that keeps sending garbage cannot flood the log.

The "device" is a real TCP server on loopback writing our own bytes, deliberately not the
emulator nor pymodbus, so it can send what no well-behaved server would. It reads each request
as a Modbus TCP frame (MBAP header, then as many bytes as its length says) and answers through a
script: bytes to send, then optionally a reset or a close.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ModbusRequest,
    modbus_frame,
    plan_for,
    read_modbus_request,
    running,
    wait_for,
)

from gateway import Quality
from gateway.logs import configure_logging
from gateway.store import SampleStore


@dataclass(frozen=True)
class Answer:
    data: bytes = b""
    then: str = "stay"  # stay | reset | close


Script = Callable[[ModbusRequest], Answer]


def registers(count: int) -> bytes:
    return b"".join(struct.pack(">H", 100 + i) for i in range(count))


def reply(r: ModbusRequest, count: int | None = None) -> bytes:
    """A well-formed reply to ``r`` carrying ``count`` registers (those asked for by default)."""
    n = r.count if count is None else count
    return modbus_frame(r.tid, r.unit, bytes([r.function, 2 * n]) + registers(n))


def silence(_r: ModbusRequest) -> Answer:
    return Answer()


def wrong_transaction(r: ModbusRequest) -> Answer:
    return Answer(reply(ModbusRequest(r.tid + 1000, r.unit, r.function, r.address, r.count)))


def wrong_unit(r: ModbusRequest) -> Answer:
    return Answer(reply(ModbusRequest(r.tid, 9, r.function, r.address, r.count)))


def byte_count_too_high(r: ModbusRequest) -> Answer:
    return Answer(modbus_frame(r.tid, r.unit, bytes([r.function, 200]) + b"\x00\x01"))


def byte_count_too_low(r: ModbusRequest) -> Answer:
    return Answer(modbus_frame(r.tid, r.unit, bytes([r.function, 2]) + registers(r.count)))


def too_many_registers(r: ModbusRequest) -> Answer:
    return Answer(reply(r, r.count + 2))


def too_few_registers(r: ModbusRequest) -> Answer:
    return Answer(reply(r, r.count - 1))


def wrong_function(r: ModbusRequest) -> Answer:
    return Answer(modbus_frame(r.tid, r.unit, bytes([4, 2 * r.count]) + registers(r.count)))


def exception_reply(r: ModbusRequest) -> Answer:
    return Answer(modbus_frame(r.tid, r.unit, bytes([r.function | 0x80, 2])))


def unknown_function(r: ModbusRequest) -> Answer:
    return Answer(modbus_frame(r.tid, r.unit, b"\x41\x00\x00"))


def exception_without_code(r: ModbusRequest) -> Answer:
    return Answer(modbus_frame(r.tid, r.unit, bytes([r.function | 0x80])))


def reset_mid_frame(r: ModbusRequest) -> Answer:
    return Answer(reply(r)[:5], then="reset")


def close_without_reply(_r: ModbusRequest) -> Answer:
    return Answer(then="close")


GARBAGE = bytes(range(0x20, 0x7F)) * 3  # printable, and the "protocol id" bytes are not zero


def garbage(_r: ModbusRequest) -> Answer:
    return Answer(GARBAGE)


@asynccontextmanager
async def rogue_device(script: Script) -> AsyncIterator[int]:
    """Serve ``script`` on a loopback port; yield the port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                answer = script(await read_modbus_request(reader))
                if answer.data:
                    writer.write(answer.data)
                    await writer.drain()
                if answer.then == "reset":
                    sock = writer.get_extra_info("socket")
                    # SO_LINGER 0: close sends an RST instead of a FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if answer.then == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def rogue_instrument(port: int, **options: Any) -> dict[str, Any]:
    return {
        "id": "rogue",
        "driver": "modbus",
        "poll_interval_s": 0.05,
        "backoff": {"initial_s": 0.05, "max_s": 0.2},
        "options": {
            "host": "127.0.0.1",
            "port": port,
            "timeout_s": 0.3,
            "registers": [{"name": "flow", "address": 4, "type": "float32"}],
            **options,
        },
        "signals": [{"id": "flow"}],
    }


def stored_reasons(tmp_path: Path) -> list[tuple[Quality, str | None]]:
    store = SampleStore(tmp_path / "store.sqlite")
    try:
        return [(s.quality, s.reason) for s in store.samples()]
    finally:
        store.close()


WHERE = r"unreachable: 127\.0\.0\.1:\d+: "


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (silence, WHERE + r"no valid reply within 0\.3 s: the device sent nothing$"),
        (
            wrong_transaction,
            WHERE + r"no valid reply within 0\.3 s: 1 reply discarded \(for transaction (\d+),"
            r" expected \d+\)$",
        ),
        (
            wrong_unit,
            WHERE
            + r"no valid reply within 0\.3 s: 1 reply discarded \(from unit 9, asked unit 1\)$",
        ),
        (
            garbage,
            WHERE + rf"no valid reply within 0\.3 s: {len(GARBAGE)} bytes received that are not"
            r" a Modbus reply \(garbage or an incomplete frame\)$",
        ),
        (
            byte_count_too_high,
            WHERE + r"malformed reply: byte count 200 but 2 data bytes follow \(function 3\);"
            r" connection dropped$",
        ),
        (
            unknown_function,
            WHERE + r"malformed reply: function 65 in reply to function 3; connection dropped$",
        ),
        (
            exception_without_code,
            WHERE + r"malformed reply: exception reply \(function 3\) of 1 byte, not 2;"
            r" connection dropped$",
        ),
        (
            reset_mid_frame,
            WHERE + r"connection reset by peer after 5 bytes of an incomplete reply$",
        ),
        (close_without_reply, WHERE + r"connection closed by peer before a reply$"),
        (
            byte_count_too_low,
            r"^malformed reply: byte count 2 but 4 data bytes follow \(function 3\)$",
        ),
        (wrong_function, r"^malformed reply: function 4 in reply to function 3$"),
        (too_many_registers, r"^reply carries 4 registers, 2 requested$"),
        (too_few_registers, r"^reply carries 1 register, 2 requested$"),
        (exception_reply, r"^exception 2 \(illegal data address\)$"),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
async def test_each_misbehaviour_is_named_in_the_stored_reason(
    tmp_path: Path, script: Script, reason: str
) -> None:
    async with rogue_device(script) as port:
        plan = plan_for(tmp_path, instruments=[rogue_instrument(port)])
        async with running(plan) as (gateway, _):
            output = gateway.outputs[0]
            await wait_for(lambda: output.seq >= 3, what="three samples")
    samples = stored_reasons(tmp_path)
    assert samples
    # Every sample is bad, none has a value and each says what went wrong, specifically.
    for quality, text in samples:
        assert quality is Quality.BAD
        assert text is not None and re.search(reason, text), (text, reason)


def garbage_bursts(_r: ModbusRequest) -> Answer:
    """Garbage no framer can use, in bursts below pymodbus's buffer limit, so that each one
    makes it log an error with a hex dump of the last frames it saw."""
    return Answer(GARBAGE[:200])


@pytest.mark.asyncio
async def test_a_rogue_device_cannot_flood_the_log(tmp_path: Path) -> None:
    window_s = 0.5
    log = io.StringIO()
    async with rogue_device(garbage_bursts) as port:
        plan = plan_for(tmp_path, instruments=[rogue_instrument(port, timeout_s=0.1)])
        with redirect_stderr(log):
            configure_logging("json", "info", repeat_window_s=window_s)
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with running(plan) as (gateway, _):
                runner = gateway.runners[0]
                await wait_for(lambda: runner.failures >= 25, within=30, what="25 failed polls")
            elapsed = loop.time() - started
    lines = log.getvalue().splitlines()
    events = [json.loads(line) for line in lines]
    library = [e for e in events if str(e.get("logger", "")).startswith("pymodbus")]
    # The device did make pymodbus log its hex dumps, on the instrument's behalf...
    assert library and all(e.get("instrument") == "rogue" for e in library)
    assert any("more characters cut" in e["event"] for e in library)
    # ...but no line is long: the dump is cut to a few hundred characters.
    longest = max(len(line) for line in lines)
    assert longest < 2048, longest
    # Each kind of library line is written at most once per window (its first occurrence,
    # then one per window carrying the count of those suppressed, or a summary of that count
    # once the window is over), so the volume does not follow the device.
    kinds = {
        (
            e.get("logger"),
            re.sub(r"\d+", "#", e.get("repeated", e["event"]).split("\n")[0]),
            e.get("level"),
        )
        for e in library
    }
    windows = elapsed / window_s + 1
    assert len(library) <= 2 * len(kinds) * windows, (len(library), len(kinds), windows)
    suppressed = sum(e.get("suppressed", 0) for e in events)
    assert suppressed > 0
    # The gateway's own instrument.down is a state change after instrument.retry, so it is
    # written on each failure (the log's last word must be right): its pace is the reconnect
    # backoff's, never the device's, and at most one line per failure.
    down = [e for e in events if e["event"] == "instrument.down"]
    assert 1 <= len(down) <= runner.failures
    print(
        f"{len(lines)} lines, {sum(map(len, lines))} bytes, longest {longest},"
        f" {suppressed} suppressed, {runner.failures} failed polls in {elapsed:.1f} s",
        file=sys.__stdout__,
    )
