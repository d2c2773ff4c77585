"""The store budget: prune old samples that every forwarding sink has released, archived first.

Blocking code, run on a thread and connection of its own (:class:`~gateway.runtime.budget`
schedules it), so that a pruning run never holds up a commit: each transaction deletes at most
``chunk_samples`` rows and SQLite's WAL lets the writer go on between them.

What may be pruned: samples with ids up to the lowest saved cursor of the configured
store-and-forward sinks (a cursor covers what was delivered and what that sink's own retention
gave up, recorded as a loss in the same transaction). At-most-once sinks hold nothing. The
newest sample is never pruned: SQLite gives a new row the largest id plus one, and the ids must
keep increasing (they are the sinks' cursors). Only the ``sample`` table is ever touched.

One run, crash-safe at every step (see docs/decisions/0014-store-budget.md)::

    record the run as 'archiving' (id range, file name)      nothing deleted yet
    write <file>.partial, fsync, rename, fsync the folder     the archive is complete
    record SHA-256, size, per-signal seq spans: 'pruning'     from here the rows may go
    delete the range in chunks, then 'done'

After a crash, :meth:`Pruner.recover` abandons a run still 'archiving' (its partial or complete
file is removed: its rows are all still in the store) and finishes a run that was 'pruning'. So a
row is never both pruned and unarchived, and every pruned row is in exactly one recorded file.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import StoreBudgetConfig
from ..errors import StoreError
from ..model import sample_to_json
from ..timefmt import now_ns
from .sqlite import SampleStore, _Transaction

__all__ = ["ArchiveError", "PruneReport", "Pruner", "archive_problems", "file_sha256"]

ARCHIVE_SUFFIX = ".jsonl"
_PROGRESS_EVERY = 10_000  # rows between checks of the stop flag while writing an archive
# The byte budget prunes down to this fraction of max_bytes, so one run frees room for many
# commits rather than a few.
_BYTES_TARGET = 0.9


class ArchiveError(StoreError):
    """An archive file could not be written (folder missing or not writable, disk full)."""


@dataclass
class PruneReport:
    """What one call of :meth:`Pruner.prune` found and did."""

    pruned: int = 0  # samples deleted
    files: list[str] = field(default_factory=list)  # archive files written
    wanted: int = 0  # the highest id the budget wants gone (0: nothing over budget)
    released: int = 0  # the highest id every forwarding sink has released
    holding: dict[str, int] = field(default_factory=dict)  # sink -> samples it holds back
    stopped: bool = False  # interrupted by the stop flag


def archive_problems(budget: StoreBudgetConfig | None) -> list[str]:
    """``"path: problem"`` lines for an archive folder that cannot be written (for check)."""
    if budget is None or budget.archive is None:
        return []
    folder = budget.archive.path
    where = "store.budget.archive.path"
    if folder.exists():
        if not folder.is_dir():
            return [f"{where}: {folder} is not a folder"]
        if not os.access(folder, os.W_OK | os.X_OK):
            return [f"{where}: {folder} is not writable"]
        return []
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [f"{where}: {folder} cannot be created: {parent} is not a folder"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{where}: {folder} cannot be created: {parent} is not writable"]
    return []


class Pruner:
    """Keeps the store at ``budget``; ``holders`` are the ids of the store-and-forward sinks."""

    def __init__(self, path: Path, budget: StoreBudgetConfig, holders: Sequence[str]) -> None:
        self.path = path
        self.budget = budget
        self.holders = tuple(holders)
        self.stop = threading.Event()
        self._db: sqlite3.Connection | None = None
        self._reader: SampleStore | None = None

    # -- connections (opened on the pruning thread) -------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                # Not through SampleStore: the gateway holds the store's lock; this is one more
                # connection of the same process, as the backlog reader's is.
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA busy_timeout=5000")
            except sqlite3.Error as exc:
                raise StoreError(f"pruning cannot open {self.path}: {exc}") from exc
            self._db = db
        return self._db

    def _samples(self) -> SampleStore:
        if self._reader is None:
            self._reader = SampleStore(self.path, read_only=True)
        return self._reader

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- the budget ------------------------------------------------------------------------------
    def prune(self) -> PruneReport:
        """Archive (if configured) and delete what is over budget and released, run by run,
        until nothing is left to do or :attr:`stop` is set. Raises ``ArchiveError`` when the
        archive cannot be written (nothing of that run is deleted) and ``StoreError`` for a
        store error."""
        try:
            return self._prune()
        except sqlite3.Error as exc:
            raise StoreError(f"pruning failed: {exc}") from exc

    def _prune(self) -> PruneReport:
        report = PruneReport()
        self._recover()
        db = self._conn()
        first, newest = self._id_span()
        if newest == 0:
            return report
        report.wanted = self._wanted(first, newest)
        cursors = self._cursors()
        report.released = min(cursors.values(), default=newest)
        report.holding = {
            sink: min(report.wanted, newest) - cursor
            for sink, cursor in cursors.items()
            if cursor < report.wanted
        }
        # Never the newest row: ids must keep increasing (see the module docstring).
        boundary = min(report.wanted, report.released, newest - 1)
        per_run = self.budget.archive.max_file_samples if self.budget.archive else 1_000_000
        while first <= boundary and not self.stop.is_set():
            last = min(boundary, first + per_run - 1)
            pruned, name = self._run(first, last)
            report.pruned += pruned
            if name is not None:
                report.files.append(name)
            if self.stop.is_set():
                break
            first = last + 1
        report.stopped = self.stop.is_set()
        if report.pruned and not report.stopped:
            self._vacuum(db)
        return report

    def _id_span(self) -> tuple[int, int]:
        db = self._conn()
        low = db.execute("SELECT id FROM sample ORDER BY id LIMIT 1").fetchone()
        high = db.execute("SELECT id FROM sample ORDER BY id DESC LIMIT 1").fetchone()
        return (int(low[0]), int(high[0])) if low and high else (0, 0)

    def _cursors(self) -> dict[str, int]:
        """Each holder's saved cursor (0 for a sink the store has not seen yet)."""
        db = self._conn()
        saved = dict(db.execute("SELECT sink, delivered_id FROM sink_cursor").fetchall())
        return {sink: int(saved.get(sink, 0)) for sink in self.holders}

    def _wanted(self, first: int, newest: int) -> int:
        """The highest id the budget wants pruned (``first - 1``: none)."""
        wanted = first - 1
        budget = self.budget
        if budget.max_age_s is not None:
            cutoff = now_ns() - int(budget.max_age_s * 1e9)
            wanted = max(wanted, self._last_before(first, newest, cutoff))
        if budget.max_bytes is not None:
            db = self._conn()
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            used = (pages - free) * page_size
            if used > budget.max_bytes:
                # Ids are contiguous above the pruned prefix: their span counts the rows.
                per_row = used / (newest - first + 1)
                excess = used - budget.max_bytes * _BYTES_TARGET
                wanted = max(wanted, first - 1 + math.ceil(excess / per_row))
        return min(wanted, newest)

    def _last_before(self, first: int, last: int, cutoff_ns: int) -> int:
        """The largest id in ``first..last`` with gateway_ts before ``cutoff_ns`` (``first - 1``
        if none), by bisection: gateway_ts follows commit order (within clock steps)."""
        db = self._conn()
        low, high = first, last  # invariant: answer in [low - 1, high]
        while low <= high:
            mid = (low + high) // 2
            row = db.execute(
                "SELECT gateway_ts FROM sample WHERE id >= ? ORDER BY id LIMIT 1", (mid,)
            ).fetchone()
            if row is not None and row[0] < cutoff_ns:
                low = mid + 1
            else:
                high = mid - 1
        return high

    # -- one run ---------------------------------------------------------------------------------
    def _run(self, first: int, last: int) -> tuple[int, str | None]:
        db = self._conn()
        archive = self.budget.archive
        name = None
        if archive is not None:
            name = f"patgw-{first:012d}-{last:012d}{ARCHIVE_SUFFIX}"
        state = "archiving" if archive is not None else "pruning"
        with _Transaction(db):
            run_id: int = db.execute(
                "INSERT INTO prune_run (started_ns, first_id, last_id, samples, archive_file,"
                " state) VALUES (?, ?, ?, 0, ?, ?)",
                (now_ns(), first, last, name, state),
            ).lastrowid  # type: ignore[assignment]  # an INSERT always sets it
            if archive is None:
                self._record_signals(db, run_id, first, last)
        if archive is not None and name is not None:
            try:
                digest, size = self._write_archive(archive.path, name, first, last)
            except BaseException:
                self._abandon(run_id, archive.path, name)
                raise
            if digest is None:  # stopped while writing: nothing deleted, try again next time
                self._abandon(run_id, archive.path, name)
                return 0, None
            with _Transaction(db):
                db.execute(
                    "UPDATE prune_run SET state='pruning', archive_sha256=?, archive_bytes=?"
                    " WHERE id=?",
                    (digest, size, run_id),
                )
                self._record_signals(db, run_id, first, last)
        return self._delete(run_id, first, last), name

    def _record_signals(self, db: sqlite3.Connection, run_id: int, first: int, last: int) -> None:
        spans = db.execute(
            "SELECT d.name, min(s.seq), max(s.seq), count(*) FROM sample s"
            " JOIN signal_def d ON d.id = s.def_id WHERE s.id BETWEEN ? AND ? GROUP BY d.name",
            (first, last),
        ).fetchall()
        db.executemany(
            "INSERT INTO prune_signal (run_id, signal, first_seq, last_seq, count)"
            " VALUES (?, ?, ?, ?, ?)",
            [(run_id, *span) for span in spans],
        )
        db.execute("UPDATE prune_run SET samples=? WHERE id=?", (sum(s[3] for s in spans), run_id))

    def _write_archive(
        self, folder: Path, name: str, first: int, last: int
    ) -> tuple[str | None, int]:
        """Write ids ``first..last`` to ``folder/name``; return its SHA-256 and size (None
        as the digest if :attr:`stop` was set meanwhile)."""
        target = folder / name
        partial = folder / (name + ".partial")
        digest = hashlib.sha256()
        size = 0
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as out:
                lines: list[bytes] = []
                for count, (_id, sample) in enumerate(self._samples().stream(first, last), 1):
                    lines.append((sample_to_json(sample) + "\n").encode("utf-8"))
                    if count % _PROGRESS_EVERY == 0:
                        size += _write(out, digest, lines)
                        if self.stop.is_set():
                            return None, 0
                size += _write(out, digest, lines)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, target)
            _fsync_folder(folder)
        except OSError as exc:
            raise ArchiveError(f"cannot write archive {target}: {exc}") from exc
        return digest.hexdigest(), size

    def _abandon(self, run_id: int, folder: Path, name: str) -> None:
        """Nothing of run ``run_id`` was deleted: remove its file and say so in its record."""
        for path in (folder / name, folder / (name + ".partial")):
            with contextlib.suppress(OSError):
                path.unlink()
        db = self._conn()
        with _Transaction(db):
            db.execute(
                "UPDATE prune_run SET state='abandoned', finished_ns=? WHERE id=?",
                (now_ns(), run_id),
            )

    def _delete(self, run_id: int, first: int, last: int) -> int:
        db = self._conn()
        chunk = self.budget.chunk_samples
        deleted = 0
        at = first
        while at <= last:
            end = min(last, at + chunk - 1)
            with _Transaction(db):
                deleted += db.execute(
                    "DELETE FROM sample WHERE id BETWEEN ? AND ?"
                    " AND id < (SELECT max(id) FROM sample)",
                    (at, end),
                ).rowcount
            at = end + 1
        with _Transaction(db):
            db.execute(
                "UPDATE prune_run SET state='done', finished_ns=? WHERE id=?", (now_ns(), run_id)
            )
        return deleted

    def _recover(self) -> None:
        """Finish what a crash interrupted (see the module docstring)."""
        db = self._conn()
        for run_id, first, last, name, state in db.execute(
            "SELECT id, first_id, last_id, archive_file, state FROM prune_run"
            " WHERE state IN ('archiving', 'pruning') ORDER BY id"
        ).fetchall():
            if state == "archiving":
                folder = self.budget.archive.path if self.budget.archive else None
                if folder is not None and name is not None:
                    self._abandon(run_id, folder, name)
                else:
                    with _Transaction(db):
                        db.execute("UPDATE prune_run SET state='abandoned' WHERE id=?", (run_id,))
            else:
                self._delete(run_id, first, last)

    def _vacuum(self, db: sqlite3.Connection) -> None:
        """In a store created with ``auto_vacuum=INCREMENTAL``, give free pages back to the
        file system, a chunk at a time; otherwise SQLite reuses them for new rows."""
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return
        step = max(16, self.budget.chunk_samples // 40)  # ~40 scalar rows per 4 kB page
        while not self.stop.is_set() and db.execute("PRAGMA freelist_count").fetchone()[0]:
            db.execute(f"PRAGMA incremental_vacuum({step})")


def _write(out: object, digest: hashlib._Hash, lines: list[bytes]) -> int:
    data = b"".join(lines)
    lines.clear()
    digest.update(data)
    out.write(data)  # type: ignore[attr-defined]
    return len(data)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size of ``path``."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
