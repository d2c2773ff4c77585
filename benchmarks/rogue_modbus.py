"""Rogue Modbus devices: how much they make the gateway log, and whether a healthy instrument
polled alongside them keeps its pace.

Starts ``--rogues`` rogue Modbus TCP devices on loopback (default 13, cycling through the
misbehaviours below), each written here as raw asyncio over a socket (not pymodbus, not the
drivers' code), and the feed pump emulator as the healthy instrument; runs the real gateway
(runtime, store, ``modbus`` driver) polling all of them every ``--poll-s`` seconds for
``--seconds``, logging JSON at ``info`` as ``patgw run`` does, into a counter instead of a
terminal. Prints one JSON object:

    python benchmarks/rogue_modbus.py                    # 13 rogues, 120 s
    python benchmarks/rogue_modbus.py --seconds 30       # the quick run
    python benchmarks/rogue_modbus.py --no-limits        # log without rate limit and cutting

Misbehaviours: ``silence`` (reads, never answers), ``wrong_transaction``, ``wrong_unit``,
``garbage`` (a 200-byte burst that is no frame, per request), ``garbage_stream`` (garbage in
small pieces every 5 ms while connected, whatever is asked: each piece makes pymodbus log an
error with a hex dump of its last frames), ``byte_count_high`` (a byte count beyond the frame),
``byte_count_low``, ``too_many_registers``, ``too_few_registers``, ``wrong_function``,
``exception`` (illegal data address), ``reset_mid_frame`` (half a reply, then an RST),
``close`` (closes on each request).

Figures: ``log_bytes_per_rogue_per_hour`` = bytes of log lines attributed to the rogue
instruments (their ``instrument`` field: the gateway's own lines and the libraries' lines
logged on their behalf) / rogues / run time * 3600 (``max`` over single rogues too). The run
is short, so this extrapolation over-states an hour: a kind of line is written on its first
occurrence and then at most once per ``repeat_window_s`` (60 s), and the reconnect backoff
(0.5 s growing to 30 s) has not reached its cap yet. Target ≤ 1 MB per device per hour.
``longest_line`` in bytes. ``suppressed``: lines counted instead of written.
``healthy_max_gap_s``: the largest interval between consecutive samples of the healthy
instrument's ``flow`` (source timestamps from the store) over the run; ``gaps_over_2_polls``:
how many intervals exceeded two poll periods (target 0). ``reasons``: the last stored reason
of each rogue's signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from firmware_stubs.feed_pump import FeedPumpEmulator
from gateway import build_registry, load_plan
from gateway.logs import configure_logging
from gateway.runtime import Gateway
from gateway.runtime.interpreter import configure_interpreter
from gateway.store import SampleStore

Request = tuple[int, int, int, int]  # transaction, unit, function, count
GARBAGE = bytes(range(0x20, 0x7F)) * 3


def _frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def _reply(tid: int, unit: int, function: int, count: int) -> bytes:
    data = b"".join(struct.pack(">H", 1000 + i) for i in range(count))
    return _frame(tid, unit, bytes([function, 2 * count]) + data)


# Each misbehaviour: request -> (bytes to send, then "stay" | "reset" | "close" | "stream").
MISBEHAVIOURS: dict[str, Callable[[Request], tuple[bytes, str]]] = {
    "silence": lambda r: (b"", "stay"),
    "wrong_transaction": lambda r: (_reply(r[0] + 1000, r[1], r[2], r[3]), "stay"),
    "wrong_unit": lambda r: (_reply(r[0], 9, r[2], r[3]), "stay"),
    "garbage": lambda r: (GARBAGE[:200], "stay"),
    "garbage_stream": lambda r: (b"", "stream"),
    "byte_count_high": lambda r: (_frame(r[0], r[1], bytes([r[2], 200, 0, 1])), "stay"),
    "byte_count_low": lambda r: (
        _frame(r[0], r[1], bytes([r[2], 2]) + b"\x00\x01" * r[3]),
        "stay",
    ),
    "too_many_registers": lambda r: (_reply(r[0], r[1], r[2], r[3] + 2), "stay"),
    "too_few_registers": lambda r: (_reply(r[0], r[1], r[2], max(r[3] - 1, 0)), "stay"),
    "wrong_function": lambda r: (_reply(r[0], r[1], 4 if r[2] == 3 else 3, r[3]), "stay"),
    "exception": lambda r: (_frame(r[0], r[1], bytes([r[2] | 0x80, 2])), "stay"),
    "reset_mid_frame": lambda r: (_reply(r[0], r[1], r[2], r[3])[:5], "reset"),
    "close": lambda r: (b"", "close"),
}


async def _stream_garbage(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            writer.write(GARBAGE[:60])
            await writer.drain()
            await asyncio.sleep(0.005)


async def start_rogue(kind: str) -> asyncio.Server:
    script = MISBEHAVIOURS[kind]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        streamer: asyncio.Task[None] | None = None
        try:
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                function, _address, count = struct.unpack(">BHH", pdu[:5])
                data, then = script((tid, unit, function, count))
                if data:
                    writer.write(data)
                    await writer.drain()
                if then == "stream" and streamer is None:
                    streamer = asyncio.create_task(
                        _stream_garbage(writer), name=f"rogue.{kind}.stream"
                    )
                elif then == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                elif then == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if streamer is not None:
                streamer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await streamer
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


class LogCounter:
    """Stands in for standard error: counts each JSON line's bytes by instrument."""

    def __init__(self) -> None:
        self.partial = ""
        self.bytes_by_source: dict[str, int] = {}
        self.lines = 0
        self.longest = 0
        self.suppressed = 0

    def write(self, text: str) -> int:
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            size = len(line.encode()) + 1
            self.lines += 1
            self.longest = max(self.longest, size)
            try:
                event = json.loads(line)
            except ValueError:
                event = {}
            source = str(event.get("instrument") or "gateway")
            self.bytes_by_source[source] = self.bytes_by_source.get(source, 0) + size
            self.suppressed += int(event.get("suppressed", 0))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


async def measure(args: argparse.Namespace, folder: Path, counter: LogCounter) -> dict[str, Any]:
    kinds = [list(MISBEHAVIOURS)[i % len(MISBEHAVIOURS)] for i in range(args.rogues)]
    rogues = [await start_rogue(kind) for kind in kinds]
    pump = FeedPumpEmulator()
    await pump.start()
    try:
        instruments: list[dict[str, Any]] = [
            {
                "id": "healthy",
                "driver": "modbus",
                "poll_interval_s": args.poll_s,
                "options": {"port": pump.port, "profile": "feed_pump"},
                "signals": [{"id": "flow"}],
            }
        ]
        for i, (kind, server) in enumerate(zip(kinds, rogues, strict=True)):
            instruments.append(
                {
                    "id": f"rogue{i:02d}_{kind}",
                    "driver": "modbus",
                    "poll_interval_s": args.poll_s,
                    "options": {
                        "port": server.sockets[0].getsockname()[1],
                        "registers": [{"name": "flow", "address": 4, "type": "float32"}],
                    },
                    "signals": [{"id": "flow"}],
                }
            )
        config = {
            "area": "bench",
            "store": {"path": str(folder / "store.sqlite")},
            "data_dir": str(folder / "data"),
            "instruments": instruments,
        }
        path = folder / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = Gateway(load_plan(path, build_registry()))
        started = time.monotonic()
        await gateway.run(asyncio.Event(), duration_s=args.seconds)
        elapsed = time.monotonic() - started
    finally:
        await pump.stop()
        for server in rogues:
            server.close()
            await server.wait_closed()
    store = SampleStore(folder / "store.sqlite")
    try:
        samples = list(store.samples())
    finally:
        store.close()
    healthy = [s.source_ts for s in samples if s.signal == "bench/healthy/flow" and s.source_ts]
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(healthy)]
    reasons = {
        s.signal.split("/")[1]: s.reason for s in samples if s.signal != "bench/healthy/flow"
    }
    rogue_bytes = {k: v for k, v in counter.bytes_by_source.items() if k.startswith("rogue")}
    per_hour = 3600 / elapsed
    return {
        "benchmark": "rogue_modbus",
        "seconds": round(elapsed, 1),
        "rogues": args.rogues,
        "poll_s": args.poll_s,
        "limits": not args.no_limits,
        "log_lines": counter.lines,
        "log_bytes": sum(counter.bytes_by_source.values()),
        "log_bytes_per_rogue_per_hour": round(sum(rogue_bytes.values()) / args.rogues * per_hour),
        "max_log_bytes_per_rogue_per_hour": round(max(rogue_bytes.values(), default=0) * per_hour),
        "target_bytes_per_rogue_per_hour": 1_000_000,
        "longest_line": counter.longest,
        "suppressed": counter.suppressed,
        "healthy_samples": len(healthy),
        "healthy_max_gap_s": round(max(gaps, default=0.0), 3),
        "gaps_over_2_polls": sum(1 for g in gaps if g > 2 * args.poll_s),
        "reasons": reasons,
        "log_bytes_by_rogue": rogue_bytes,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rogues", type=int, default=13)
    parser.add_argument("--poll-s", type=float, default=0.5, help="poll period of every device")
    parser.add_argument(
        "--no-limits", action="store_true", help="no repeat limit, no cutting (as before)"
    )
    args = parser.parse_args()
    counter = LogCounter()
    stdout: TextIO = sys.stdout
    sys.stderr = counter  # type: ignore[assignment]  # the gateway logs to the current stderr
    if args.no_limits:
        configure_logging("json", "info", repeat_window_s=0, max_chars=10**9)
    else:
        configure_logging("json", "info")
    configure_interpreter()  # as patgw run does
    try:
        with tempfile.TemporaryDirectory(prefix="patgw-rogue-") as folder:
            result = asyncio.run(measure(args, Path(folder), counter))
    finally:
        sys.stderr = sys.__stderr__
    print(json.dumps(result), file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
