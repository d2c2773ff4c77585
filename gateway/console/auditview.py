"""The audit page's two costly parts: the chain's verification, kept while the trail is
unchanged, and the download of the records a filter shows.

:class:`VerifyCache` runs :func:`gateway.audit.verify` (a walk of the whole chain, every hash
and anchor signature: seconds on a long trail) only when something it reads has changed since
the last run — the audit file, its write-ahead log, the anchor file, the key file (size,
modification and change times, inode) and the chain's head (seq and hash, one indexed
query) — so a reload of an unchanged trail costs a few ``stat`` calls. One verification runs
at a time; a page that asks meanwhile waits for it and takes its report.

:func:`export_download` writes the records the page shows for a filter (:class:`AuditFilter`,
the newest :data:`PAGE_MAX` at most) as ``patgw audit export`` does (:func:`gateway.audit.export`,
JSON lines or CSV).
"""

from __future__ import annotations

import datetime as dt
import html
import io
import os
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..audit import AuditPaths, AuditRecord, VerifyReport, chain_head, export, read_records, verify

__all__ = [
    "EXPORT_FORMATS",
    "PAGE_MAX",
    "AuditFilter",
    "Download",
    "VerifyCache",
    "audit_filter",
    "export_download",
    "export_links",
]

PAGE_MAX = 1000
"""Most records the audit page shows, and so one download from it holds (the newest of the
filter): about 0.5 MB. The whole trail: ``patgw audit export``."""
DEFAULT_LIMIT = 200

EXPORT_FORMATS: dict[str, tuple[Literal["jsonl", "csv"], str]] = {
    "jsonl": ("jsonl", "application/x-ndjson; charset=utf-8"),
    "csv": ("csv", "text/csv; charset=utf-8"),
}
"""Format name → (``export``'s format, content type)."""

_Stat = tuple[int, int, int, int] | None
_State = tuple[_Stat, _Stat, _Stat, _Stat, tuple[int, str] | None]


def _stat(path: Path) -> _Stat:
    """A file's inode, size, modification and change times; None if there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


def _log_stat(path: Path) -> _Stat:
    """The write-ahead log's inode, size and modification time; None if there is none or it
    is empty (a reader of a closed trail leaves an empty one: the same content). Not its change
    time: SQLite running as root hands the log to the database file's owner each time it opens
    it (fchown), so readers change that."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns, 0) if found.st_size else None


class VerifyCache:
    """The verification report of one audit trail, computed again only when it may differ."""

    def __init__(self, paths: AuditPaths) -> None:
        self.paths = paths
        self.runs = 0  # verifications run (the others were answered from the cache)
        self._lock = threading.Lock()
        self._state: _State | None = None
        self._report: VerifyReport | None = None

    def _current(self) -> _State:
        paths = self.paths
        wal = paths.path.with_name(paths.path.name + "-wal")
        # The files first, the head after: a record appended in between makes the next state
        # differ (its head), so the report taken below is never older than the state it is
        # kept under.
        files = (_stat(paths.path), _log_stat(wal), _stat(paths.anchor_file), _stat(paths.key))
        return (*files, chain_head(paths.path))

    def report(self) -> VerifyReport:
        """The trail's verification (blocking: call it in a worker thread); raises
        :class:`gateway.audit.AuditError` if the trail cannot be read at all."""
        with self._lock:
            state = self._current()
            if self._report is not None and state == self._state:
                return self._report
            paths = self.paths
            report = verify(paths.path, anchor_files=(paths.anchor_file,), key_path=paths.key)
            self._state, self._report = state, report
            self.runs += 1
            return report


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What the audit page shows, from its query: the newest ``limit`` records of ``user``
    (all if empty) whose action matches ``action`` (shell wildcards; all if empty); and the
    format of a download of them."""

    user: str = ""
    action: str = ""
    limit: int = DEFAULT_LIMIT
    format: str = "jsonl"

    def records(self, path: Path) -> Iterator[AuditRecord]:
        """The records of the trail at ``path`` it selects, oldest first. Blocking."""
        return read_records(
            path, user=self.user or None, action=self.action or None, newest=self.limit
        )

    def recorded(self) -> dict[str, object]:
        """The filter as an audit record's details."""
        return {
            "format": self.format,
            "user": self.user or None,
            "action": self.action or None,
            "limit": self.limit,
        }


def audit_filter(query: str) -> AuditFilter:
    """The filter of an audit page's (or download's) URL query; ``ValueError`` if it has more
    fields than the form (not from the page). A limit that is no number is the default, one
    out of 1..:data:`PAGE_MAX` the nearest bound; text is cut at 64 characters."""
    fields = dict(urllib.parse.parse_qsl(query, max_num_fields=8))
    try:
        limit = min(max(int(fields.get("limit", DEFAULT_LIMIT)), 1), PAGE_MAX)
    except ValueError:
        limit = DEFAULT_LIMIT
    return AuditFilter(
        fields.get("user", "")[:64],
        fields.get("action", "")[:64],
        limit,
        fields.get("format", "jsonl")[:16],
    )


def export_links(user: str, action: str, limit: int) -> str:
    """The audit page's download links (HTML) for the records it shows."""
    links = []
    for fmt, label in (("jsonl", "JSON lines"), ("csv", "CSV")):
        query = urllib.parse.urlencode(
            {"user": user, "action": action, "limit": limit, "format": fmt}
        )
        links.append(
            f'<a class="export" href="/audit/export?{html.escape(query)}" download>{label}</a>'
        )
    return f'<p class="export">Download these records: {" · ".join(links)}</p>'


@dataclass(frozen=True, slots=True)
class Download:
    """An export ready to send: its body, content type, file name and what it holds."""

    body: bytes
    content_type: str
    filename: str
    records: int


def export_download(path: Path, chosen: AuditFilter) -> Download:
    """The records ``chosen`` selects, oldest first, in its format (a key of
    :data:`EXPORT_FORMATS`), as ``patgw audit export`` writes them. Blocking."""
    kind, content_type = EXPORT_FORMATS[chosen.format]
    out = io.StringIO(newline="")
    count = export(
        path,
        out,
        fmt=kind,
        user=chosen.user or None,
        action=chosen.action or None,
        newest=chosen.limit,
    )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"audit-{stamp}.{chosen.format}"
    return Download(out.getvalue().encode("utf-8"), content_type, name, count)
