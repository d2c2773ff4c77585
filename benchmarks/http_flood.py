"""Liveness probes during a slowloris flood of the gateway's HTTP endpoint, on loopback.

A real gateway (a synthetic instrument at ``--rate`` samples/s, the store, ``http:`` on a free
loopback port) runs in this process. For each phase, a prober process asks ``/health/live``
``--probes`` times, one every ``--interval-ms``, each with a ``--timeout-s`` budget for the
whole exchange (a Kubernetes probe's default is 1 s): a probe succeeds on a ``200`` with
``{"live": true}`` in time. Phases:

* ``baseline``: no attack;
* ``flood_<source>``: meanwhile an attacker process keeps ``--connections`` half-open
  connections from ``<source>`` (each sent a request line and ``Host``, then one more header
  line a second, never the empty line), re-opening at once each one the gateway closes — from
  127.0.0.2 (another address than the prober's) and from 127.0.0.1 (the same address) by
  default. With more connections than the endpoint's cap (32), that is a flood of new
  connections too, as fast as the attacker can open them.

    python benchmarks/http_flood.py
    python benchmarks/http_flood.py --connections 200 --probes 300

Prints one JSON object: per phase the probe success rate (target 1.0), latency percentiles in
ms (successful probes), the attacker's connection count, the connections the endpoint evicted
(``patgw_http_connections_evicted_total``) and the samples committed per second meanwhile.
Bounded: every process ends within ``--probes * (interval + timeout)`` plus a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import selectors
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from pipeline import SyntheticPlugin  # the same synthetic driver as the pipeline benchmark

from gateway import build_registry, load_plan
from gateway.logs import configure_logging
from gateway.runtime import Gateway

_HEAD = b"GET /health/live HTTP/1.1\r\nHost: gw\r\n"


def _attack(port: int, source: str, count: int, max_s: float) -> int:
    """The attacker process: hold ``count`` half-open connections until stdin closes (or
    ``max_s`` passes); print ``ready`` once all were opened, and at the end a JSON line."""
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    held: set[socket.socket] = set()
    opened = 0
    failed_connects = 0

    def open_one() -> None:
        nonlocal opened, failed_connects
        sock = socket.socket()
        try:
            sock.settimeout(1.0)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(_HEAD)
        except OSError:
            failed_connects += 1
            sock.close()
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        held.add(sock)
        opened += 1

    def drop(sock: socket.socket) -> None:
        selector.unregister(sock)
        held.discard(sock)
        sock.close()

    for _ in range(count):
        open_one()
    print("ready", flush=True)
    end = time.monotonic() + max_s
    trickle_at = time.monotonic() + 1.0
    running = True
    while running and time.monotonic() < end:
        for key, _ in selector.select(timeout=0.05):
            if key.fileobj is sys.stdin:
                running = False
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if not sock.recv(4096):
                    drop(sock)  # closed (evicted, or answered 408)
            except OSError:
                drop(sock)
        if time.monotonic() >= trickle_at:
            trickle_at += 1.0
            for sock in list(held):
                try:
                    sock.send(b"X-Trickle: 1\r\n")
                except OSError:
                    drop(sock)
        for _ in range(count - len(held)):
            open_one()
    for sock in list(held):
        drop(sock)
    print(json.dumps({"opened": opened, "failed_connects": failed_connects}), flush=True)
    return 0


def _probe_once(port: int, timeout_s: float) -> float | None:
    """One ``/health/live`` exchange: its duration in ms, or None if it failed."""
    started = time.perf_counter()
    deadline = started + timeout_s
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: gw\r\n\r\n")
            raw = b""
            while True:
                sock.settimeout(max(deadline - time.perf_counter(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
    except OSError:
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 ") or json.loads(body or b"null") != {"live": True}:
        return None
    return (time.perf_counter() - started) * 1000


def _probe(port: int, count: int, interval_s: float, timeout_s: float) -> int:
    """The prober process: prints a JSON list of the probes' durations (null: failed)."""
    durations = []
    for _ in range(count):
        durations.append(_probe_once(port, timeout_s))
        time.sleep(interval_s)
    print(json.dumps(durations), flush=True)
    return 0


async def _child(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def _evicted(port: int) -> int | None:
    """``patgw_http_connections_evicted_total`` summed over phases, read from /metrics (None:
    not answered, as by a gateway whose slots the flood holds).

    Asked from this process, whose loop is the gateway's: the request is written after the
    connection is accepted, so during a flood from 127.0.0.1 it may be evicted like a
    half-open one (a probe from another process is not): ask again, a few times."""
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
        try:
            async with asyncio.timeout(10):
                text = (await reader.read()).decode()
        except OSError:
            continue
        finally:
            writer.close()
        if text.startswith("HTTP/1.1 200 "):
            return sum(
                int(float(line.rsplit(" ", 1)[1]))
                for line in text.splitlines()
                if line.startswith("patgw_http_connections_evicted_total{")
            )
    return None


def _less(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1], 2)


async def _phase(
    gateway: Gateway, port: int, source: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    attacker = None
    attack: dict[str, Any] = {}
    if source is not None:
        attacker = await _child(
            "--attack",
            str(port),
            source,
            str(args.connections),
            str(args.probes * (args.interval_ms / 1000 + args.timeout_s) + 30),
        )
        assert attacker.stdout is not None
        async with asyncio.timeout(60):
            await attacker.stdout.readline()  # "ready"
    evicted_before = await _evicted(port)
    committed_before = gateway.stats.committed
    started = time.perf_counter()
    prober = await _child(
        "--probe", str(port), str(args.probes), str(args.interval_ms / 1000), str(args.timeout_s)
    )
    out, _ = await prober.communicate()
    elapsed = time.perf_counter() - started
    committed = gateway.stats.committed - committed_before
    if attacker is not None:
        assert attacker.stdin is not None and attacker.stdout is not None
        attacker.stdin.close()
        async with asyncio.timeout(30):
            attack = json.loads(await attacker.stdout.readline())
            await attacker.wait()
    durations: list[float | None] = json.loads(out)
    ok = [d for d in durations if d is not None]
    return {
        "attacker_source": source,
        "attacker_connections": args.connections if source else 0,
        "attacker_connections_opened": attack.get("opened", 0),
        "probes": len(durations),
        "probes_succeeded": len(ok),
        "probe_success_rate": round(len(ok) / len(durations), 4),
        "probe_latency_ms": {
            "p50": _percentile(ok, 0.50),
            "p90": _percentile(ok, 0.90),
            "p99": _percentile(ok, 0.99),
            "max": round(max(ok), 2) if ok else None,
        },
        "connections_evicted": _less(await _evicted(port), evicted_before),
        "committed_per_s": round(committed / elapsed),
    }


async def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    config = {
        "area": "bench",
        "store": {"path": str(folder / "s.sqlite"), "commit_interval_ms": 100},
        "data_dir": str(folder / "data"),
        "http": {"host": "127.0.0.1", "port": 0},
        "instruments": [
            {"id": "synth", "driver": "synthetic", "options": {"signals": 20, "rate": args.rate}}
        ],
    }
    path = folder / "g.yaml"
    path.write_text(yaml.safe_dump(config))
    gateway = Gateway(load_plan(path, build_registry([SyntheticPlugin()], entry_points=False)))
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop), name="bench.gateway")
    try:
        started = asyncio.create_task(gateway.started.wait(), name="bench.started")
        await asyncio.wait({run, started}, return_when=asyncio.FIRST_COMPLETED)
        if run.done():
            started.cancel()
            run.result()
        assert gateway.http_address is not None
        port = gateway.http_address[1]
        phases = {"baseline": await _phase(gateway, port, None, args)}
        for source in args.sources.split(","):
            phases[f"flood_{source}"] = await _phase(gateway, port, source, args)
    finally:
        stop.set()
        await run
    return {
        "benchmark": "http_flood",
        "probe_interval_ms": args.interval_ms,
        "probe_timeout_s": args.timeout_s,
        "offered_per_s": args.rate,
        "phases": phases,
        "python": platform.python_version(),
    }


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--attack":
        port, source, count, max_s = sys.argv[2:]
        return _attack(int(port), source, int(count), float(max_s))
    if len(sys.argv) == 6 and sys.argv[1] == "--probe":
        port, count, interval_s, timeout_s = sys.argv[2:]
        return _probe(int(port), int(count), float(interval_s), float(timeout_s))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100, help="half-open connections")
    parser.add_argument("--sources", default="127.0.0.2,127.0.0.1", help="attacker addresses")
    parser.add_argument("--probes", type=int, default=200, help="probes per phase")
    parser.add_argument("--interval-ms", type=float, default=50.0, help="between probes")
    parser.add_argument("--timeout-s", type=float, default=1.0, help="budget of one probe")
    parser.add_argument("--rate", type=float, default=2_000.0, help="samples/s ingested")
    args = parser.parse_args()
    if not 1 <= args.probes <= 10_000 or not 1 <= args.connections <= 2_000:
        parser.error("--probes must be 1..10000 and --connections 1..2000")
    configure_logging("json", "error")
    with tempfile.TemporaryDirectory(prefix="patgw-bench-") as folder:
        result = asyncio.run(measure(args, Path(folder)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
