"""The Modbus driver against a device that answers with garbage: bad samples, never a crash.

The "device" here is a few lines of raw asyncio TCP, deliberately not the emulator, so that it
can send what no well-behaved server would.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import plan_for, pump_instrument, running, wait_for

from gateway import Quality
from gateway.store import SampleStore

Reply = Callable[[bytes], bytes]


def random_bytes(request: bytes) -> bytes:
    return random.Random(request).randbytes(random.Random(request).randint(1, 40))


def lying_byte_count(request: bytes) -> bytes:
    """A well-formed MBAP header for the right transaction, but a PDU that lies about its size."""
    tid = request[:2]
    pdu = bytes([3, 200]) + b"\x00\x01"
    return tid + b"\x00\x00" + struct.pack(">H", len(pdu) + 1) + request[6:7] + pdu


def short_response(request: bytes) -> bytes:
    """A valid response with fewer registers than were asked for."""
    tid = request[:2]
    pdu = bytes([3, 4]) + b"\x00\x01\x00\x02"
    return tid + b"\x00\x00" + struct.pack(">H", len(pdu) + 1) + request[6:7] + pdu


def unknown_exception(request: bytes) -> bytes:
    tid = request[:2]
    pdu = bytes([0x83, 99])
    return tid + b"\x00\x00" + struct.pack(">H", len(pdu) + 1) + request[6:7] + pdu


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "reply", [random_bytes, lying_byte_count, short_response, unknown_exception]
)
async def test_garbage_answers_give_bad_samples_not_crashes(tmp_path: Path, reply: Reply) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await reader.read(260):
                writer.write(reply(request))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        plan = plan_for(
            tmp_path, instruments=[pump_instrument("junk", port, signals=[{"id": "flow"}])]
        )
        async with running(plan) as (gateway, _):
            output = gateway.outputs[0]
            await wait_for(lambda: output.seq >= 3, what="three samples")
            runner = gateway.runners[0]
    finally:
        server.close()
        await server.wait_closed()
    store = SampleStore(tmp_path / "store.sqlite")
    samples = list(store.samples())
    store.close()
    assert samples
    assert all(s.quality is Quality.BAD and s.value is None for s in samples)
    # Every failure was understood and translated, none was a driver crash.
    assert all("driver error" not in (s.reason or "") for s in samples), samples[0].reason
    assert runner.last_error is None or "driver error" not in runner.last_error
