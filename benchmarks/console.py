"""What browsers on the web console cost ingestion: prints JSON figures.

The pipeline benchmark's synthetic instrument (``--signals`` signals, ``--rate`` samples/s in
all) with the HTTP endpoint and its console, run ``--runs`` times each way: with no browser,
and with ``--clients`` logged-in event streams (``/events``) that read slowly (a pause of
``--read-pause-ms`` between reads) plus one that never reads, and ``--trend-clients`` trends
pages (``/trends/data`` of 8 signals over the last 15 minutes, 600 points, every 2 s, as
``static/trends.js`` asks). Reports the medians of the
committed rate and the commit p99 each way and their ratio, the gateway's resident memory
growth over the run with clients, how long the signals page takes (first values are in its
HTML) and how long the first event of a stream takes, and how many events the clients got.

    .venv/bin/python benchmarks/console.py [--seconds 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from pipeline import measure

from gateway import hash_password
from gateway.logs import configure_logging
from gateway.runtime import Gateway
from gateway.runtime.interpreter import configure_interpreter

_PASSWORD = "bench-password"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _call(port: int, raw: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def _login(port: int) -> str:
    form = urllib.parse.urlencode({"user": "bench", "password": _PASSWORD}).encode()
    head, _ = await _call(
        port,
        b"POST /login HTTP/1.1\r\nHost: b\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(form)}\r\n\r\n".encode()
        + form,
    )
    line = next(h for h in head.decode().split("\r\n") if h.lower().startswith("set-cookie:"))
    return line.split(":", 1)[1].strip().split(";")[0]


async def _stream(port: int, cookie: str, pause_s: float | None, got: dict[str, Any]) -> None:
    """One browser: reads its event stream (``pause_s`` between reads), or never (None)."""
    sock = socket.socket()
    if pause_s is None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    started = time.perf_counter()
    writer.write(f"GET /events HTTP/1.1\r\nHost: b\r\nCookie: {cookie}\r\n\r\n".encode())
    try:
        if pause_s is None:
            await asyncio.Future()  # never reads
        while True:
            data = await reader.read(65536)
            if not data:
                got["closed"] += 1
                return
            events = data.count(b"event: signal")
            if events and "first_event_ms" not in got:
                got["first_event_ms"] = round((time.perf_counter() - started) * 1000, 1)
            got["events"] += events
            await asyncio.sleep(pause_s)
    except ConnectionError:
        got["closed"] += 1
    finally:
        writer.close()


async def _trends(port: int, cookie: str, got: dict[str, Any]) -> None:
    """One trends page: its data every 2 s (eight signals, 15 minutes, 600 points)."""
    query = "&".join(f"signal=bench/synth/s{i}" for i in range(8)) + "&window=900&points=600"
    request = f"GET /trends/data?{query} HTTP/1.1\r\nHost: b\r\nCookie: {cookie}\r\n\r\n"
    while True:
        started = time.perf_counter()
        head, _ = await _call(port, request.encode())
        got["trend_reads_ms"].append(round((time.perf_counter() - started) * 1000, 1))
        got["trend_statuses"].add(int(head.split(b" ", 2)[1]))
        await asyncio.sleep(2.0)


async def _browsers(gateway: Gateway, args: argparse.Namespace, got: dict[str, Any]) -> None:
    assert gateway.http_address is not None
    port = gateway.http_address[1]
    cookie = await _login(port)
    started = time.perf_counter()
    head, body = await _call(
        port, f"GET /signals HTTP/1.1\r\nHost: b\r\nCookie: {cookie}\r\n\r\n".encode()
    )
    got["signals_page_ms"] = round((time.perf_counter() - started) * 1000, 1)
    got["signals_page_status"] = int(head.split(b" ", 2)[1])
    got["signals_page_rows_with_values"] = body.count(b'class="quality q-good"')
    got["rss_start_mb"] = round(_rss_mb(), 1)
    pause_s = args.read_pause_ms / 1000
    tasks = [
        asyncio.create_task(_stream(port, cookie, pause_s, got), name=f"bench.browser{i}")
        for i in range(args.clients)
    ]
    tasks.append(asyncio.create_task(_stream(port, cookie, None, got), name="bench.stalled"))
    tasks += [
        asyncio.create_task(_trends(port, cookie, got), name=f"bench.trends{i}")
        for i in range(args.trend_clients)
    ]
    try:
        await asyncio.Future()
    finally:
        got["rss_end_mb"] = round(_rss_mb(), 1)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def _run(args: argparse.Namespace, with_clients: bool) -> dict[str, Any]:
    got: dict[str, Any] = {"events": 0, "closed": 0, "trend_reads_ms": [], "trend_statuses": set()}
    extra = (
        "http: {host: 127.0.0.1, port: 0}\n"
        "security:\n  users:\n"
        f'    - {{name: bench, roles: [viewer], password_hash: "{args.hash}"}}\n'
    )
    with tempfile.TemporaryDirectory(prefix="patgw-console-") as folder:

        async def during(gateway: Gateway) -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await _browsers(gateway, args, got)

        result = await measure(
            args.seconds,
            args.signals,
            args.rate,
            args.commit_ms,
            Path(folder),
            extra=extra,
            during=during if with_clients else None,
        )
    reads = got.pop("trend_reads_ms")
    got["trend_statuses"] = sorted(got["trend_statuses"])
    if reads:
        got["trend_reads"] = len(reads)
        got["trend_read_median_ms"] = statistics.median(reads)
        got["trend_read_max_ms"] = max(reads)
    return {**result, **got}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--signals", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10_000.0, help="samples/s in all")
    parser.add_argument("--commit-ms", type=int, default=100)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--read-pause-ms", type=float, default=200.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trend-clients", type=int, default=2, help="trends pages open")
    args = parser.parse_args()
    args.hash = hash_password(_PASSWORD)
    configure_logging("json", "warning")
    configure_interpreter()
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    for _ in range(args.runs):  # alternated, so a change in the machine's load hits both
        for way in runs:
            runs[way].append(asyncio.run(_run(args, way == "with")))

    def median(way: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[way]))

    rate = {way: median(way, "samples_per_s") for way in runs}
    p99 = {way: median(way, "p99_commit_latency_ms") for way in runs}
    clients = runs["with"]
    print(
        json.dumps(
            {
                "benchmark": "console",
                "signals": args.signals,
                "offered_per_s": args.rate,
                "seconds": args.seconds,
                "runs_each_way": args.runs,
                "clients_reading": args.clients,
                "clients_stalled": 1,
                "samples_per_s_without": rate["without"],
                "samples_per_s_with": rate["with"],
                "rate_ratio": round(rate["with"] / rate["without"], 4),
                "p99_commit_ms_without": p99["without"],
                "p99_commit_ms_with": p99["with"],
                "p99_ratio": round(p99["with"] / p99["without"], 3) if p99["without"] else None,
                "dropped_with": [r["dropped"] for r in clients],
                "rss_growth_mb_with": [
                    round(r["rss_end_mb"] - r["rss_start_mb"], 1) for r in clients
                ],
                "signals_page_ms": [r["signals_page_ms"] for r in clients],
                "signals_page_rows_with_values": [
                    r["signals_page_rows_with_values"] for r in clients
                ],
                "first_event_ms": [r.get("first_event_ms") for r in clients],
                "events_received": [r["events"] for r in clients],
                "reading_streams_cut_off": [r["closed"] for r in clients],
                "trend_clients": args.trend_clients,
                "trend_reads": [r.get("trend_reads") for r in clients],
                "trend_statuses": [r["trend_statuses"] for r in clients],
                "trend_read_median_ms": [r.get("trend_read_median_ms") for r in clients],
                "trend_read_max_ms": [r.get("trend_read_max_ms") for r in clients],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
