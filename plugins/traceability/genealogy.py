"""The genealogy file: append-only JSONL in the gateway's data folder, one line per event.

``<data_dir>/traceability/<processor id>.genealogy.jsonl``; each line is one of::

    {"type": "fraction", "fraction": 12, "column": 2, ...}   # what an eluate fraction holds
    {"type": "decision", "fraction": 12, "decision": "divert", "user": ..., "reason": ...}
    {"type": "pool", "pool": "batch-1", "fractions": [...], ...}

Each line is flushed and fsynced as it is written (a fraction, a decision): a crash loses at
most the line being written, and :func:`read_genealogy` skips a torn last line. Exported by
``patgw genealogy`` (the gateway need not run) and the processor's ``genealogy`` command.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

__all__ = ["Genealogy", "GenealogyWriter", "export_csv", "genealogy_path", "read_genealogy"]

log = structlog.get_logger(__name__)


def genealogy_path(data_dir: Path, processor_id: str) -> Path:
    """Where processor ``processor_id`` keeps its genealogy."""
    return Path(data_dir) / "traceability" / f"{processor_id}.genealogy.jsonl"


class GenealogyWriter:
    """Appends lines durably (flush + fsync each)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: Mapping[str, Any]) -> None:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as out:
            # A crash may have left a torn last line: end it, so this record is a line of its
            # own rather than glued onto the torn one (and skipped with it when read).
            if out.tell() > 0:
                out.seek(-1, os.SEEK_END)
                if out.read(1) != b"\n":
                    out.write(b"\n")
            out.write((text + "\n").encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())


class Genealogy:
    """The fractions (each with its latest decision and the decisions' history) and pools of
    one genealogy file, in the order written."""

    def __init__(self) -> None:
        self.fractions: list[dict[str, Any]] = []
        self.pools: list[dict[str, Any]] = []
        self.skipped = 0
        self._by_fraction: dict[int, dict[str, Any]] = {}

    def add(self, record: Mapping[str, Any]) -> None:
        kind = record.get("type")
        if kind == "fraction":
            entry = dict(record)
            entry.setdefault("decision", None)
            entry.setdefault("decisions", [])
            self.fractions.append(entry)
            self._by_fraction[int(record["fraction"])] = entry
        elif kind == "decision":
            target = self._by_fraction.get(int(record["fraction"]))
            if target is None:
                self.skipped += 1
                return
            target["decisions"] = [*target.get("decisions", []), dict(record)]
            target["decision"] = record.get("decision")
        elif kind == "pool":
            self.pools.append(dict(record))
        else:
            self.skipped += 1

    def fraction(self, number: int) -> dict[str, Any] | None:
        """The last fraction recorded with this id."""
        return self._by_fraction.get(number)

    def as_json(self) -> dict[str, Any]:
        return {"fractions": self.fractions, "pools": self.pools}


def read_genealogy(path: Path) -> Genealogy:
    """Read a genealogy file; a line that does not parse (a torn last line after a crash) is
    skipped and counted. ``OSError`` if it cannot be read."""
    out = Genealogy()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                out.add(record)
            except (ValueError, KeyError, TypeError) as exc:
                out.skipped += 1
                log.warning("genealogy.line_skipped", path=str(path), line=number, error=str(exc))
    return out


def _pairs(values: Mapping[str, Any] | None) -> str:
    if not values:
        return ""
    return ";".join(f"{k}:{float(v):.6g}" for k, v in values.items())


def export_csv(fractions: Iterable[Mapping[str, Any]], summary_names: Sequence[str] = ()) -> str:
    """One row per fraction: its window, shares, recommendation and decision."""
    names = list(summary_names)
    if not names:
        seen: dict[str, None] = {}
        for f in fractions:
            seen.update(dict.fromkeys(f.get("signals", {})))
        names = list(seen)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [
        "fraction",
        "column",
        "time",
        "eluted_h",
        "harvest_start_h",
        "harvest_end_h",
        "affected_share",
        "unknown_share",
        "complete",
        "lots",
        "deviations",
        "divert_recommended",
        "decision",
        "decided_by",
        "decision_reason",
    ]
    for name in names:
        header += [f"{name}_min", f"{name}_mean", f"{name}_max"]
    writer.writerow(header)
    for f in fractions:
        window = f.get("harvest_window_h") or [None, None]
        last = f["decisions"][-1] if f.get("decisions") else {}
        row: list[Any] = [
            f.get("fraction"),
            f.get("column"),
            f.get("time"),
            f.get("eluted_h"),
            window[0],
            window[1],
            f.get("affected_share"),
            f.get("unknown_share"),
            f.get("complete"),
            _pairs(f.get("lots")),
            _pairs(f.get("deviations")),
            int(bool(f.get("recommendation", {}).get("divert"))),
            f.get("decision") or "",
            last.get("user", ""),
            last.get("reason", ""),
        ]
        signals = f.get("signals", {})
        for name in names:
            s = signals.get(name) or {}
            row += [s.get("min"), s.get("mean"), s.get("max")]
        writer.writerow(row)
    return buffer.getvalue()
