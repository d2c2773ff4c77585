"""Throughput of spectra: 2048-point spectra → validation → durable SQLite store.

Runs the real runtime (supervisor, instrument runner, spectrum output, store writer thread) with
a synthetic multiplexed analyser that publishes ``--rate`` spectra per second (default 2000)
round-robin over ``--channels`` probes, each a fresh float32 spectrum on a shared Raman-shift
axis, for ``--seconds``, and prints JSON:

    python benchmarks/spectra.py --seconds 10 --points 2048

``spectra_per_s`` counts spectra *committed* (after the final flush) per second of wall time;
it equals the offered rate only if the pipeline keeps up (the target is 500/s). Raise ``--rate``
to find the ceiling: when the store falls behind, ``p99_commit_latency_ms`` grows and, past
``max_pending_samples``, spectra are dropped (and counted in ``dropped``). ``store_mb`` is the
database size, ``bytes_per_spectrum`` what one spectrum costs on disk.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from gateway import (
    Channel,
    InstrumentIO,
    PluginContext,
    Registry,
    SignalKind,
    SpectralAxis,
    Spectrum,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.logs import configure_logging
from gateway.runtime import Gateway
from gateway.runtime.interpreter import configure_interpreter


class AnalyserOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: int = 4
    points: int = 2048
    rate: float = 2000.0


class SyntheticAnalyser:
    """Publishes ``rate`` spectra per second, every 5 ms, round-robin over its channels.

    The spectra are pre-generated (a pool of noisy Raman-like spectra) so the measured cost is
    the gateway's: building each :class:`Spectrum` (a float32 copy), validating and storing it.
    """

    published = 0

    def __init__(self, options: AnalyserOptions, context: PluginContext) -> None:
        self.options = options

    def channels(self) -> Sequence[Channel]:
        return [
            Channel(f"probe{i}", "{counts}", SignalKind.SPECTRUM)
            for i in range(self.options.channels)
        ]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        points = self.options.points
        axis = SpectralAxis(np.linspace(100.0, 2050.0, points), "cm-1")
        rng = np.random.default_rng(1)
        x = axis.values
        base = 1000 + 0.5 * x + 3000 * np.exp(-(((x - 1640) / 40) ** 2))
        pool = [(base + rng.normal(0, 30, points)).astype(np.uint16) for _ in range(16)]
        outputs = [io.output(f"probe{i}").publish for i in range(self.options.channels)]
        n = len(outputs)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            due = int((loop.time() - start) * self.options.rate)
            for k in range(SyntheticAnalyser.published, due):
                outputs[k % n](Spectrum(pool[k % 16], axis))
            SyntheticAnalyser.published = max(due, SyntheticAnalyser.published)
            await asyncio.sleep(0.005)


class AnalyserPlugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("analyser", SyntheticAnalyser, AnalyserOptions)


async def measure(
    seconds: float, channels: int, points: int, rate: float, commit_ms: int, folder: Path
) -> dict[str, Any]:
    config = folder / "bench.yaml"
    config.write_text(
        f"area: bench\n"
        f"store: {{path: {folder / 'bench.sqlite'}, commit_interval_ms: {commit_ms}}}\n"
        f"instruments:\n  - id: raman\n    driver: analyser\n"
        f"    options: {{channels: {channels}, points: {points}, rate: {rate}}}\n"
    )
    plan = load_plan(config, build_registry([AnalyserPlugin()], entry_points=False))
    gateway = Gateway(plan)
    started = time.perf_counter()
    summary = await gateway.run(asyncio.Event(), duration_s=seconds)
    elapsed = time.perf_counter() - started
    path = folder / "bench.sqlite"
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT count(*) FROM sample").fetchone()[0]
        sizes = db.execute("SELECT avg(length(value)) FROM sample").fetchone()[0] or 0
        axes = db.execute("SELECT count(*) FROM axis").fetchone()[0]
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    stats = gateway.stats
    return {
        "benchmark": "spectra",
        "seconds": round(elapsed, 3),
        "channels": channels,
        "points": points,
        "commit_interval_ms": commit_ms,
        "offered_per_s": rate,
        "spectra_offered": SyntheticAnalyser.published,
        "spectra_committed": summary.committed,
        "spectra_in_store": stored,
        "spectra_per_s": round(summary.committed / elapsed, 1),
        "megabytes_per_s": round(summary.committed * sizes / elapsed / 1e6, 2),
        "bytes_per_spectrum": round(sizes),
        "axes_stored": axes,
        "batches": stats.batches,
        "p50_commit_latency_ms": round(stats.latency_percentile(0.50) or 0.0, 2),
        "p99_commit_latency_ms": round(stats.latency_percentile(0.99) or 0.0, 2),
        "dropped": summary.dropped,
        "integrity_check": integrity,
        "store_mb": round(path.stat().st_size / 1e6, 1),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "numpy": np.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--channels", type=int, default=4, help="probes of the analyser")
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--rate", type=float, default=2000.0, help="offered spectra/s")
    parser.add_argument("--commit-ms", type=int, default=10)
    args = parser.parse_args()
    configure_logging("json", "warning")
    configure_interpreter()  # as patgw run does
    with tempfile.TemporaryDirectory(prefix="patgw-bench-") as folder:
        result = asyncio.run(
            measure(
                args.seconds, args.channels, args.points, args.rate, args.commit_ms, Path(folder)
            )
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
