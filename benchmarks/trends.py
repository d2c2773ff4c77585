"""What trend reads cost: ingestion with and without the trend roll-up (or with an index
instead), and the time of trend queries on a store of 1,000 signals at 10 Hz. Prints JSON lines.

    python benchmarks/trends.py ingest --seconds 20 --runs 3 --rate 10000 --rate 60000
    python benchmarks/trends.py query --raw-minutes 10 --hours-1s 24

``ingest`` runs the pipeline benchmark (benchmarks/pipeline.py: the real runtime, 1,000 signals)
interleaving the variants, ``--runs`` times each: ``rollups`` (``store.trends: true``, the
default: the ``store.trends`` task rolls up once a second on its own thread and file), ``none``
(``store.trends: false``) and ``index`` (``none`` plus an index on ``sample (def_id,
gateway_ts)``, the other way to read trends). Per variant and rate: the median over runs of
samples/s committed, p99 commit latency and process CPU per committed sample, bytes written per
committed sample (``wchar`` of /proc/self/io: the WAL, the trends file and checkpoints) and the
store's and trends file's size per sample.

``query`` builds a store: ``--raw-minutes`` of real samples committed through
``SampleStore.commit`` (1,000 signals at 10 Hz, 1,000 rows a commit) and rolled up by a
:class:`Roller` as a gateway would (timed: the backfill rate), preceded by synthetic rollup rows
(the table's own shape, filled by SQL) for 24 hours at 10 s and 60 s and ``--hours-1s`` hours at
1 s. Then it times ``TrendReader.trend`` for windows ending at the newest sample (10 min, 1 h,
24 h, and a 10 s zoom that reads raw samples), for 1 and 10 signals at 1,000 points: median and
max of 5 reads, after one unmeasured read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline import measure

from gateway import Signal
from gateway.logs import configure_logging
from gateway.model import SignalKind
from gateway.runtime.interpreter import configure_interpreter
from gateway.store import SampleStore
from gateway.store.trends import Roller, TrendReader, trends_path

S = 10**9
SIGNALS = 1000
VARIANTS = ("rollups", "none", "index")


def _written() -> int:
    """Bytes this process has passed to write() so far (the WAL, checkpoints, the archive)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ingest_once(variant: str, seconds: float, rate: float, folder: Path) -> dict[str, Any]:
    path = folder / "bench.sqlite"
    if variant == "index":
        SampleStore(path).close()
        with sqlite3.connect(path) as db:
            db.execute("CREATE INDEX sample_def_time ON sample (def_id, gateway_ts)")
    cpu, written = _cpu_s(), _written()
    options = "" if variant == "rollups" else ", trends: false"
    result = asyncio.run(measure(seconds, SIGNALS, rate, 10, folder, store_options=options))
    cpu, written = _cpu_s() - cpu, _written() - written
    size = 0
    for file in (path, trends_path(path)):
        if file.exists():
            with sqlite3.connect(file) as db:
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                size += pages * db.execute("PRAGMA page_size").fetchone()[0]
    committed = result["samples_committed"]
    return {
        "samples_per_s": result["samples_per_s"],
        "p99_commit_latency_ms": result["p99_commit_latency_ms"],
        "max_commit_latency_ms": result["max_commit_latency_ms"],
        "cpu_us_per_sample": round(cpu / committed * 1e6, 3) if committed else None,
        "written_bytes_per_sample": round(written / committed, 1) if committed else None,
        "file_bytes_per_sample": round(size / committed, 1) if committed else None,
        "dropped": result["dropped"],
        "integrity_check": result["integrity_check"],
    }


def ingest(args: argparse.Namespace) -> None:
    configure_logging("json", "warning")
    configure_interpreter()
    for rate in args.rate:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variant}
        for _ in range(args.runs):
            for variant in args.variant:
                with tempfile.TemporaryDirectory(prefix="patgw-trend-") as folder:
                    runs[variant].append(ingest_once(variant, args.seconds, rate, Path(folder)))
        for variant, results in runs.items():
            summary: dict[str, Any] = {
                "benchmark": "trends.ingest",
                "variant": variant,
                "signals": SIGNALS,
                "offered_per_s": rate,
                "seconds": args.seconds,
                "runs": len(results),
            }
            for key in results[0]:
                values = [r[key] for r in results]
                if all(isinstance(v, int | float) for v in values):
                    summary[key] = statistics.median(values)
                    summary[key + "_all"] = values
                else:
                    summary[key] = values
            print(json.dumps(summary), flush=True)


def _fill_rollups(db: sqlite3.Connection, width: int, first: int, last: int) -> int:
    """Synthetic rollup rows for buckets ``first..last`` of ``width`` s, every signal."""
    db.execute("BEGIN")
    db.execute(
        "WITH RECURSIVE b(k) AS (SELECT ?1 UNION ALL SELECT k + 1 FROM b WHERE k < ?2),"
        " d(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM d WHERE i < ?3)"
        " INSERT INTO rollup (width, bucket, def_id, samples, usable, lo, hi, total, worst)"
        " SELECT ?4, k, i, ?5, ?5, ((k + i) % 997) / 10.0, ((k + i) % 997) / 10.0 + 1.5,"
        " (((k + i) % 997) / 10.0 + 0.7) * ?5, 2 FROM b CROSS JOIN d",
        (first, last, SIGNALS, width, width * 10),
    )
    db.execute("COMMIT")
    return (last - first + 1) * SIGNALS


def query(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="patgw-trend-") as folder:
        path = Path(folder) / "trend.sqlite"
        store = SampleStore(path)
        names = [f"area/unit/s{i}" for i in range(SIGNALS)]
        defs = store.define([Signal(n, "1", SignalKind.SCALAR, "", "i") for n in names])
        ids = [defs[n].def_id for n in names]
        end = (time.time_ns() // (60 * S)) * 60 * S
        raw_start = end - args.raw_minutes * 60 * S
        built: dict[str, Any] = {}
        # Real samples, committed as a gateway does (1,000 rows a commit: 100 ms of data).
        started = time.perf_counter()
        seq = [0] * SIGNALS
        step = S // 10
        committed = 0
        for tick in range(0, args.raw_minutes * 60 * 10):
            ts = raw_start + tick * step
            batch = []
            for i, def_id in enumerate(ids):
                batch.append((def_id, seq[i], ts + i, ts + i, 2, float((tick + i) % 97), None))
                seq[i] += 1
            store.commit(batch, {})
            committed += len(batch)
        built["raw_samples"] = committed
        built["raw_commit_s"] = round(time.perf_counter() - started, 1)
        store.close()
        # A backlog rolled up as the gateway's roller does (chunk after chunk).
        roller = Roller(path)
        started = time.perf_counter()
        while roller.roll() == roller.chunk_rows:
            pass
        backfill = time.perf_counter() - started
        roller.close()
        # Synthetic rollups of the time before the raw samples (made after the roll-up, which
        # prunes the buckets older than the oldest sample: the store budget's pruning).
        db = sqlite3.connect(trends_path(path), isolation_level=None)
        started = time.perf_counter()
        rows = 0
        for width, hours in ((1, args.hours_1s), (10, 24), (60, 24)):
            first = (end - hours * 3600 * S) // (width * S)
            rows += _fill_rollups(db, width, first, raw_start // (width * S) - 1)
        built["synthetic_rollup_rows"] = rows
        built["synthetic_rollup_s"] = round(time.perf_counter() - started, 1)
        db.close()
        built["backfill_samples_per_s"] = round(committed / backfill)
        built["file_mb"] = round(path.stat().st_size / 2**20)
        built["trends_file_mb"] = round(trends_path(path).stat().st_size / 2**20)
        print(json.dumps({"benchmark": "trends.build", **built}), flush=True)

        last = raw_start + (args.raw_minutes * 600 - 1) * step + SIGNALS
        windows = {"10s": 10 * S, "10min": 600 * S, "1h": 3600 * S, "24h": 86400 * S}
        with TrendReader(path) as reader:
            for label, window in windows.items():
                for count in (1, 10):
                    asked = names[:: SIGNALS // count][:count]
                    times = []
                    got = reader.trend(asked, last - window, last + 1, 1000)  # warm-up
                    for _ in range(5):
                        started = time.perf_counter()
                        got = reader.trend(asked, last - window, last + 1, 1000)
                        times.append((time.perf_counter() - started) * 1000)
                    one = got[asked[0]]
                    print(
                        json.dumps(
                            {
                                "benchmark": "trends.query",
                                "window": label,
                                "signals": count,
                                "max_points": 1000,
                                "source": one.source,
                                "points": len(one.time_ns),
                                "median_ms": round(statistics.median(times), 2),
                                "max_ms": round(max(times), 2),
                            }
                        ),
                        flush=True,
                    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("ingest")
    a.add_argument("--seconds", type=float, default=20.0)
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--rate", type=float, action="append", help="offered samples/s (repeat)")
    a.add_argument("--variant", choices=VARIANTS, action="append", help="(repeat; all)")
    b = sub.add_parser("query")
    b.add_argument("--raw-minutes", type=int, default=10)
    b.add_argument("--hours-1s", type=int, default=24)
    args = parser.parse_args()
    if args.command == "ingest":
        args.rate = args.rate or [10_000.0]
        args.variant = args.variant or list(VARIANTS)
        ingest(args)
    else:
        query(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
