"""The audit trail's throughput: records committed per second, durable (synchronous=FULL).

Each figure is one function in ``FIGURES``; ``--only`` picks some (the default: all). Each runs
``--runs`` times on a fresh trail in ``--folder`` (default: a temporary folder on the disk of
the current directory, not a RAM disk) and reports the median. Prints JSON:

    python benchmarks/audit.py                         # every figure, 3 runs each
    python benchmarks/audit.py --only group_commit     # one figure

``audit_records_per_s``: ``--callers`` coroutines each awaiting ``AuditTrail.record`` in a loop
(as a running gateway with many concurrent writers, logins...); concurrent records share a
transaction (group commit). ``audit_append_records_per_s``: one thread calling ``append`` for
each record, one transaction (and one fsync) per record: the worst case, e.g. a CLI.
``audit_verify_records_per_s``: ``verify`` of a trail of ``--verify-records`` records (chain,
hashes and anchor signatures), and ``audit_bytes_per_record`` of that file.
``write_latency_ms_p99`` (and p50, max): a controlled Modbus write to the emulated feed pump,
device read before, write, read-back and three durable audit records, over ``--writes``.
``pipeline_samples_per_s_with_writes`` / ``..._without_writes``: the pipeline benchmark's
ingestion with ``--writes-per-s`` controlled writes going on, and without (their ratio too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import controlled_writes

from gateway.audit import AuditEvent, AuditTrail, verify
from gateway.logs import configure_logging


def _trail(folder: Path) -> AuditTrail:
    return AuditTrail(
        folder / "audit.sqlite",
        gateway_id="bench/reactor1",
        key_path=folder / "key",
        anchor_path=folder / "anchors.jsonl",
    )


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        "write.requested",
        user="operator",
        target="reactor1/feed_pump/speed_setpoint",
        old=float(i),
        new=float(i + 1),
        reason="benchmark",
        details={"rule": None, "i": i},
    )


def group_commit(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Many coroutines awaiting ``record``: records/s with group commit."""
    per_caller = max(1, args.records // args.callers)

    async def run() -> float:
        trail = _trail(folder).open()

        async def caller(k: int) -> None:
            for i in range(per_caller):
                await trail.record(_event(k * per_caller + i))

        try:
            start = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                for k in range(args.callers):
                    group.create_task(caller(k), name=f"bench.caller.{k}")
            return time.perf_counter() - start
        finally:
            await trail.aclose()

    elapsed = asyncio.run(run())
    return {
        "audit_records_per_s": per_caller * args.callers / elapsed,
        "group_commit_callers": args.callers,
    }


def append(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One ``append`` after another: records/s with one transaction each."""
    with _trail(folder) as trail:
        start = time.perf_counter()
        for i in range(args.append_records):
            trail.append(_event(i))
        elapsed = time.perf_counter() - start
    return {"audit_append_records_per_s": args.append_records / elapsed}


def verify_trail(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """``verify`` of a trail of ``--verify-records`` records anchored every 1,000: records/s;
    and the file's size per record."""
    with _trail(folder) as trail:
        for start in range(0, args.verify_records, 1000):
            stop = min(start + 1000, args.verify_records)
            trail.append_many([_event(i) for i in range(start, stop)])
            trail.sign_head()
    db = sqlite3.connect(folder / "audit.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = (folder / "audit.sqlite").stat().st_size
    begin = time.perf_counter()
    report = verify(folder / "audit.sqlite", anchor_files=[folder / "anchors.jsonl"])
    elapsed = time.perf_counter() - begin
    if not report.ok:
        raise SystemExit(f"the benchmark's trail does not verify: {report.problem}")
    return {
        "audit_verify_records_per_s": report.records / elapsed,
        "audit_bytes_per_record": size / report.records,
    }


def write_latency(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """A controlled Modbus write to the emulated pump, with read-back and audit (see
    benchmarks/controlled_writes.py): p50, p99 and max over ``--writes`` writes, in ms."""
    return controlled_writes.write_latency(args.writes, folder)


def pipeline_with_writes(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Ingestion (benchmarks/pipeline.py, 100 signals, ``--rate`` offered) without writes and
    with ``--writes-per-s`` controlled writes going on; each run measures both, alternating."""
    seconds, rate = args.pipeline_seconds, args.rate
    without = controlled_writes.pipeline_samples_per_s(folder / "a", seconds, rate, 0)
    with_writes = controlled_writes.pipeline_samples_per_s(
        folder / "b", seconds, rate, args.writes_per_s
    )
    return {
        "pipeline_samples_per_s_without_writes": float(without),
        "pipeline_samples_per_s_with_writes": float(with_writes),
        "pipeline_with_writes_ratio": with_writes / without,
    }


FIGURES: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "group_commit": group_commit,
    "append": append,
    "verify": verify_trail,
    "write_latency": write_latency,
    "pipeline_with_writes": pipeline_with_writes,
}


def measure(args: argparse.Namespace, name: str) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.folder, prefix="patgw-audit-bench-") as tmp:
            runs.append(FIGURES[name](args, Path(tmp)))
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        if isinstance(values[0], float):
            out[key] = round(statistics.median(values), 1)
            out[f"{key}_runs"] = [round(v, 1) for v in values]
        else:
            out[key] = values[0]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(FIGURES), help="repeatable")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--records", type=int, default=20_000, help="records, group commit")
    parser.add_argument("--callers", type=int, default=100, help="concurrent callers")
    parser.add_argument("--append-records", type=int, default=3_000, help="records, append")
    parser.add_argument("--verify-records", type=int, default=50_000, help="records, verify")
    parser.add_argument("--folder", type=Path, default=Path.cwd(), help="where the trails go")
    parser.add_argument("--writes", type=int, default=500, help="writes, write latency")
    parser.add_argument("--writes-per-s", type=float, default=10.0, help="pipeline with writes")
    parser.add_argument("--rate", type=float, default=100_000.0, help="pipeline's offered rate")
    parser.add_argument("--pipeline-seconds", type=float, default=10.0, help="per pipeline run")
    args = parser.parse_args()
    configure_logging("console", "warning")
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "runs": args.runs,
    }
    for name in args.only or FIGURES:
        result |= measure(args, name)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
