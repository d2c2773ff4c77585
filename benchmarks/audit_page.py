"""The console's audit page on a long trail: what a page load costs before and after keeping the
verification (``gateway.console.auditview.VerifyCache``) and reading the newest records from
the head back (``read_records(..., newest=N)``).

Builds a trail of ``--records`` records (default 100,000: write records, the head signed every
1,000) in ``--folder`` (default: a temporary folder on the current directory's disk), then
times, each the median of ``--runs``:

* ``verify_ms``: ``verify`` of the whole trail — what every load of ``/audit`` ran before;
* ``page_read_ms_before``: the page's work before: every record read to keep the newest 200,
  and ``verify``;
* ``page_read_ms_after_unchanged``: the page's work now, the trail unchanged since the last
  load (the cache's checks: a few ``stat`` calls and the chain's head);
* ``page_read_ms_after_appended``: the same after one record was appended (verified again);
* ``cache_check_ms``: the cache's checks alone, the trail unchanged.

Prints JSON:

    python benchmarks/audit_page.py                  # 100,000 records, 5 runs
    python benchmarks/audit_page.py --records 10000 --runs 3
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit import _event, _trail  # the audit benchmark's trail (same files) and records

from gateway.audit import AuditPaths, read_records, verify
from gateway.console.auditview import VerifyCache
from gateway.logs import configure_logging

PAGE = 200  # the page's default number of records


def _build(paths: AuditPaths, records: int) -> None:
    with _trail(paths.path.parent) as trail:
        done = 1  # audit.created
        while done < records:
            batch = min(1000, records - done)
            trail.append_many([_event(done + i) for i in range(batch)])
            done += batch
            trail.sign_head()


def _median_ms(runs: int, work: Callable[[], object], before: Callable[[], object] = int) -> float:
    times = []
    for _ in range(runs):
        before()
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    configure_logging(level="warning")
    with tempfile.TemporaryDirectory(dir=args.folder or Path.cwd()) as tmp:
        folder = Path(tmp)
        paths = AuditPaths(folder / "audit.sqlite", folder / "key", folder / "anchors.jsonl")
        started = time.perf_counter()
        _build(paths, args.records)
        build_s = time.perf_counter() - started

        def verify_all() -> object:
            return verify(paths.path, anchor_files=(paths.anchor_file,), key_path=paths.key)

        def page_before() -> object:
            newest = collections.deque(read_records(paths.path), maxlen=PAGE)
            return newest, verify_all()

        cache = VerifyCache(paths)

        def page_after() -> object:
            return list(read_records(paths.path, newest=PAGE)), cache.report()

        def append_one() -> None:
            with _trail(folder) as trail:
                trail.append(_event(0))

        figures: dict[str, Any] = {
            "records": args.records,
            "runs": args.runs,
            "build_s": round(build_s, 1),
            "verify_ms": _median_ms(args.runs, verify_all),
            "page_read_ms_before": _median_ms(args.runs, page_before),
        }
        page_after()  # the first load verifies
        verified = cache.runs
        figures["page_read_ms_after_unchanged"] = _median_ms(args.runs, page_after)
        assert cache.runs == verified, "an unchanged trail was verified again"
        figures["cache_check_ms"] = _median_ms(args.runs, cache.report)
        figures["page_read_ms_after_appended"] = _median_ms(args.runs, page_after, append_one)
        assert cache.runs == verified + args.runs, "an appended record was not verified"
        figures["report"] = cache.report().summary().split(": ", 1)[1]
        figures["python"] = platform.python_version()
    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
