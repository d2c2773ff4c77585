"""``patgw export``: committed samples as JSON lines or CSV, in the JSON form of every sink."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import TextIO

from .model import Sample, sample_to_json, sample_to_json_dict

__all__ = ["FORMATS", "write_csv", "write_jsonl"]

_CSV_COLUMNS = ("signal", "value", "unit", "source_ts", "gateway_ts", "quality", "seq", "reason")


def write_jsonl(samples: Iterable[Sample], out: TextIO) -> int:
    """One compact JSON object per line; returns the number written."""
    count = 0
    for sample in samples:
        out.write(sample_to_json(sample) + "\n")
        count += 1
    return count


def write_csv(samples: Iterable[Sample], out: TextIO) -> int:
    """A header line, then one row per sample with the JSON form's fields; returns the count."""
    writer = csv.DictWriter(out, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for sample in samples:
        writer.writerow(sample_to_json_dict(sample))
        count += 1
    return count


FORMATS = {"jsonl": write_jsonl, "csv": write_csv}
