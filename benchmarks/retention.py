"""The store budget under load: a bounded store, commits not held up, archives complete.

Runs the real runtime with the synthetic driver of benchmarks/pipeline.py at ``--rate``
samples/s for ``--seconds``, ``--runs`` times with a store budget (``max_age_s = --budget-s``,
archive on) and ``--runs`` times without one, alternating, and prints JSON:

    python benchmarks/retention.py                       # the issue's figures: 10,000/s, 30 min,
                                                         # a 5-minute budget, 3 runs each way
    python benchmarks/retention.py --seconds 180 --budget-s 30     # a development run

Per run: the store's size (file + WAL) sampled every second (``max_store_bytes``, and
``final_store_bytes`` after the gateway stopped), the commit latency p99 (from a batch's oldest
sample being published to its commit, over the last 100,000 batches), and with the budget the
archive check: per signal, every seq the gateway committed is, by seq, either still in the store
or in exactly one recorded archive file (whose SHA-256 is checked) — never both, never neither
(the rows of a run that the gateway's stop interrupted while deleting are archived and still in
the store until the next start finishes the run: counted apart).
``p99_ratio`` is the median p99 with pruning over the median p99 without.

``--auto-vacuum incremental`` creates the store with ``PRAGMA auto_vacuum=INCREMENTAL`` (freed
pages go back to the file system after each pruning run) instead of SQLite's default, in which
freed pages are reused by later commits and the file keeps its high-water mark.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline import SyntheticDriver, SyntheticPlugin  # the pipeline benchmark's driver

from gateway import build_registry, load_plan
from gateway.export import sample_from_json
from gateway.logs import configure_logging
from gateway.metrics import store_size_bytes
from gateway.runtime import Gateway
from gateway.runtime.interpreter import configure_interpreter
from gateway.store.prune import file_sha256


async def measure(
    args: argparse.Namespace, folder: Path, *, pruning: bool, run: int
) -> dict[str, Any]:
    store = folder / "bench.sqlite"
    archive = folder / "archive"
    if args.auto_vacuum == "incremental":
        with sqlite3.connect(store) as db:  # before any table exists: it cannot change later
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    archive_block = "" if args.no_archive else f", archive: {{path: {archive}}}"
    budget = (
        f", budget: {{max_age_s: {args.budget_s}, check_interval_s: {args.check_s}{archive_block}}}"
        if pruning
        else ""
    )
    signal_lines = "\n".join(f"      - {{id: s{i}}}" for i in range(args.signals))
    config = folder / "bench.yaml"
    config.write_text(
        "area: bench\n"
        f"store: {{path: {store}, commit_interval_ms: {args.commit_ms}{budget}}}\n"
        "instruments:\n  - id: synth\n    driver: synthetic\n"
        f"    options: {{signals: {args.signals}, rate: {args.rate}}}\n    signals:\n"
        f"{signal_lines}\n"
    )
    plan = load_plan(config, build_registry([SyntheticPlugin()], entry_points=False))
    SyntheticDriver.published = 0
    gateway = Gateway(plan)
    sizes: list[int] = []

    wal_sizes: list[int] = []

    async def watch() -> None:
        while True:
            sizes.append(store_size_bytes(store))
            wal_sizes.append(_wal_bytes(store))
            await asyncio.sleep(1.0)

    watcher = asyncio.create_task(watch(), name="bench.watch")
    started = time.perf_counter()
    try:
        summary = await gateway.run(asyncio.Event(), duration_s=args.seconds)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    elapsed = time.perf_counter() - started
    stats = gateway.stats
    result: dict[str, Any] = {
        "pruning": pruning,
        "run": run,
        "seconds": round(elapsed, 1),
        "samples_committed": summary.committed,
        "dropped": summary.dropped,
        "p50_commit_latency_ms": round(stats.latency_percentile(0.50) or 0.0, 2),
        "p99_commit_latency_ms": round(stats.latency_percentile(0.99) or 0.0, 2),
        "max_store_bytes": max(sizes, default=0),
        "max_wal_bytes": max(wal_sizes, default=0),
        "final_store_bytes": store_size_bytes(store),
        "store_bytes_at_half_time": sizes[len(sizes) // 2] if sizes else 0,
    }
    if pruning:
        keeper = gateway.budget
        assert keeper is not None
        result |= {
            "pruned": keeper.stats.pruned,
            "archive_files": keeper.stats.archive_files,
            "archive_bytes": sum(p.stat().st_size for p in archive.glob("*.jsonl.gz")),
            "prune_paused": keeper.stats.paused,
        }
        if not args.no_archive:
            result |= check_archives(store, archive)
    with sqlite3.connect(store) as db:
        result["integrity_check"] = db.execute("PRAGMA integrity_check").fetchone()[0]
    return result


def _wal_bytes(store: Path) -> int:
    try:
        return os.path.getsize(f"{store}-wal")
    except OSError:
        return 0


def check_archives(store: Path, archive: Path) -> dict[str, Any]:
    """Per signal, count each committed seq in the store and in the recorded archive files:
    every one must be counted exactly once."""
    with sqlite3.connect(store) as db:
        next_seq = dict(db.execute("SELECT name, next_seq FROM signal").fetchall())
        names = dict(db.execute("SELECT id, name FROM signal_def").fetchall())
        runs = db.execute(
            "SELECT archive_file, archive_sha256, archive_bytes FROM prune_run"
            " WHERE state IN ('pruning', 'done') AND archive_file IS NOT NULL"
        ).fetchall()
        # A run the gateway's stop interrupted while deleting: its archive is complete and
        # recorded, the rest of its rows go at the next start. Counted apart, not as doubles.
        pending_ranges = db.execute(
            "SELECT first_id, last_id FROM prune_run WHERE state='pruning'"
        ).fetchall()
        seen = {name: bytearray(count) for name, count in next_seq.items()}
        pending = 0
        for row_id, def_id, seq in db.execute("SELECT id, def_id, seq FROM sample"):
            if any(a <= row_id <= b for a, b in pending_ranges):
                pending += 1
                continue  # in an archive too: counted there
            seen[names[def_id]][seq] += 1
    bad_hashes = 0
    archived = 0
    for name, digest, size in runs:
        if file_sha256(archive / name) != (digest, size):
            bad_hashes += 1
        with gzip.open(archive / name, "rt", encoding="utf-8") as lines:
            for line in lines:
                sample = sample_from_json(line)
                seen[sample.signal][sample.seq] += 1
                archived += 1
    missing = sum(counts.count(0) for counts in seen.values())
    twice = sum(len(counts) - counts.count(0) - counts.count(1) for counts in seen.values())
    unrecorded = len({p.name for p in archive.glob("*")} - {r[0] for r in runs})
    return {
        "archived_samples": archived,
        "archived_samples_still_in_store_to_delete_at_next_start": pending,
        "archive_files_recorded": len(runs),
        "archive_hash_mismatches": bad_hashes,
        "samples_missing_from_store_and_archive": missing,
        "samples_in_store_and_archive_or_two_archives": twice,
        "unrecorded_files_in_archive_folder": unrecorded,
        "archives_complete": missing == 0 and twice == 0 and bad_hashes == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1800.0, help="length of each run")
    parser.add_argument("--rate", type=float, default=10_000.0, help="offered samples/s")
    parser.add_argument("--budget-s", type=float, default=300.0, help="store.budget.max_age_s")
    parser.add_argument("--check-s", type=float, default=10.0, help="budget check interval")
    parser.add_argument("--runs", type=int, default=3, help="runs with and without pruning")
    parser.add_argument("--signals", type=int, default=100)
    parser.add_argument("--commit-ms", type=int, default=10)
    parser.add_argument("--auto-vacuum", choices=("none", "incremental"), default="none")
    parser.add_argument("--no-archive", action="store_true", help="prune without archiving")
    parser.add_argument("--only", choices=("pruning", "plain"), help="one kind of run only")
    args = parser.parse_args()
    configure_logging("json", "warning")
    configure_interpreter()  # as patgw run does
    results = []
    kinds = [k for k in (True, False) if args.only is None or k == (args.only == "pruning")]
    for run in range(args.runs):
        for pruning in kinds:  # alternating: a drift of the machine hits both alike
            with tempfile.TemporaryDirectory(prefix="patgw-retention-") as folder:
                result = asyncio.run(measure(args, Path(folder), pruning=pruning, run=run))
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)

    def median(key: str, pruning: bool) -> float | None:
        values = [r[key] for r in results if r["pruning"] is pruning]
        return statistics.median(values) if values else None

    with_p99, without_p99 = (
        median("p99_commit_latency_ms", True),
        median("p99_commit_latency_ms", False),
    )
    pruned = [r for r in results if r["pruning"]]
    print(
        json.dumps(
            {
                "benchmark": "retention",
                "seconds": args.seconds,
                "rate": args.rate,
                "budget_max_age_s": args.budget_s,
                "check_interval_s": args.check_s,
                "signals": args.signals,
                "commit_interval_ms": args.commit_ms,
                "auto_vacuum": args.auto_vacuum,
                "runs_each_way": args.runs,
                "median_p99_commit_ms_with_pruning": with_p99,
                "median_p99_commit_ms_without": without_p99,
                "p99_ratio": round(with_p99 / without_p99, 3) if with_p99 and without_p99 else None,
                "max_store_bytes_with_pruning": max(
                    (r["max_store_bytes"] for r in pruned), default=None
                ),
                "final_store_bytes_with_pruning": [r["final_store_bytes"] for r in pruned],
                "final_store_bytes_without": [
                    r["final_store_bytes"] for r in results if not r["pruning"]
                ],
                "archives_complete": all(r["archives_complete"] for r in pruned)
                if pruned and not args.no_archive
                else None,
                "runs": results,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
