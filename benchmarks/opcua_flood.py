"""A trusted OPC UA client logging in while connections that never log in flood the server.

The ``opcua_server`` sink runs here with its default limits, one user and one trusted client
certificate, on loopback. A separate process (the attacker, ``tests/opcua_flood.py``) keeps
``--flood`` connections open, each sending nothing (``silent``) or only a Hello (``hello``),
reopened ``--reopen-s`` after the server closes one, or at once (the hardest churn: it
saturates the server's event loop). The flood comes from 127.0.0.1, the client's own address,
and once, the hardest, from 127.0.0.2. Once every flood connection is in, the client, from a
process of its own, connects (Basic256Sha256 SignAndEncrypt, user name and password), reads
``ServerStatus.State`` and disconnects, ``--attempts`` times in a row.

    python benchmarks/opcua_flood.py --attempts 25

Prints one JSON object: per scenario the client's success rate (target 100 %) and its
time-to-connect (median, p95, max, in ms), with what the flood did (connections opened, closed
by the server). A baseline without a flood comes first. Bounded: at most ``--flood``
connections per scenario, each scenario ends when the attempts do (or after ``--seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from asyncua import ua

_TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(_TESTS))  # the attacker and the client of the flood tests

from conftest import free_port, make_client_cert, secure_client  # noqa: E402
from opcua_flood import ConnectionFlood  # noqa: E402

from gateway import PluginContext, hash_password  # noqa: E402
from gateway.control import Access  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.security import Authority, SecurityConfig  # noqa: E402
from plugins.opcua_server.options import OpcUaServerOptions  # noqa: E402
from plugins.opcua_server.sink import OpcUaServerSink  # noqa: E402

PASSWORD = "benchmark-secret"


def _attacker(
    port: int,
    count: int,
    kind: str,
    reopen_s: float,
    source: str,
    seconds: float,
    ready: Event,
    stop: Event,
) -> tuple[int, int]:
    async def run() -> tuple[int, int]:
        flood = ConnectionFlood("127.0.0.1", port, count, kind, reopen_s, source)  # type: ignore[arg-type]
        async with flood:
            await flood.all_opened_once()
            ready.set()
            await asyncio.to_thread(stop.wait, seconds)
        return flood.opened, flood.closed_by_server

    return asyncio.run(run())


def _attack(*args: Any) -> None:
    *flood, results = args
    results.put(_attacker(*flood))


async def _attempts(url: str, who: Any, server_cert: Path, attempts: int) -> dict[str, Any]:
    times_ms: list[float] = []
    failures: list[str] = []
    for _ in range(attempts):
        client = await secure_client(url, who, server_cert, "reader", PASSWORD)
        started = time.perf_counter()
        try:
            await client.connect()
            try:
                state = await client.nodes.server_state.read_value()
            finally:
                await client.disconnect()
        except (OSError, TimeoutError, ua.UaError) as exc:
            failures.append(type(exc).__name__)
            continue
        if state == ua.ServerState.Running:
            times_ms.append((time.perf_counter() - started) * 1000)
        else:
            failures.append(f"state {state}")
    ordered = sorted(times_ms)
    return {
        "attempts": attempts,
        "succeeded": len(times_ms),
        "success_rate_pct": round(100 * len(times_ms) / attempts, 1),
        "failures": sorted(set(failures)),
        "connect_read_ms": {
            "median": round(statistics.median(ordered), 1) if ordered else None,
            "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 1) if ordered else None,
            "max": round(ordered[-1], 1) if ordered else None,
        },
    }


def _client(url: str, who: Any, server_cert: Path, attempts: int, results: Any) -> None:
    results.put(asyncio.run(_attempts(url, who, server_cert, attempts)))


async def _logins(sink: OpcUaServerSink, who: Any, attempts: int) -> dict[str, Any]:
    """The client's attempts, from a process of its own, as a SCADA would connect."""
    assert sink.own_certificate is not None
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    args = (sink.endpoint_url, who, sink.own_certificate.cert_path, attempts, results)
    client = spawn.Process(target=_client, args=args, name="client")
    client.start()
    try:
        figures: dict[str, Any] = await asyncio.to_thread(results.get, True, 30 * attempts)
    finally:
        await asyncio.to_thread(client.join, 10)
    return figures


async def _scenario(
    sink: OpcUaServerSink,
    who: Any,
    args: argparse.Namespace,
    kind: str,
    reopen_s: float,
    source: str,
) -> dict[str, Any]:
    port = int(sink.endpoint_url.rsplit(":", 1)[1].split("/", 1)[0])
    spawn = multiprocessing.get_context("spawn")
    ready, stop, results = spawn.Event(), spawn.Event(), spawn.Queue()
    attacker = spawn.Process(
        target=_attack,
        args=(port, args.flood, kind, reopen_s, source, args.seconds, ready, stop, results),
        name=f"flood-{kind}",
    )
    attacker.start()
    try:
        await asyncio.to_thread(ready.wait, args.seconds)
        started = time.monotonic()
        figures = await _logins(sink, who, args.attempts)
        seconds = time.monotonic() - started
    finally:
        stop.set()
        opened, closed = await asyncio.to_thread(results.get, True, args.seconds + 10)
        await asyncio.to_thread(attacker.join, 10)
    return {
        "flood": {
            "kind": kind,
            "connections": args.flood,
            "reopen_s": reopen_s,
            "from": source,
        },
        "flood_opened": opened,
        "flood_closed_by_server": closed,
        "seconds": round(seconds, 1),
        "flood_closed_per_s": round(closed / seconds),  # over the attempts: a rough churn rate
        **figures,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("json", "error")
    folder = Path(tempfile.mkdtemp(prefix="opcua-flood-"))
    try:
        pool = {} if args.pool is None else {"max_unauthenticated": args.pool}
        options = OpcUaServerOptions(port=free_port(), **pool)
        users = SecurityConfig.model_validate(
            {
                "users": [
                    {
                        "name": "reader",
                        "password_hash": hash_password(PASSWORD),
                        "roles": ["viewer"],
                    }
                ],
                "lockout": None,
            }
        )
        access = Access(Authority(users), {})
        sink = OpcUaServerSink(options, PluginContext("northbound", folder / "data", access=access))
        async with sink:
            who = make_client_cert(folder / "client", "scada")
            shutil.copy(who.cert, sink.trusted_dir / who.cert.name)
            scenarios = [await _logins(sink, who, args.attempts) | {"flood": None}]
            for kind, reopen_s, source in (
                ("silent", args.reopen_s, "127.0.0.1"),
                ("hello", args.reopen_s, "127.0.0.1"),
                ("silent", 0.0, "127.0.0.1"),
                ("hello", 0.0, "127.0.0.1"),
                ("hello", 0.0, "127.0.0.2"),
            ):
                scenarios.append(await _scenario(sink, who, args, kind, reopen_s, source))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "benchmark": "opcua_flood",
        "limits": {
            name: getattr(options, name)
            for name in (
                "max_clients",
                "max_unauthenticated",
                "handshake_timeout_s",
                "activation_timeout_s",
            )
            if hasattr(options, name)
        },
        "scenarios": scenarios,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=150, help="flood connections (150)")
    parser.add_argument("--attempts", type=int, default=25, help="client logins per scenario")
    parser.add_argument("--reopen-s", type=float, default=0.5, help="attacker's reopen delay")
    parser.add_argument("--pool", type=int, help="max_unauthenticated (default: the sink's)")
    parser.add_argument("--seconds", type=float, default=120.0, help="longest a scenario runs")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
