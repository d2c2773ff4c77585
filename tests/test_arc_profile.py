"""The shipped Hamilton ARC-style pH profile against a register image served over loopback.

The "probe" is a minimal Modbus TCP responder written here (MBAP + function 3 only), so that
the driver's profile — 1-based register numbers, 10-register blocks, status bits → quality,
word order — is checked against bytes laid out independently of the driver's codec.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from conftest import modbus_frame, plan_for, read_modbus_request, running, wait_for

from gateway import Quality


def float_words(value: float, word_order: str) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo] if word_order == "big" else [lo, hi]


def u32_words(value: int, word_order: str) -> list[int]:
    hi, lo = value >> 16, value & 0xFFFF
    return [hi, lo] if word_order == "big" else [lo, hi]


def pmc_block(value: float, status: int, low: float, high: float, order: str) -> list[int]:
    # unit bitmask, value, status, min, max: 2 registers each
    return (
        u32_words(0x20, order)
        + float_words(value, order)
        + u32_words(status, order)
        + float_words(low, order)
        + float_words(high, order)
    )


def arc_image(order: str) -> dict[int, int]:
    """Protocol (0-based) address → register; the manual's register 2090 is address 2089."""
    image: dict[int, int] = {}
    for start, words in (
        (2089, pmc_block(7.02, 0x08, 0.0, 14.0, order)),  # pH, warning bit
        (2409, pmc_block(36.9, 0x10, -10.0, 130.0, order)),  # temperature, error bit
    ):
        image.update({start + i: w for i, w in enumerate(words)})
    return image


async def serve_image(image: dict[int, int]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                r = await read_modbus_request(reader)
                function, address, count = r.function, r.address, r.count
                if function != 3 or any(a not in image for a in range(address, address + count)):
                    body = bytes([function | 0x80, 2])
                else:
                    words = [image[a] for a in range(address, address + count)]
                    body = bytes([3, 2 * count]) + struct.pack(f">{count}H", *words)
                writer.write(modbus_frame(r.tid, r.unit, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.asyncio
@pytest.mark.parametrize("order", ["big", "little"])
async def test_arc_profile_reads_ph_and_temperature_with_status_quality(
    tmp_path: Path, order: str
) -> None:
    server = await serve_image(arc_image(order))
    port = server.sockets[0].getsockname()[1]
    options = {"port": port, "profile": "hamilton_arc_ph", "timeout_s": 0.5}
    if order == "little":
        options["word_order"] = "little"  # what some probes and drivers use
    instrument = {
        "id": "ph_probe",
        "driver": "modbus",
        "poll_interval_s": 0.05,
        "options": options,
        "signals": [{"id": "ph"}, {"id": "temperature", "unit": "K"}, {"id": "ph_max"}],
    }
    try:
        plan = plan_for(tmp_path, instruments=[instrument])
        async with running(plan) as (gateway, _):
            outputs = {o.signal.id.rsplit("/", 1)[1]: o for o in gateway.outputs}
            await wait_for(lambda: all(o.latest for o in outputs.values()))
            rows = {name: o.latest for name, o in outputs.items()}
    finally:
        server.close()
        await server.wait_closed()
    assert rows["ph"][5] == pytest.approx(7.02, abs=1e-5)
    assert (Quality(rows["ph"][4]), rows["ph"][6]) == (Quality.UNCERTAIN, "status 0x08")
    assert rows["temperature"][5] == pytest.approx(310.05, abs=1e-4)  # 36.9 Cel in K
    assert (Quality(rows["temperature"][4]), rows["temperature"][6]) == (Quality.BAD, "status 0x10")
    assert rows["ph_max"][5] == pytest.approx(14.0)
    assert Quality(rows["ph_max"][4]) is Quality.GOOD
    assert {o.signal.unit for o in gateway.outputs} == {"[pH]", "K"}
