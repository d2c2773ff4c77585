"""What the live view's summary logs cost when ``patgw run`` is not on a terminal.

Every ``view.log_every_s`` (10 s by default) :func:`gateway.runtime.view.log_summary` logs one
line per signal (and per sink). This script builds ``--instruments`` x ``--signals`` real
signal outputs, gives each a reading, configures logging as ``patgw run`` does (``--format``
console or json, to a null stream) and runs ``--periods`` summaries, each after every value
changed (``--changing``, the worst case: no line is a repeat) or with the values unchanged
(the repeat limiter then counts instead of writing, while it remembers fewer kinds than there
are signals; ``--repeat-window-s 0`` switches it off). Prints JSON: CPU milliseconds
(``time.process_time``) and wall milliseconds per summary (the best period), lines and bytes
written per summary, and the event loop's longest stall (the summary yields every 100 lines).

    python benchmarks/view_summary.py                      # 60 x 100 signals, changing values
    python benchmarks/view_summary.py --format json --steady
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import sys
import time
from types import SimpleNamespace
from typing import Any

from gateway import Signal
from gateway.logs import REPEAT_WINDOW_S, configure_logging
from gateway.runtime.outputs import SignalOutput
from gateway.runtime.view import log_summary
from gateway.units import Conversion


class _CountingNull(io.TextIOBase):
    def __init__(self) -> None:
        self.lines = 0
        self.bytes = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        self.bytes += len(text.encode())
        return len(text)


async def _stalls(stop: asyncio.Event, worst: list[float]) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0)
        worst[0] = max(worst[0], time.perf_counter() - before)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    outputs = []
    for i in range(args.instruments):
        for j in range(args.signals):
            signal = Signal(f"area/instrument{i:03d}/signal{j:03d}", "mL/min", instrument=f"i{i}")
            outputs.append(SignalOutput(signal, Conversion(), i * args.signals + j, 0, _drop))
    gateway: Any = SimpleNamespace(
        outputs=outputs, forwarders=[], feeders=[], plan=SimpleNamespace(emulators=())
    )
    sink = _CountingNull()
    saved = sys.stderr
    sys.stderr = sink
    try:
        configure_logging(args.format, repeat_window_s=args.repeat_window_s)
        cpu, wall, lines, size, stall = [], [], [], [], []
        for period in range(args.periods):
            for n, output in enumerate(outputs):
                output.publish((1.0 + n) * (1.0 + (period if args.changing else 0) * 1e-3))
            sink.lines = sink.bytes = 0
            stop = asyncio.Event()
            worst = [0.0]
            watcher = asyncio.create_task(_stalls(stop, worst), name="bench.stalls")
            await asyncio.sleep(0)
            c0, w0 = time.process_time(), time.perf_counter()
            await log_summary(gateway)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            stop.set()
            await watcher
            lines.append(sink.lines)
            size.append(sink.bytes)
            stall.append(worst[0])
    finally:
        sys.stderr = saved
    # The first period fills the repeat limiter; later ones show the steady state.
    return {
        "signals": len(outputs),
        "format": args.format,
        "values": "changing" if args.changing else "steady",
        "repeat_window_s": args.repeat_window_s,
        "cpu_ms_per_summary_best": round(min(cpu[1:] or cpu) * 1e3, 1),
        "cpu_ms_per_summary_first": round(cpu[0] * 1e3, 1),
        "wall_ms_per_summary_best": round(min(wall[1:] or wall) * 1e3, 1),
        "lines_per_summary": lines[1:] or lines,
        "kbytes_per_summary": [round(b / 1e3, 1) for b in (size[1:] or size)],
        "longest_loop_stall_ms": round(max(stall) * 1e3, 2),
        "python": platform.python_version(),
    }


def _drop(row: object) -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instruments", type=int, default=60)
    parser.add_argument("--signals", type=int, default=100, help="signals per instrument")
    parser.add_argument("--periods", type=int, default=4)
    parser.add_argument("--format", choices=("console", "json"), default="console")
    parser.add_argument("--steady", dest="changing", action="store_false")
    parser.add_argument(
        "--repeat-window-s",
        type=float,
        default=REPEAT_WINDOW_S,
        help="the log's repeat window (0: no repeat limiter)",
    )
    print(json.dumps(asyncio.run(_run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
