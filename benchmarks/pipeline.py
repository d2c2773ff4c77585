"""Throughput of the hot path: synthetic samples → normalisation → durable SQLite store.

Runs the real runtime (supervisor, instrument runner, unit conversion, store writer thread)
with a synthetic driver that publishes as fast as it can, for ``--seconds``, and prints JSON:

    python benchmarks/pipeline.py --seconds 10 --signals 100

The driver offers ``--rate`` samples/s (default 100,000). ``samples_per_s`` counts samples
*committed* (after the final flush) per second of wall time, so it equals the offered rate only
if the pipeline keeps up; a growing ``p99_commit_latency_ms`` shows it does not.
``p99_commit_latency_ms`` is the 99th percentile, over batches, of the time from a batch's
oldest sample being published to its commit; ``rss_mb`` is the peak resident set size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from gateway import (
    Channel,
    InstrumentIO,
    PluginContext,
    Registry,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.logs import configure_logging
from gateway.runtime import Gateway
from gateway.runtime.interpreter import configure_interpreter


class SyntheticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signals: int = 100
    rate: float = 100_000.0


class SyntheticDriver:
    """Publishes ``rate`` readings per second round-robin over its signals, every 5 ms.

    No I/O: the measured cost is the gateway's alone. ``published`` counts what was offered.
    """

    published = 0

    def __init__(self, options: SyntheticOptions, context: PluginContext) -> None:
        self.options = options

    def channels(self) -> Sequence[Channel]:
        return [Channel(f"s{i}", "mL/min") for i in range(self.options.signals)]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        outputs = [io.output(f"s{i}").publish for i in range(self.options.signals)]
        n = len(outputs)
        loop = asyncio.get_running_loop()
        start = loop.time()
        value = 0.0
        while True:
            due = int((loop.time() - start) * self.options.rate)
            for k in range(SyntheticDriver.published, due):
                outputs[k % n](value)
                value += 0.25
            SyntheticDriver.published = max(due, SyntheticDriver.published)
            await asyncio.sleep(0.005)


class SyntheticPlugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("synthetic", SyntheticDriver, SyntheticOptions)


async def measure(
    seconds: float,
    signals: int,
    rate: float,
    commit_ms: int,
    folder: Path,
    sink: bool = False,
    extra: str = "",
    during: Callable[[Gateway], Awaitable[None]] | None = None,
    more_instruments: str = "",
    store_options: str = "",
) -> dict[str, Any]:
    """One run; ``more_instruments`` (YAML list items) follow the synthetic instrument,
    ``store_options`` (``", key: value"``) are added to the store section,
    ``extra`` is appended to the configuration (more top-level sections), and
    ``during(gateway)`` runs beside the pipeline once it has started (e.g. writes)."""
    config = folder / "bench.yaml"
    # Every signal is converted mL/min → L/h, so the multiply-add is on the measured path.
    signal_lines = "\n".join(f"      - {{id: s{i}, unit: L/h}}" for i in range(signals))
    sink_lines = (
        f"sinks:\n  - {{id: file, type: jsonl_file, options: {{path: {folder / 'out.jsonl'}}}}}\n"
        if sink
        else ""
    )
    config.write_text(
        f"area: bench\n"
        f"store: {{path: {folder / 'bench.sqlite'}, commit_interval_ms: {commit_ms}"
        f"{store_options}}}\n"
        f"instruments:\n  - id: synth\n    driver: synthetic\n"
        f"    options: {{signals: {signals}, rate: {rate}}}\n    signals:\n{signal_lines}\n"
        + more_instruments
        + sink_lines
        + extra
    )
    # The synthetic driver is inline; the sink (if any) is the installed jsonl_file plugin.
    registry = build_registry([SyntheticPlugin()], entry_points=sink or bool(extra))
    plan = load_plan(config, registry)
    gateway = Gateway(plan)
    SyntheticDriver.published = 0
    started = time.perf_counter()
    side: asyncio.Task[None] | None = None
    if during is not None:

        async def beside() -> None:
            await gateway.started.wait()
            await during(gateway)

        side = asyncio.create_task(beside(), name="bench.during")
    try:
        summary = await gateway.run(asyncio.Event(), duration_s=seconds)
    finally:
        if side is not None:
            side.cancel()
            await asyncio.wait({side})
    elapsed = time.perf_counter() - started
    with sqlite3.connect(folder / "bench.sqlite") as db:
        stored = db.execute("SELECT count(*) FROM sample").fetchone()[0]
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    stats = gateway.stats
    return {
        "benchmark": "pipeline",
        "seconds": round(elapsed, 3),
        "signals": signals,
        "commit_interval_ms": commit_ms,
        "offered_per_s": rate,
        "samples_offered": SyntheticDriver.published,
        "samples_committed": summary.committed,
        "samples_in_store": stored,
        "samples_per_s": round(summary.committed / elapsed),
        "batches": stats.batches,
        "p50_commit_latency_ms": round(stats.latency_percentile(0.50) or 0.0, 2),
        "p99_commit_latency_ms": round(stats.latency_percentile(0.99) or 0.0, 2),
        "max_commit_latency_ms": round(max(stats.commit_latency_ms, default=0.0), 2),
        "dropped": summary.dropped,
        "sink": "jsonl_file" if sink else None,
        "sink_delivered": sum(v["delivered"] for v in summary.sinks.values()),
        "sink_lost": sum(v["lost"] for v in summary.sinks.values()),
        "integrity_check": integrity,
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--signals", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100_000.0, help="offered samples/s")
    parser.add_argument("--commit-ms", type=int, default=10)
    parser.add_argument("--sink", action="store_true", help="also feed a jsonl_file sink")
    args = parser.parse_args()
    configure_logging("json", "warning")
    configure_interpreter()  # as patgw run does
    with tempfile.TemporaryDirectory(prefix="patgw-bench-") as folder:
        result = asyncio.run(
            measure(args.seconds, args.signals, args.rate, args.commit_ms, Path(folder), args.sink)
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
