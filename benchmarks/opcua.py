"""Throughput of OPC UA both ways, through the real runtime and store.

``notifications_per_s``: an asyncua server (a separate process on loopback, no security: the
device is not what is measured) changes ``--variables`` Double variables every ``--period-ms``;
the gateway's ``opcua`` driver subscribes to all of them
(sampling 0 ms = every change, publishing every 50 ms) and every notification is published,
converted and committed. Counted: samples committed per second of the run.

``server_updates_per_s``: a synthetic driver publishes ``--rate`` samples/s over 100 signals;
the store commits them and the ``opcua_server`` sink writes each one into its address space
(secure endpoints only, no client connected). Counted: samples the sink took per second.

    python benchmarks/opcua.py --seconds 10

Prints one JSON object with both figures and what they were measured under.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from asyncua import Server, ua
from pipeline import SyntheticPlugin  # the same synthetic driver as the pipeline benchmark

from gateway import (
    build_registry,
    hash_password,
    load_plan,
)
from gateway.logs import configure_logging
from gateway.runtime import Gateway

NAMESPACE = "urn:pat-gateway:benchmark"


async def _device(
    port: int, variables: int, period_s: float, stop: asyncio.Event
) -> tuple[int, float]:
    """A server whose variables all change every ``period_s``; returns how many changes it
    made and over how many seconds of serving."""
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    index = await server.register_namespace(NAMESPACE)
    folder = await server.nodes.objects.add_object(index, "Bench")
    nodes = [
        await folder.add_variable(ua.NodeId(f"v{i}", index), f"v{i}", 0.0) for i in range(variables)
    ]
    changes = 0
    async with server:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        value = 0.0
        while not stop.is_set():
            value += 1.0
            for node in nodes:
                await server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(value)))
            changes += len(nodes)
            deadline += period_s
            await asyncio.sleep(max(0.0, deadline - loop.time()))
        return changes, time.perf_counter() - started


async def notifications(
    seconds: float, variables: int, period_ms: float, folder: Path
) -> dict[str, Any]:
    port = _free_port()
    nodes = [{"name": f"v{i}", "node": f"b:v{i}", "unit": "1"} for i in range(variables)]
    config = {
        "area": "bench",
        "store": {"path": str(folder / "n.sqlite"), "commit_interval_ms": 100},
        "data_dir": str(folder / "data"),
        "instruments": [
            {
                "id": "device",
                "driver": "opcua",
                "options": {
                    "url": f"opc.tcp://127.0.0.1:{port}/",
                    "namespaces": {"b": NAMESPACE},
                    "sampling_interval_ms": 0,
                    "publishing_interval_ms": 50,
                    "nodes": nodes,
                },
            }
        ],
    }
    path = folder / "n.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = load_plan(path, build_registry())
    device = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--device", str(port), str(variables), str(period_ms),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await _until_listening(port)
        gateway = Gateway(plan)
        started = time.perf_counter()
        summary = await gateway.run(asyncio.Event(), duration_s=seconds)
        elapsed = time.perf_counter() - started
    finally:
        device.send_signal(signal.SIGTERM)
        out, _ = await device.communicate()
    changes_per_s = json.loads(out)["changes_per_s"] if out else None
    return {
        "variables": variables,
        "period_ms": period_ms,
        "changes_offered_per_s": changes_per_s,
        "notifications_committed": summary.committed,
        "notifications_per_s": round(summary.committed / elapsed),
        "p99_commit_latency_ms": round(gateway.stats.latency_percentile(0.99) or 0.0, 2),
    }


async def _until_listening(port: int) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return
    raise RuntimeError(f"the device did not listen on {port}")


def _serve_device(port: int, variables: int, period_ms: float) -> int:
    """The device process: serve until SIGTERM, then print the change rate as JSON."""

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        changes, serving_s = await _device(port, variables, period_ms / 1000, stop)
        print(json.dumps({"changes_per_s": round(changes / serving_s)}))

    asyncio.run(main())
    return 0


async def server_updates(seconds: float, rate: float, folder: Path) -> dict[str, Any]:
    config = {
        "area": "bench",
        "store": {"path": str(folder / "s.sqlite"), "commit_interval_ms": 100},
        "data_dir": str(folder / "data"),
        "instruments": [
            {"id": "synth", "driver": "synthetic", "options": {"signals": 100, "rate": rate}}
        ],
        "sinks": [
            {
                "id": "opcua",
                "type": "opcua_server",
                "options": {"port": _free_port()},
            }
        ],
        "security": {
            "users": [
                {"name": "bench", "password_hash": hash_password("bench"), "roles": ["viewer"]}
            ]
        },
    }
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(config))
    # The synthetic driver is inline; the sink is the installed plugin.
    plan = load_plan(path, build_registry([SyntheticPlugin()]))
    gateway = Gateway(plan)
    started = time.perf_counter()
    summary = await gateway.run(asyncio.Event(), duration_s=seconds)
    elapsed = time.perf_counter() - started
    delivered = summary.sinks["opcua"]["delivered"]
    return {
        "offered_per_s": rate,
        "samples_committed": summary.committed,
        "server_updates": delivered,
        "server_updates_lost": summary.sinks["opcua"]["lost"],
        "server_updates_per_s": round(delivered / elapsed),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    north = await notifications(args.seconds, args.variables, args.period_ms, folder)
    south = await server_updates(args.seconds, args.rate, folder)
    return {
        "benchmark": "opcua",
        "seconds": args.seconds,
        "notifications_per_s": north["notifications_per_s"],
        "server_updates_per_s": south["server_updates_per_s"],
        "driver": north,
        "server": south,
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": platform.python_version(),
    }


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--device":
        return _serve_device(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--variables", type=int, default=200, help="device variables")
    parser.add_argument("--period-ms", type=float, default=20.0, help="device change period")
    parser.add_argument("--rate", type=float, default=20_000.0, help="samples/s into the sink")
    args = parser.parse_args()
    configure_logging("json", "error")
    with tempfile.TemporaryDirectory(prefix="patgw-bench-") as folder:
        result = asyncio.run(measure(args, Path(folder)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
