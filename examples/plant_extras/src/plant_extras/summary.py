"""``patgw csv-summary FILE``: per signal of a ``csv_file`` sink's file, how many samples it
holds (each ``(signal, seq)`` once), how many were good, and the last value."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import Quality


def configure_csv_summary(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Add the command's arguments to its parser; return its handler."""
    parser.add_argument("file", type=Path, help="a CSV file written by the csv_file sink")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return csv_summary


def csv_summary(args: argparse.Namespace) -> int:
    """The exit code: 0, or 2 with one line on standard error naming the problem."""
    try:
        summary = summarize(args.file)
    except (OSError, KeyError, ValueError) as exc:
        print(f"patgw csv-summary: {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for signal, row in summary.items():
        last = f"{row['last']} {row['unit']}" if row["last"] is not None else "none good"
        print(f"{signal}: {row['samples']} samples, {row['good']} good, last {last}")
    return 0


def summarize(path: Path) -> dict[str, dict[str, Any]]:
    seen: set[tuple[str, int]] = set()
    summary: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8", newline="") as file:
        for row in csv.DictReader(file):
            key = (row["signal"], int(row["seq"]))
            if key in seen:  # written twice after a crash: count it once
                continue
            seen.add(key)
            entry = summary.setdefault(
                row["signal"], {"samples": 0, "good": 0, "last": None, "unit": row["unit"]}
            )
            entry["samples"] += 1
            if Quality.from_label(row["quality"]) is Quality.GOOD:
                entry["good"] += 1
                entry["last"] = float(row["value"])
    return summary
