"""The store budget: prune old samples that every forwarding sink has released, archived first.

Blocking code, run on a thread and connection of its own (:mod:`gateway.runtime.budget`
schedules it), so that a pruning run never holds up a commit: each transaction deletes at most
``chunk_samples`` rows, and a pause twice as long follows it, for the writer.

What may be pruned: samples with ids up to the lowest saved cursor of the configured
store-and-forward sinks (a cursor covers what was delivered and what that sink's own retention
gave up, recorded as a loss in the same transaction). At-most-once sinks hold nothing. The
newest sample is never pruned: SQLite gives a new row the largest id plus one, and the ids must
keep increasing (they are the sinks' cursors). Only the ``sample`` table is ever touched.

Archive files are gzip'd JSON lines in the form of ``patgw export --format jsonl``, written by a
low-priority process of its own (:class:`_ArchiveWorker`), so that their Python work never
competes with the store writer for the GIL.

One run, crash-safe at every step (see docs/decisions/0014-store-budget.md)::

    record the run as 'archiving' (id range, file name)      nothing deleted yet
    write <file>.partial, fsync, rename, fsync the folder     the archive is complete
    record SHA-256, size, per-signal seq spans: 'pruning'     from here the rows may go
    delete the range in chunks, then 'done'

After a crash, the next run first (:meth:`Pruner._recover`) abandons a run still 'archiving'
(its partial or complete file is removed: its rows are all still in the store) and finishes a
run that was 'pruning'. So a row is never both pruned and unarchived, and every pruned row is in
exactly one recorded file.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import math
import multiprocessing
import multiprocessing.process
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..config import StoreBudgetConfig
from ..errors import StoreError
from ..model import sample_to_json
from ..oscompat import fsync_folder
from ..timefmt import now_ns
from .sqlite import SampleStore, _Transaction, first_id_at_or_after

__all__ = ["ArchiveError", "PruneReport", "Pruner", "archive_problems", "file_sha256"]

ARCHIVE_SUFFIX = ".jsonl.gz"
_READ_CHUNK = 10_000  # rows per read transaction while archiving (a short one: checkpoints go on)
_MIN_PAUSE_S = 0.002  # between two delete transactions
_GZIP_LEVEL = 1  # 14x smaller than plain JSON lines at ~250 MB/s (decision 0014)
# The byte budget prunes down to this fraction of max_bytes, so one run frees room for many
# commits rather than a few.
_BYTES_TARGET = 0.9
# The age budget starts a run once the oldest sample is this fraction of max_age_s past it.
_AGE_SLACK = 0.1


T = TypeVar("T")


class Writes(Protocol):
    """Runs ``fn`` in one write transaction of a connection to the store; returns its result."""

    def __call__(self, fn: Callable[[sqlite3.Connection], T], /) -> T: ...


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

    def __init__(
        self,
        path: Path,
        budget: StoreBudgetConfig,
        holders: Sequence[str],
        *,
        write: Writes | None = None,
    ) -> None:
        self.path = path
        self.budget = budget
        self.holders = tuple(holders)
        self.stop = threading.Event()
        self._db: sqlite3.Connection | None = None
        self._worker = _ArchiveWorker()
        # Write transactions run through ``write`` — in a gateway, on the store writer's own
        # thread and connection between two commits, so the writer never waits for a lock
        # (SQLite's busy handler sleeps 1, 2, 5, 10 ms...) — or else on our connection.
        self._write: Writes = write or self._own_write

    def _own_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn()
        with _Transaction(db):
            return fn(db)

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

    def close(self) -> None:
        """Close the connection and stop the archive process."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._worker.close()

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
            now = now_ns()
            oldest = (
                self._conn()
                .execute("SELECT gateway_ts FROM sample WHERE id=?", (first,))
                .fetchone()
            )
            # Only once the oldest is _AGE_SLACK past the budget: then a run takes away that
            # much, so runs (and their records) come a few per budget, not one per check.
            if oldest and oldest[0] < now - int(budget.max_age_s * (1 + _AGE_SLACK) * 1e9):
                cutoff = now - int(budget.max_age_s * 1e9)
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
        return first_id_at_or_after(self._conn(), cutoff_ns, first, last) - 1

    # -- one run ---------------------------------------------------------------------------------
    def _run(self, first: int, last: int) -> tuple[int, str | None]:
        archive = self.budget.archive
        name = None
        if archive is not None:
            name = f"patgw-{first:012d}-{last:012d}{ARCHIVE_SUFFIX}"
        state = "archiving" if archive is not None else "pruning"
        # Read outside the write transactions below, which must stay short (the rows in the
        # range never change: only pruning deletes samples, and only this one).
        spans = self._spans(first, last)

        def begin(db: sqlite3.Connection) -> int:
            run_id: int = db.execute(
                "INSERT INTO prune_run (started_ns, first_id, last_id, samples, archive_file,"
                " state) VALUES (?, ?, ?, 0, ?, ?)",
                (now_ns(), first, last, name, state),
            ).lastrowid  # type: ignore[assignment]  # an INSERT always sets it
            if archive is None:
                _record_signals(db, run_id, spans)
            return run_id

        run_id = self._write(begin)
        if archive is not None and name is not None:
            try:
                written = self._worker.write(
                    (str(self.path), str(archive.path), name, first, last), self.stop
                )
            except BaseException:
                self._abandon(run_id, archive.path, name)
                raise
            if written is None:  # stopped while writing: nothing deleted, try again next time
                self._abandon(run_id, archive.path, name)
                return 0, None
            digest, size = written

            def archived(db: sqlite3.Connection) -> None:
                db.execute(
                    "UPDATE prune_run SET state='pruning', archive_sha256=?, archive_bytes=?"
                    " WHERE id=?",
                    (digest, size, run_id),
                )
                _record_signals(db, run_id, spans)

            self._write(archived)
        return self._delete(run_id, first, last), name

    def _spans(self, first: int, last: int) -> list[tuple[str, int, int, int]]:
        """Per signal, the seq span and count of the samples with ids ``first..last``."""
        return (
            self._conn()
            .execute(
                "SELECT d.name, min(s.seq), max(s.seq), count(*) FROM sample s"
                " JOIN signal_def d ON d.id = s.def_id WHERE s.id BETWEEN ? AND ? GROUP BY d.name",
                (first, last),
            )
            .fetchall()
        )

    def _abandon(self, run_id: int, folder: Path, name: str) -> None:
        """Nothing of run ``run_id`` was deleted: remove its file and say so in its record."""
        for path in (folder / name, folder / (name + ".partial")):
            with contextlib.suppress(OSError):
                path.unlink()
        self._write(functools.partial(_finish, run_id=run_id, state="abandoned"))

    def _delete(self, run_id: int, first: int, last: int) -> int:
        db = self._conn()
        chunk = self.budget.chunk_samples
        deleted = 0
        at = first
        while at <= last:
            end = min(last, at + chunk - 1)
            started = time.perf_counter()
            deleted += self._write(functools.partial(_delete_range, first=at, last=end))
            # Checkpoint what we wrote here rather than in the writer's next commit (SQLite
            # runs the automatic checkpoint in whichever connection's commit passes 1000 WAL
            # pages: the writer's, mostly, and pruning doubles the WAL's traffic).
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            at = end + 1
            # Leave the writer at least twice as long as the delete took.
            if self.stop.wait(max(_MIN_PAUSE_S, 2 * (time.perf_counter() - started))):
                return deleted  # still 'pruning': the next start finishes it (archive complete)
        self._write(functools.partial(_finish, run_id=run_id, state="done"))
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
                    self._write(functools.partial(_finish, run_id=run_id, state="abandoned"))
            else:
                self._delete(run_id, first, last)

    def _vacuum(self, db: sqlite3.Connection) -> None:
        """In a store created with ``auto_vacuum=INCREMENTAL``, give free pages back to the
        file system, a chunk at a time; otherwise SQLite reuses them for new rows."""
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return
        step = max(16, self.budget.chunk_samples // 40)  # ~40 scalar rows per 4 kB page
        while not self.stop.is_set() and db.execute("PRAGMA freelist_count").fetchone()[0]:
            self._write(lambda w: w.execute(f"PRAGMA incremental_vacuum({step})").fetchall())


def _delete_range(db: sqlite3.Connection, *, first: int, last: int) -> int:
    """Delete samples ``first..last``, never the newest (see the module docstring)."""
    return int(
        db.execute(
            "DELETE FROM sample WHERE id BETWEEN ? AND ? AND id < (SELECT max(id) FROM sample)",
            (first, last),
        ).rowcount
    )


def _finish(db: sqlite3.Connection, *, run_id: int, state: str) -> None:
    db.execute("UPDATE prune_run SET state=?, finished_ns=? WHERE id=?", (state, now_ns(), run_id))


def _record_signals(
    db: sqlite3.Connection, run_id: int, spans: list[tuple[str, int, int, int]]
) -> None:
    db.executemany(
        "INSERT INTO prune_signal (run_id, signal, first_seq, last_seq, count)"
        " VALUES (?, ?, ?, ?, ?)",
        [(run_id, *span) for span in spans],
    )
    db.execute("UPDATE prune_run SET samples=? WHERE id=?", (sum(s[3] for s in spans), run_id))


class _ArchiveWorker:
    """A process of its own that writes archive files, started on first use.

    Reading and encoding a sample as JSON is Python work (~7 us a sample). On the pruning
    thread it would hold the GIL, and the store writer's ``executemany`` retakes the GIL for
    every row: commits would queue behind the archive (see gateway/runtime/interpreter.py). In
    another process it costs the writer nothing.
    """

    def __init__(self) -> None:
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipe: Connection | None = None

    def write(self, job: tuple[str, str, str, int, int], stop: threading.Event) -> Any:
        """Run ``_write_archive(*job)`` in the worker; its (SHA-256, size), or None if ``stop``
        was set meanwhile (the worker is then stopped; its partial file stays for the caller
        to remove)."""
        if self._process is None or not self._process.is_alive():
            self.close()
            context = multiprocessing.get_context("spawn")  # never fork a threaded process
            self._pipe, child = context.Pipe()
            self._process = context.Process(
                target=_archive_main, args=(child, os.getpid()), name="patgw-archive", daemon=True
            )
            self._process.start()
            child.close()
        assert self._pipe is not None
        try:
            self._pipe.send(job)
            while not self._pipe.poll(0.1):
                if stop.is_set():
                    self.close()
                    return None
                if not self._process.is_alive():
                    raise ArchiveError(f"the archive process ended (exit {self._process.exitcode})")
            kind, result = self._pipe.recv()
        except (OSError, EOFError) as exc:
            self.close()
            raise ArchiveError(f"the archive process failed: {exc!r}") from exc
        if kind != "ok":
            raise ArchiveError(result)
        return result

    def close(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.terminate()
            self._process.join(10)
            self._process.close()
            self._process = None
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None


def _archive_main(pipe: Connection, parent: int) -> None:
    """The archive process: one job at a time from ``pipe`` until the gateway goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the gateway's to handle
    # Background work: on a busy machine the scheduler gives the gateway's commits the CPU
    # first (the archive holds no lock, only a read snapshot of a few thousand rows).
    if hasattr(os, "nice"):  # POSIX; Windows' scheduler favours the foreground anyway
        os.nice(10)
    while True:
        try:
            path, folder, name, first, last = pipe.recv()
        except (EOFError, OSError):
            return
        try:
            result: tuple[str, Any] = (
                "ok",
                _write_archive(Path(path), Path(folder), name, first, last, parent),
            )
        except OSError as exc:
            result = ("error", f"cannot write archive {Path(folder) / name}: {exc}")
        except Exception as exc:  # e.g. a store error: reported, the run is abandoned
            result = ("error", f"archiving {name} failed: {exc!r}")
        try:
            pipe.send(result)
        except OSError:
            return


def _write_archive(
    path: Path, folder: Path, name: str, first: int, last: int, parent: int
) -> tuple[str, int]:
    """Write sample ids ``first..last`` of the store at ``path`` to ``folder/name`` (gzip'd
    JSON lines, written as ``.partial``, fsynced, then renamed); its SHA-256 and size."""
    target = folder / name
    partial = folder / (name + ".partial")
    folder.mkdir(parents=True, exist_ok=True)
    store = SampleStore(path, read_only=True)
    try:
        with partial.open("wb") as raw:
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0
            ) as out:
                for at in range(first, last + 1, _READ_CHUNK):
                    if os.getppid() != parent:  # the gateway is gone (killed): write no more
                        raise OSError("the gateway stopped")
                    end = min(last, at + _READ_CHUNK - 1)
                    rows = store.stream(at, end)
                    out.write("".join([sample_to_json(s) + "\n" for _, s in rows]).encode())
            raw.flush()
            os.fsync(raw.fileno())
    finally:
        store.close()
    if os.getppid() != parent:
        raise OSError("the gateway stopped")
    os.replace(partial, target)
    fsync_folder(folder)
    return file_sha256(target)


def file_sha256(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size of ``path``."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
