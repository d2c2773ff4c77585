"""The controlled write path's cost, for ``benchmarks/audit.py``.

* ``write_latency``: sequential writes of the emulated feed pump's speed setpoint (Modbus TCP on
  loopback) through ``WritePath.submit`` in a running gateway — the device read before the write
  (old value, step check), the write, the read-back, and three durable audit records
  (``synchronous=FULL``) — from submit to outcome: p50, p99, max in ms.
* ``pipeline_with_writes``: ``benchmarks/pipeline.py``'s ingestion figure (synthetic driver,
  100 signals) in a gateway that also polls the emulated pump, without writes and with
  ``--writes-per-s`` writes going on.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path

from pipeline import measure

from gateway import build_registry, load_plan
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
    """The emulated pump's instrument (a list item) and its emulator and write target."""
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
    for _ in range(200):
        if runner.state.value == "connected":
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the emulated pump did not connect within 10 s")


async def _write(gateway: Gateway, value: float) -> float:
    assert gateway.write_path is not None
    started = time.perf_counter()
    outcome = await gateway.write_path.submit(
        WriteRequest(TARGET, value, OPERATOR, "benchmark", "controller")
    )
    if not outcome.ok:
        raise RuntimeError(f"benchmark write not done: {outcome.message}")
    return (time.perf_counter() - started) * 1000


async def _write_latency(folder: Path, writes: int) -> dict[str, float]:
    instrument, extra = _pump_sections(_free_port())
    config = folder / "writes.yaml"
    config.write_text(
        f"area: bench\nstore: {{path: {folder / 'w.sqlite'}}}\ninstruments:\n" + instrument + extra
    )
    gateway = Gateway(load_plan(config, build_registry()))
    stop = asyncio.Event()
    latencies: list[float] = []

    async def writing() -> None:
        await gateway.started.wait()
        await _connected(gateway)
        try:
            for i in range(writes):
                latencies.append(await _write(gateway, 10 + i % 50))
        finally:
            stop.set()

    writer = asyncio.create_task(writing(), name="bench.writes")
    await gateway.run(stop)
    await writer
    ordered = sorted(latencies)
    return {
        "write_latency_ms_p50": statistics.median(ordered),
        "write_latency_ms_p99": ordered[max(0, round(len(ordered) * 0.99) - 1)],
        "write_latency_ms_max": ordered[-1],
    }


def write_latency(writes: int, folder: Path) -> dict[str, float]:
    return asyncio.run(_write_latency(folder, writes))


async def _pipeline(folder: Path, seconds: float, rate: float, writes_per_s: float) -> float:
    instrument, extra = _pump_sections(_free_port())

    async def writing(gateway: Gateway) -> None:
        await _connected(gateway)
        i = 0
        while writes_per_s > 0:
            tick = time.perf_counter()
            await _write(gateway, 10 + i % 50)
            i += 1
            await asyncio.sleep(max(0.0, 1 / writes_per_s - (time.perf_counter() - tick)))

    result = await measure(
        seconds,
        100,
        rate,
        10,
        folder,
        extra=extra,
        during=writing,
        more_instruments=instrument,
    )
    return float(result["samples_per_s"])


def pipeline_samples_per_s(folder: Path, seconds: float, rate: float, writes_per_s: float) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_pipeline(folder, seconds, rate, writes_per_s))
