"""How long a frozen OPC UA server takes to be reported ``bad``, through the real runtime.

The device is the emulated bioreactor controller in its own process (``patgw emulate bioreactor
--port N``); the gateway's ``opcua`` driver subscribes to two of its nodes with the driver's
default timing (``timeout_s`` 5, sampling and publishing every 250 ms) unless told otherwise.
Each run waits for good data, stops the device with SIGSTOP (the process frozen, its TCP
connections open: the kernel still acknowledges what the gateway sends), and measures the time
until the signal's newest sample is ``bad``; then SIGCONT, and the next run starts once the
data is good again.

    python benchmarks/opcua_frozen.py --runs 5

Prints one JSON object: each run's detection time and reason, their median and range, and the
options they were measured under.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from opcua import _free_port  # the OPC UA throughput benchmark beside this one

from gateway import Quality, build_registry, load_plan
from gateway.logs import configure_logging
from gateway.runtime import Gateway

NAMESPACE = "urn:pat-gateway:emulator:bioreactor-controller"


async def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    port = _free_port()
    options: dict[str, Any] = {
        "url": f"opc.tcp://127.0.0.1:{port}",
        "namespaces": {"dcu": NAMESPACE},
        "nodes": [
            {"name": "temperature", "node": "dcu:BioreactorController.Temperature.PV",
             "unit": "Cel"},
            {"name": "ph", "node": "dcu:BioreactorController.pH.PV", "unit": "[pH]"},
        ],
    }  # fmt: skip
    if args.timeout_s is not None:
        options["timeout_s"] = args.timeout_s
    config = {
        "area": "bench",
        "store": {"path": str(folder / "frozen.sqlite"), "commit_interval_ms": 20},
        "data_dir": str(folder / "data"),
        "instruments": [{
            "id": "dcu", "driver": "opcua", "backoff": {"initial_s": 0.1, "max_s": 1.0},
            "options": options,
        }],
    }  # fmt: skip
    path = folder / "frozen.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = load_plan(path, build_registry())
    device = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "emulate", "bioreactor", "--port", str(port),
        "--option", "update_s=0.1", "--option", "log_every_s=0", "--log-level", "error",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    gateway = Gateway(plan)
    stop = asyncio.Event()
    running = asyncio.create_task(gateway.run(stop), name="bench.gateway")
    runs: list[dict[str, Any]] = []
    try:
        await _until_started(gateway, running)
        temperature = next(o for o in gateway.outputs if o.signal.id.endswith("/temperature"))

        def quality() -> int | None:
            row = temperature.latest  # (def_id, seq, source_ts, gateway_ts, quality, value, ...)
            return row[4] if row is not None else None

        for _ in range(args.runs):
            await _until(lambda: quality() == Quality.GOOD, 120, "good data")
            os.kill(device.pid, signal.SIGSTOP)
            frozen = time.perf_counter()
            try:
                await _until(lambda: quality() == Quality.BAD, 120, "a bad sample")
                detected = time.perf_counter() - frozen
            finally:
                os.kill(device.pid, signal.SIGCONT)
            row = temperature.latest
            runs.append({"detection_s": round(detected, 2), "reason": row[6] if row else None})
    finally:
        stop.set()
        await running
        device.send_signal(signal.SIGTERM)
        await device.wait()
    times = [r["detection_s"] for r in runs]
    driver = plan.instruments[0].driver
    return {
        "benchmark": "opcua_frozen",
        "timeout_s": driver.options.timeout_s,  # type: ignore[attr-defined]
        "publishing_interval_ms": driver.options.publishing_interval_ms,  # type: ignore[attr-defined]
        "median_detection_s": round(statistics.median(times), 2) if times else None,
        "min_detection_s": min(times, default=None),
        "max_detection_s": max(times, default=None),
        "runs": runs,
        "python": platform.python_version(),
    }


async def _until_started(gateway: Gateway, running: asyncio.Task[Any]) -> None:
    await _until(lambda: gateway.started.is_set() or running.done(), 60, "the gateway to start")
    if running.done():
        running.result()


async def _until(condition: Any, within_s: float, what: str) -> None:
    deadline = time.perf_counter() + within_s
    while not condition():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no {what} within {within_s} s")
        await asyncio.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, help="the driver's timeout_s (default: its own)")
    args = parser.parse_args()
    configure_logging("json", "error")
    with tempfile.TemporaryDirectory(prefix="patgw-bench-") as folder:
        result = asyncio.run(measure(args, Path(folder)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
