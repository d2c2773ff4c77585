"""Audit records read back and written out as JSON lines or CSV, optionally filtered."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TextIO

from ..timefmt import format_ns
from ._db import RECORD_COLUMNS, connect, record_from_row
from .records import AuditError, AuditRecord, canonical_json

__all__ = ["EXPORT_COLUMNS", "chain_head", "export", "read_records"]

EXPORT_COLUMNS = (
    "seq",
    "time",
    "ts_ns",
    "gateway",
    "user",
    "action",
    "target",
    "old",
    "new",
    "reason",
    "outcome",
    "details",
    "prev_hash",
    "hash",
)
"""The CSV header; ``old``, ``new`` and ``details`` are JSON text in CSV cells."""


def read_records(
    path: Path,
    *,
    since_ns: int | None = None,
    user: str | None = None,
    action: str | None = None,
    newest: int | None = None,
) -> Iterator[AuditRecord]:
    """The records of the trail at ``path`` in order: from time ``since_ns`` (UTC ns) on, of
    ``user`` only, of actions matching ``action`` (shell wildcards: ``write.*``); with
    ``newest``, only the last ``newest`` of them (read from the head back: a page of a long
    trail does not decode every record)."""
    where: list[str] = []
    params: list[int | str] = []
    if since_ns is not None:
        where.append("ts_ns >= ?")
        params.append(since_ns)
    if user is not None:
        where.append('"user" = ?')
        params.append(user)
    if action is not None:
        where.append("action GLOB ?")
        params.append(action)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    query = f"SELECT {RECORD_COLUMNS} FROM audit_records{clause} ORDER BY seq"
    if newest is not None:
        query = f"SELECT * FROM ({query} DESC LIMIT ?) ORDER BY seq"
        params.append(max(0, newest))
    db = connect(path, read_only=True)
    try:
        rows = db.execute(query, params)
        for row in rows:
            try:
                yield record_from_row(tuple(row))
            except ValueError as exc:
                raise AuditError(
                    f"audit record {row[0]} cannot be read ({exc}): run 'patgw audit verify'"
                ) from exc
    finally:
        db.close()


def chain_head(path: Path) -> tuple[int, str] | None:
    """(seq, hash) of the last record of the trail at ``path``; None if it has none."""
    db = connect(path, read_only=True)
    try:
        row = db.execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.Error as exc:
        raise AuditError(f"audit trail {path} cannot be read: {exc}") from exc
    finally:
        db.close()
    return None if row is None else (int(row[0]), str(row[1]))


def _flat(record: AuditRecord) -> dict[str, Any]:
    fields = record.fields()
    fields["time"] = format_ns(record.ts_ns)
    return fields


def export(
    path: Path,
    out: TextIO,
    *,
    fmt: Literal["jsonl", "csv"] = "jsonl",
    since_ns: int | None = None,
    user: str | None = None,
    action: str | None = None,
    newest: int | None = None,
) -> int:
    """Write the records :func:`read_records` selects to ``out``; returns how many."""
    records = read_records(path, since_ns=since_ns, user=user, action=action, newest=newest)
    count = 0
    if fmt == "jsonl":
        for record in records:
            fields = _flat(record)
            # ASCII only: a raw U+2028 would split the line for readers of "universal newlines".
            out.write(json.dumps({k: fields[k] for k in EXPORT_COLUMNS}))
            out.write("\n")
            count += 1
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(EXPORT_COLUMNS)
        for record in records:
            fields = _flat(record)
            for name in ("old", "new", "details"):
                fields[name] = canonical_json(fields[name])
            writer.writerow([_cell(fields[k]) for k in EXPORT_COLUMNS])
            count += 1
    else:
        raise ValueError(f"unknown audit export format {fmt!r}")
    return count


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run: text starting like a formula (a user name an
    unauthenticated peer chose, say) gets a leading apostrophe (OWASP's CSV injection advice).
    Numbers stay numbers; the JSON export is left exactly as recorded."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value
