"""The controlled write path's cost: a Modbus write to the emulated feed pump with the device
read before (step check), the write, the read-back and three audit records, end to end through
``WritePath.submit``; and the pipeline's ingestion while such writes go on.

Used by ``benchmarks/audit.py`` (``write_latency_ms_p99``, ``pipeline_with_writes``)."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path
from typing import Any

from pipeline import measure

from gateway.control import WriteRequest
from gateway.runtime import Gateway
from gateway.security import Identity, Permission

TARGET = "bench/pump/speed_setpoint"
OPERATOR = Identity("bench", "Benchmark Operator", frozenset({"operator"}), frozenset(Permission))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pump_sections(port: int) -> tuple[str, str]:
    """The emulated pump (an instrument line for ``measure``), and its emulator and target."""
    instrument = (
        "  - id: pump\n    driver: modbus\n    poll_interval_s: 0.5\n"
        f"    options: {{host: 127.0.0.1, port: {port}, profile: feed_pump, timeout_s: 1.0}}\n"
    )
    extra = (
        "emulators:\n"
        f"  - {{id: pump_emulator, type: feed_pump, options: {{port: {port}, setpoint_rpm: 2}}}}\n"
        f"writes:\n  - {{target: {TARGET}, min: 0, max: 400}}\n"
    )
    return instrument, extra


async def _connected(gateway: Gateway) -> None:
    runner = next(r for r in gateway.runners if r.instrument_id == "pump")
    while runner.state.value != "connected":
        await asyncio.sleep(0.05)


async def _write(gateway: Gateway, value: float) -> float:
    assert gateway.write_path is not None
    started = time.perf_counter()
    outcome = await gateway.write_path.submit(
        WriteRequest(TARGET, value, OPERATOR, "benchmark", "controller")
    )
    if not outcome.ok:
        raise RuntimeError(f"benchmark write not done: {outcome.message}")
    return (time.perf_counter() - started) * 1000


async def write_latency(folder: Path, writes: int) -> dict[str, Any]:
    """``writes`` sequential writes beside a light pipeline (100 samples/s)."""
    instrument, extra = _pump_sections(_free_port())
    latencies: list[float] = []

    async def during(gateway: Gateway) -> None:
        await _connected(gateway)
        for i in range(writes):
            latencies.append(await _write(gateway, 10 + i % 50))
        raise asyncio.CancelledError  # done: the run is stopped by its duration

    run = asyncio.create_task(
        measure(600, 10, 100, 10, folder, extra=extra, during=during, more_instruments=instrument)
    )
    while len(latencies) < writes and not run.done():
        await asyncio.sleep(0.1)
    run.cancel()
    await asyncio.wait({run})
    ordered = sorted(latencies)
    return {
        "writes": len(latencies),
        "write_latency_ms_p50": round(statistics.median(ordered), 2),
        "write_latency_ms_p99": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 2),
        "write_latency_ms_max": round(ordered[-1], 2),
    }


async def pipeline_with_writes(
    folder: Path, seconds: float, writes_per_s: float, rate: float
) -> dict[str, Any]:
    """The pipeline figure with the pump instrument, without and with ``writes_per_s``."""
    instrument, extra = _pump_sections(_free_port())
    done: list[float] = []

    async def writing(gateway: Gateway) -> None:
        await _connected(gateway)
        i = 0
        while True:
            tick = time.perf_counter()
            done.append(await _write(gateway, 10 + i % 50))
            i += 1
            await asyncio.sleep(max(0.0, 1 / writes_per_s - (time.perf_counter() - tick)))

    async def idle(gateway: Gateway) -> None:
        await _connected(gateway)

    without = await measure(
        seconds,
        100,
        rate,
        10,
        folder / "without",
        extra=extra,
        during=idle,
        more_instruments=instrument,
    )
    instrument, extra = _pump_sections(_free_port())
    with_writes = await measure(
        seconds,
        100,
        rate,
        10,
        folder / "with",
        extra=extra,
        during=writing,
        more_instruments=instrument,
    )
    return {
        "samples_per_s_without_writes": without["samples_per_s"],
        "samples_per_s_with_writes": with_writes["samples_per_s"],
        "writes_done": len(done),
        "writes_per_s": round(len(done) / seconds, 2),
    }
