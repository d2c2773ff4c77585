"""The SQLite store: schema, batched commits, per-signal sequence counters, export queries.

Blocking code: the runtime calls it from one dedicated thread (:mod:`.writer`); ``patgw export``
calls it directly. A *row* on the way in is the tuple
``(def_id, seq, source_ts, gateway_ts, quality, value, reason)``, built on the hot path.

A spectrum is stored in the same ``value`` column as a compact blob (float32 values after a
16-byte reference to its axis, :func:`~gateway.spectra.encode_values`); each axis is stored once,
in the ``axis`` table, in the same transaction as the first spectrum that uses it.

Sequence counters live in the ``signal`` table and are written in the same transaction as the
samples, so after any crash the counter and the committed samples agree and ``seq`` stays
contiguous. A signal whose unit or description changes between runs gets a new definition row
(``signal_def``); its ``seq`` continues, and every sample keeps the unit it was recorded in.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import itertools
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..api import DeviceIdentity
from ..errors import GatewayError, StoreError, StoreFullError
from ..model import Quality, Sample, Signal, SignalKind, sample_of_fields
from ..spectra import SpectralAxis, Spectrum, decode_values, encode_values
from ..timefmt import now_ns
from .lock import StoreLock, lock_store

__all__ = [
    "ArchivedRun",
    "Delivery",
    "IdentityRecord",
    "Loss",
    "Row",
    "SampleStore",
    "StoredSignal",
]

Row = tuple[int, int, int, int, int, Any, str | None]
T = TypeVar("T")

# 2: the axis table (spectra); 3: sink cursors; 4: delivered ranges above a cursor; 5: the
# record of pruning and archive runs (the store budget); 6: device identities. Older files are
# upgraded in place.
SCHEMA_VERSION = 6

# sqlite3 binds a Spectrum as its stored form: the hot path hands rows over unchanged.
sqlite3.register_adapter(Spectrum, encode_values)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signal (
    name TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signal_def (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL REFERENCES signal(name),
    unit TEXT NOT NULL,
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    instrument TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    UNIQUE (name, unit, kind, description, instrument)
);
-- id is the commit order: the cursor upstream sinks resume from.
-- value has no declared type so integers stay integers and floats stay floats; a spectrum is a
-- blob referring to its axis. data is unused (kept so version-1 files need no rewrite).
CREATE TABLE IF NOT EXISTS sample (
    id INTEGER PRIMARY KEY,
    def_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    source_ts INTEGER NOT NULL,
    gateway_ts INTEGER NOT NULL,
    quality INTEGER NOT NULL,
    value,
    reason TEXT,
    data BLOB
);
-- No secondary index: it would cost ~40 % of insert throughput; exports scan in commit order.
-- The very first version-1 files had one on (def_id, seq): an upgrade drops it.
DROP INDEX IF EXISTS sample_def_seq;
-- Spectral axes (e.g. Raman shift per pixel), once per calibration; key = digest of unit+values.
CREATE TABLE IF NOT EXISTS axis (
    key TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    points INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_ns INTEGER NOT NULL
) WITHOUT ROWID;
-- How far each sink has delivered, as the sample id (commit order) of its last delivered
-- sample: where it resumes after an outage or a restart. Only ever moves forward.
CREATE TABLE IF NOT EXISTS sink_cursor (
    sink TEXT PRIMARY KEY,
    delivered_id INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
) WITHOUT ROWID;
-- Ranges of sample ids a sink delivered *above* its cursor (live data sent while an older
-- backlog was still draining). They merge into the cursor once the gap below them is delivered.
CREATE TABLE IF NOT EXISTS sink_range (
    sink TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    PRIMARY KEY (sink, first_id)
) WITHOUT ROWID;
-- Samples the gateway had to drop (store full, a sink's retention): counted and kept as
-- evidence, one record per run of a signal's seq numbers with one reason.
CREATE TABLE IF NOT EXISTS loss (
    id INTEGER PRIMARY KEY,
    recorded_ns INTEGER NOT NULL,
    signal TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS loss_by_signal ON loss (signal, id);
-- Schema 5. Each run of the store budget (gateway/store/prune.py): the sample ids it removes
-- (a contiguous range, oldest first), the archive file it wrote them to first (name in the
-- archive folder, SHA-256 and size; null without an archive) and its state: 'archiving' (file
-- being written, nothing deleted), 'pruning' (file complete, rows being deleted), 'done', or
-- 'abandoned' (stopped before anything was deleted; its file, if any, removed). Only the
-- sample table is ever pruned: this record, losses, cursors and future audit tables stay.
CREATE TABLE IF NOT EXISTS prune_run (
    id INTEGER PRIMARY KEY,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    archive_file TEXT,
    archive_sha256 TEXT,
    archive_bytes INTEGER,
    state TEXT NOT NULL
);
-- Per signal, the seq span and count of the samples a run removed.
CREATE TABLE IF NOT EXISTS prune_signal (
    run_id INTEGER NOT NULL,
    signal TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run_id, signal)
) WITHOUT ROWID;
-- Schema 6. Which device each instrument was (manufacturer, model, serial number, firmware and
-- hardware revision, as its driver reported them or its configuration stated them: source
-- 'driver' or 'config'), from when to when it was seen. One row per run of sessions with the
-- same identity: a reconnect to the same device moves last_seen_ns on, another device (a
-- swapped instrument, new firmware) gets a row of its own, so the history stays.
CREATE TABLE IF NOT EXISTS device_identity (
    id INTEGER PRIMARY KEY,
    instrument TEXT NOT NULL,
    manufacturer TEXT,
    model TEXT,
    serial_number TEXT,
    firmware_revision TEXT,
    hardware_revision TEXT,
    source TEXT NOT NULL,
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS device_identity_by_instrument ON device_identity (instrument, id);
"""

_INSERT = (
    "INSERT INTO sample (def_id, seq, source_ts, gateway_ts, quality, value, reason)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_ROWS_PER_STATEMENT = 128
"""Rows inserted (or counters updated) by one statement. ``executemany`` of one row at a time
releases and retakes the GIL around every row's step; while the event loop is busy each retake
waits for it, so a 600-row commit took 90-120 ms of wall time beside a busy thread even with the
0.5 ms switch interval (gateway/runtime/interpreter.py), against 6 ms in statements of many
rows, which also cost half the CPU (0.56 against 1.0 ms). Sizes are powers of two (a batch is
split 128, 64, ..., 1) so that few distinct statements are prepared and cached."""
_HAS_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)


@functools.cache
def _insert_sql(rows: int) -> str:
    return _INSERT + ", (?, ?, ?, ?, ?, ?, ?)" * (rows - 1)


@functools.cache
def _counters_sql(rows: int) -> str:
    # UPDATE ... FROM (SQLite 3.33): one statement for many signals.
    values = ", ".join(["(?, ?)"] * rows)
    return (
        f"UPDATE signal SET next_seq=v.column2 FROM (VALUES {values}) AS v"
        " WHERE signal.name=v.column1 AND signal.next_seq<v.column2"
    )


def _chunks(count: int) -> Iterator[tuple[int, int]]:
    """(start, size) covering ``0..count`` (less than a full statement) in powers of two."""
    start = 0
    size = _ROWS_PER_STATEMENT // 2
    while start < count:
        if count - start >= size:
            yield start, size
            start += size
        size //= 2


def _executemany_rows(
    db: sqlite3.Connection, sql: Callable[[int], str], rows: Sequence[Sequence[Any]]
) -> None:
    """Execute ``sql(n)`` (a statement for ``n`` rows) over ``rows``, many rows at a time and
    in order (a sample's id is its commit order)."""
    flat = itertools.chain.from_iterable
    step = _ROWS_PER_STATEMENT
    full = len(rows) - len(rows) % step
    if full:
        db.executemany(
            sql(step), [tuple(flat(rows[at : at + step])) for at in range(0, full, step)]
        )
    for start, size in _chunks(len(rows) - full):
        db.execute(sql(size), tuple(flat(rows[full + start : full + start + size])))


_SQLITE_FULL = 13
_SELECT_BETWEEN = (
    "SELECT id, def_id, seq, source_ts, gateway_ts, quality, value, reason"
    " FROM sample WHERE id BETWEEN ? AND ? ORDER BY id"
)
_DECODE_CHUNK = 1000  # rows per fetch when streaming
_QUALITIES = list(Quality)


@dataclass(frozen=True, slots=True)
class StoredSignal:
    """A signal as the store knows it: its current definition id and next sequence number."""

    def_id: int
    next_seq: int


@dataclass(frozen=True, slots=True)
class Loss:
    """A run of samples of one signal that were dropped instead of committed."""

    signal: str
    first_seq: int
    last_seq: int
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a store-and-forward sink has delivered: every sample id up to ``cursor``, and the
    id ranges (inclusive, ascending, disjoint, above ``cursor + 1``) in ``ranges``."""

    sink: str
    cursor: int
    ranges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ArchivedRun:
    """An archive file a pruning run recorded: the sample ids it holds and its SHA-256."""

    run_id: int
    first_id: int
    last_id: int
    samples: int
    file: str
    sha256: str
    size: int


_INT64 = (-(2**63), 2**63 - 1)


def _storable(value: Any) -> bool:
    if value is None or isinstance(value, bool | float | bytes | Spectrum):
        return True
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    if isinstance(value, str):
        return _utf8(value)
    return False


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape-decoded bytes
        return False
    return True


def _is_int64(value: Any) -> bool:
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def _repaired(row: Row) -> Row:
    """``row`` itself if SQLite can store it, else a ``bad`` row saying why."""
    def_id, seq, source_ts, gateway_ts, quality, value, reason = row
    problems = []
    if not _storable(value):
        problems.append(f"unstorable value of type {type(value).__name__}: {_short(value)}")
        value = None
    if not _is_int64(source_ts):
        problems.append(f"invalid source timestamp {_short(source_ts)}")
        source_ts = gateway_ts
    if reason is not None and not (isinstance(reason, str) and _utf8(reason)):
        reason = _short(reason)
    if not problems and isinstance(quality, int) and quality in (0, 1, 2) and reason is row[6]:
        return row
    if not isinstance(quality, int) or quality not in (0, 1, 2):
        problems.append(f"invalid quality {_short(quality)}")
    text = "; ".join(problems + ([reason] if reason else []))
    return (def_id, seq, source_ts, gateway_ts, int(Quality.BAD), value, text)


def _f64le(values: Any) -> bytes:
    return bytes(np.asarray(values, dtype="<f8").tobytes())


def _short(thing: Any) -> str:
    """A bounded, always-encodable text of ``thing`` for a reason."""
    text = repr(thing)
    text = text if len(text) <= 80 else text[:77] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _translate(exc: sqlite3.Error, action: str) -> StoreError:
    if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
        return StoreFullError(f"store full while {action}: {exc}")
    return StoreError(f"store error while {action}: {exc}")


def first_id_at_or_after(
    db: sqlite3.Connection, ts: int, low: int, high: int, *, table: str = "sample"
) -> int:
    """The smallest id in ``low..high + 1`` whose sample's gateway_ts is at least ``ts``
    (``high + 1``: none), by bisection: gateway time follows commit order (clock steps aside)
    and ids are contiguous above the pruned ones. ``table``: ``store.sample`` from a
    connection that attached the store."""
    query = f"SELECT gateway_ts FROM {table} WHERE id >= ? ORDER BY id LIMIT 1"
    while low <= high:
        mid = (low + high) // 2
        row = db.execute(query, (mid,)).fetchone()
        if row is not None and row[0] < ts:
            low = mid + 1
        else:
            high = mid - 1
    return low


class SampleStore:
    """One SQLite database file holding samples, signal definitions, counters and losses.

    A writable store is locked by the file's identity (:mod:`.lock`), whatever path reaches it,
    so that two gateways can never hand out the same sequence numbers; ``read_only=True``
    (export) takes no lock and changes nothing.
    """

    def __init__(self, path: Path, *, synchronous: str = "normal", read_only: bool = False) -> None:
        self.path = path
        self._lock: StoreLock | None = None
        self._axis_keys: set[str] = set()  # axes known to be committed (saves re-inserts)
        self.last_committed_id = 0  # id of the last row the latest commit() inserted
        try:
            if read_only:
                self._db = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._lock = lock_store(path)
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}"
                )
            self._db.execute("PRAGMA busy_timeout=5000")
            # SQLite's default page cache and WAL checkpoint interval (1000 pages) are kept on
            # purpose: measured with benchmarks/pipeline.py, a 40 MB checkpoint interval made
            # rare commits 2-3x slower (p99 latency) for no sustained-throughput gain.
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path} was written by a newer gateway (schema {version} > {SCHEMA_VERSION})"
                )
            if not read_only:
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            self._release()
            raise _translate(exc, f"opening {path}") from exc
        except OSError as exc:
            self._release()
            raise StoreError(f"cannot open {path}: {exc}") from exc
        except StoreError:
            self._release()
            raise

    def close(self) -> None:
        """Close the database (the WAL is checkpointed by SQLite) and release the lock."""
        self._db.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def define(self, signals: Sequence[Signal]) -> dict[str, StoredSignal]:
        """Record the signals' definitions; return each one's definition id and next ``seq``."""
        now = now_ns()
        out: dict[str, StoredSignal] = {}
        try:
            with self._transaction():
                for s in signals:
                    self._db.execute("INSERT OR IGNORE INTO signal (name) VALUES (?)", (s.id,))
                    key = (s.id, s.unit, s.kind.value, s.description, s.instrument)
                    self._db.execute(
                        "INSERT OR IGNORE INTO signal_def"
                        " (name, unit, kind, description, instrument, created_ns)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (*key, now),
                    )
                    def_id = self._db.execute(
                        "SELECT id FROM signal_def WHERE name=? AND unit=? AND kind=?"
                        " AND description=? AND instrument=?",
                        key,
                    ).fetchone()[0]
                    next_seq = self._db.execute(
                        "SELECT next_seq FROM signal WHERE name=?", (s.id,)
                    ).fetchone()[0]
                    out[s.id] = StoredSignal(def_id, next_seq)
        except sqlite3.Error as exc:
            raise _translate(exc, "defining signals") from exc
        return out

    def commit(
        self,
        rows: Sequence[Row],
        next_seq: Mapping[str, int],
        *,
        losses: Sequence[Loss] = (),
        deliveries: Sequence[Delivery] = (),
    ) -> Sequence[Row]:
        """Insert ``rows`` and advance the counters in ``next_seq``, in one transaction, together
        with the axis of every spectrum among them that the store does not have yet (so no
        spectrum is ever committed without its axis), the ``losses`` to record and the sinks'
        ``deliveries`` to save — so a sink's cursor never moves past dropped samples without
        the record of their loss. Afterwards :attr:`last_committed_id` is the id of the last
        inserted row (ids are assigned in order, one per row, without gaps).

        Returns the rows as stored: ``rows`` itself, unless a row could not be bound (a driver
        published a list, an int beyond 64 bits, a non-integer timestamp…). Such a row does not
        poison the batch: it is stored as a ``bad`` sample without value, the reason naming the
        problem, and the returned list holds the repaired row in its place.
        """
        axes = self._new_axes(rows)
        extra = (losses, deliveries)
        try:
            self._insert(rows, next_seq, axes, extra)
            self._axis_keys.update(axis.key for axis in axes)
            return rows
        except (
            sqlite3.InterfaceError,
            sqlite3.ProgrammingError,
            OverflowError,
            TypeError,
            ValueError,
        ):
            pass  # rare: repair the offending rows, then commit once more
        repaired = [_repaired(row) for row in rows]
        self._insert(repaired, next_seq, axes, extra)
        self._axis_keys.update(axis.key for axis in axes)
        return repaired

    def _new_axes(self, rows: Sequence[Row]) -> list[SpectralAxis]:
        # One type check per row: a few ms per 100k scalar samples, on the store's thread.
        known = self._axis_keys
        found: dict[str, SpectralAxis] = {}
        for row in rows:
            value = row[5]
            if type(value) is Spectrum and value.axis.key not in known:
                found[value.axis.key] = value.axis
        return list(found.values())

    def _insert(
        self,
        rows: Sequence[Row],
        next_seq: Mapping[str, int],
        axes: Sequence[SpectralAxis],
        extra: tuple[Sequence[Loss], Sequence[Delivery]],
    ) -> None:
        losses, deliveries = extra
        try:
            with self._transaction():
                if axes:
                    now = now_ns()
                    self._db.executemany(
                        "INSERT OR IGNORE INTO axis (key, unit, points, data, created_ns)"
                        " VALUES (?, ?, ?, ?, ?)",
                        [(a.key, a.unit, len(a), _f64le(a.values), now) for a in axes],
                    )
                _executemany_rows(self._db, _insert_sql, rows)
                if _HAS_UPDATE_FROM:
                    _executemany_rows(self._db, _counters_sql, list(next_seq.items()))
                else:
                    self._db.executemany(
                        "UPDATE signal SET next_seq=? WHERE name=? AND next_seq<?",
                        [(seq, name, seq) for name, seq in next_seq.items()],
                    )
                if losses:
                    self._insert_losses(losses)
                for delivery in deliveries:
                    self._save_delivery(delivery)
                if rows:
                    self.last_committed_id = self._max_id()
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError):
            raise  # a value SQLite cannot bind: commit() repairs the rows
        except sqlite3.Error as exc:  # disk full, I/O errors, corruption
            raise _translate(exc, f"committing {len(rows)} samples") from exc

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` in one write transaction of this store (the store budget's
        deletes run so, on the writer's thread between two commits)."""
        try:
            with self._transaction():
                return fn(self._db)
        except sqlite3.Error as exc:
            raise _translate(exc, "pruning") from exc

    def record_losses(self, losses: Sequence[Loss]) -> None:
        """Keep evidence of dropped samples in the ``loss`` table."""
        try:
            with self._transaction():
                self._insert_losses(losses)
        except sqlite3.Error as exc:
            raise _translate(exc, "recording losses") from exc

    def _insert_losses(self, losses: Sequence[Loss]) -> None:
        """Record ``losses``; one that continues the signal's latest record (same reason, the
        next seq) extends it, so a long outage is a few records rather than one per commit."""
        now = now_ns()
        for x in losses:
            extended = self._db.execute(
                "UPDATE loss SET last_seq=?, count=count+?"
                " WHERE id=(SELECT max(id) FROM loss WHERE signal=?)"
                " AND reason=? AND last_seq=?",
                (x.last_seq, x.count, x.signal, x.reason, x.first_seq - 1),
            ).rowcount
            if not extended:
                self._db.execute(
                    "INSERT INTO loss (recorded_ns, signal, first_seq, last_seq, count, reason)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (now, x.signal, x.first_seq, x.last_seq, x.count, x.reason),
                )

    def _save_delivery(self, delivery: Delivery) -> None:
        self._db.execute(
            "INSERT INTO sink_cursor (sink, delivered_id, updated_ns) VALUES (?, ?, ?)"
            " ON CONFLICT(sink) DO UPDATE SET delivered_id=excluded.delivered_id,"
            " updated_ns=excluded.updated_ns"
            " WHERE excluded.delivered_id >= sink_cursor.delivered_id",
            (delivery.sink, delivery.cursor, now_ns()),
        )
        self._db.execute("DELETE FROM sink_range WHERE sink=?", (delivery.sink,))
        self._db.executemany(
            "INSERT INTO sink_range (sink, first_id, last_id) VALUES (?, ?, ?)",
            [(delivery.sink, first, last) for first, last in delivery.ranges],
        )

    def record_identity(
        self, instrument: str, identity: DeviceIdentity, source: str, seen_ns: int
    ) -> tuple[bool, IdentityRecord | None]:
        """Keep that ``instrument`` is the device ``identity`` at ``seen_ns``: the latest record
        of the instrument is extended if it is the same device, else a new record starts.
        Returns whether a new record started, and the record it follows (``None`` for the
        instrument's first)."""
        fields = identity.fields()
        try:
            with self._transaction():
                latest = self._latest_identity(instrument)
                if latest is not None and latest.identity == identity:
                    self._db.execute(
                        "UPDATE device_identity SET last_seen_ns=max(last_seen_ns, ?)"
                        " WHERE id=(SELECT max(id) FROM device_identity WHERE instrument=?)",
                        (seen_ns, instrument),
                    )
                    return False, latest
                self._db.execute(
                    "INSERT INTO device_identity (instrument, manufacturer, model, serial_number,"
                    " firmware_revision, hardware_revision, source, first_seen_ns, last_seen_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (instrument, *fields.values(), source, seen_ns, seen_ns),
                )
        except sqlite3.Error as exc:
            raise _translate(exc, "recording a device identity") from exc
        return True, latest

    def _latest_identity(self, instrument: str) -> IdentityRecord | None:
        row = self._db.execute(
            f"SELECT {_IDENTITY_COLUMNS} FROM device_identity WHERE instrument=?"
            " ORDER BY id DESC LIMIT 1",
            (instrument,),
        ).fetchone()
        return None if row is None else _identity_record(row)

    def identities(self, instrument: str | None = None) -> list[IdentityRecord]:
        """Every device each instrument (or ``instrument``) was, oldest first. A store older
        than schema 6 opened read-only has none."""
        where, args = ("WHERE instrument=?", (instrument,)) if instrument else ("", ())
        try:
            rows = self._db.execute(
                f"SELECT {_IDENTITY_COLUMNS} FROM device_identity {where} ORDER BY id", args
            ).fetchall()
        except sqlite3.OperationalError:  # no such table: a read-only look at an old store
            return []
        return [_identity_record(row) for row in rows]

    def _max_id(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(id), 0) FROM sample").fetchone()[0])

    def losses(self) -> list[Loss]:
        """Every recorded loss, oldest first."""
        rows = self._db.execute(
            "SELECT signal, first_seq, last_seq, count, reason FROM loss ORDER BY id"
        ).fetchall()
        return [Loss(*r) for r in rows]

    def signals(self) -> list[Signal]:
        """The latest definition of every signal the store has seen."""
        rows = self._db.execute(
            "SELECT name, unit, kind, description, instrument FROM signal_def"
            " WHERE id IN (SELECT max(id) FROM signal_def GROUP BY name) ORDER BY name"
        ).fetchall()
        return [Signal(n, u, SignalKind(k), d, i) for n, u, k, d, i in rows]

    def samples(
        self,
        signal_glob: str | None = None,
        since_ns: int | None = None,
        *,
        above_id: int = 0,
    ) -> Iterator[Sample]:
        """Committed samples in commit order (so ``seq`` ascends per signal).

        ``signal_glob`` filters signal ids with shell wildcards (``reactor1/feed_pump/*``);
        ``since_ns`` keeps samples whose source timestamp is at or after it; ``above_id`` skips
        the samples with ids up to it (those a pruning run has archived).
        """
        names, spectral = self._definitions()
        wanted = {
            def_id: name_unit
            for def_id, name_unit in names.items()
            if signal_glob is None or fnmatch.fnmatchcase(name_unit[0], signal_glob)
        }
        if not wanted:
            return
        where: list[str] = []
        params: list[Any] = []
        if signal_glob is not None:
            where.append(f"def_id IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if since_ns is not None:
            where.append("source_ts >= ?")
            params.append(since_ns)
        if above_id:
            where.append("id > ?")
            params.append(above_id)
        sql = "SELECT id, def_id, seq, source_ts, gateway_ts, quality, value, reason FROM sample"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._db.execute(sql + " ORDER BY id", params)
        for _id, sample in self._decoded(rows, wanted, spectral):
            yield sample

    def between(self, first_id: int, last_id: int) -> list[tuple[int, Sample]]:
        """Committed samples with ``first_id <= id <= last_id``, in commit order, with ids."""
        ids, samples = self.page(first_id, last_id)
        return list(zip(ids, samples, strict=True))

    def page(self, first_id: int, last_id: int) -> tuple[list[int], list[Sample]]:
        """:meth:`between` as two lists, the ids and the samples: how the forwarders read a
        sink's backlog (every sample of an outage comes through here)."""
        try:
            names, spectral = self._definitions()
            rows = self._db.execute(_SELECT_BETWEEN, (first_id, last_id)).fetchall()
            return self._decode(rows, names, spectral)
        except sqlite3.Error as exc:
            raise _translate(exc, "reading samples for a sink") from exc

    def stream(self, first_id: int, last_id: int) -> Iterator[tuple[int, Sample]]:
        """Like :meth:`between`, but one sample at a time (for ranges too large for memory)."""
        names, spectral = self._definitions()
        rows = self._db.execute(_SELECT_BETWEEN, (first_id, last_id))
        yield from self._decoded(rows, names, spectral)

    def newest(self, signal: str, count: int, *, scan_rows: int) -> tuple[list[Sample], bool]:
        """The newest ``count`` samples of ``signal`` (newest first) among the last
        ``scan_rows`` committed samples, and whether the search was cut short: fewer than
        ``count`` found in a window that does not reach the oldest sample (older ones of
        ``signal`` may lie beyond it).

        The sample table has no index by signal: this walks the primary key backwards from the
        newest id and stops at the ``count``-th match, so it costs the rows committed since the
        ``count``-th newest sample of ``signal``, and never more than ``scan_rows``."""
        try:
            names, spectral = self._definitions()
            wanted = [d for d, (name, _unit) in names.items() if name == signal]
            if not wanted or count < 1:
                return [], False
            newest_id = self._max_id()
            rows = self._db.execute(
                "SELECT id, def_id, seq, source_ts, gateway_ts, quality, value, reason FROM sample"
                f" WHERE id > ? AND def_id IN ({','.join('?' * len(wanted))})"
                " ORDER BY id DESC LIMIT ?",
                (newest_id - scan_rows, *wanted, count),
            ).fetchall()
            _ids, samples = self._decode(rows, names, spectral)
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading the newest samples of {signal}") from exc
        return samples, len(samples) < count and newest_id > scan_rows

    def runs(self, ranges: Sequence[tuple[int, int]], reason: str) -> list[Loss]:
        """Per signal, the seq span and count of the samples in the id ``ranges``: how a sink's
        retention records what it gives up."""
        found: dict[int, list[int]] = {}
        try:
            names, _ = self._definitions()
            for first, last in ranges:
                for def_id, low, high, count in self._db.execute(
                    "SELECT def_id, min(seq), max(seq), count(*) FROM sample"
                    " WHERE id BETWEEN ? AND ? GROUP BY def_id",
                    (first, last),
                ):
                    span = found.setdefault(def_id, [low, high, 0])
                    span[0], span[1], span[2] = (
                        min(span[0], low),
                        max(span[1], high),
                        span[2] + count,
                    )
        except sqlite3.Error as exc:
            raise _translate(exc, "counting samples a sink gives up") from exc
        return [
            Loss(names.get(d, (f"#{d}", ""))[0], low, high, count, reason)
            for d, (low, high, count) in found.items()
        ]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees the store as it was on entry (one read transaction), e.g.
        the archive record and the samples not yet pruned, while a gateway prunes."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):  # a read transaction: nothing to lose
                self._db.execute("COMMIT")

    def archived_runs(self) -> list[ArchivedRun]:
        """Every complete archive file the store budget recorded, oldest first."""
        try:
            rows = self._db.execute(
                "SELECT id, first_id, last_id, samples, archive_file, archive_sha256,"
                " archive_bytes FROM prune_run"
                " WHERE state IN ('pruning', 'done') AND archive_file IS NOT NULL"
                " ORDER BY first_id"
            ).fetchall()
        except sqlite3.OperationalError:
            return []  # a store older than schema 5, opened read-only: never pruned
        return [ArchivedRun(*row) for row in rows]

    def pruned_through(self) -> int:
        """The highest sample id a pruning run has archived or deleted (0: none)."""
        try:
            row = self._db.execute(
                "SELECT coalesce(max(last_id), 0) FROM prune_run WHERE state IN ('pruning', 'done')"
            ).fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0])

    def gateway_ts(self, sample_id: int) -> int | None:
        """The gateway timestamp of sample ``sample_id`` (None if there is none)."""
        try:
            row = self._db.execute(
                "SELECT gateway_ts FROM sample WHERE id=?", (sample_id,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, "reading a sample's time") from exc
        return int(row[0]) if row else None

    def last_id(self) -> int:
        """The id of the newest committed sample (0 for an empty store)."""
        return self._max_id()

    def delivery(self, sink: str) -> Delivery | None:
        """What ``sink`` has delivered so far; None if the store has never seen that sink."""
        try:
            row = self._db.execute(
                "SELECT delivered_id FROM sink_cursor WHERE sink=?", (sink,)
            ).fetchone()
            if row is None:
                return None
            ranges = self._db.execute(
                "SELECT first_id, last_id FROM sink_range WHERE sink=? ORDER BY first_id",
                (sink,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading the cursor of sink {sink!r}") from exc
        return Delivery(sink, int(row[0]), tuple((int(a), int(b)) for a, b in ranges))

    def _definitions(self) -> tuple[dict[int, tuple[str, str]], set[int]]:
        defs = self._db.execute("SELECT id, name, unit, kind FROM signal_def").fetchall()
        names = {def_id: (name, unit) for def_id, name, unit, _ in defs}
        spectral = {d for d, _, _, kind in defs if kind == SignalKind.SPECTRUM.value}
        return names, spectral

    def _decoded(
        self, rows: sqlite3.Cursor, names: Mapping[int, tuple[str, str]], spectral: set[int]
    ) -> Iterator[tuple[int, Sample]]:
        """:meth:`_decode` of a cursor, a chunk at a time (bounded memory)."""
        while chunk := rows.fetchmany(_DECODE_CHUNK):
            ids, samples = self._decode(chunk, names, spectral)
            yield from zip(ids, samples, strict=True)

    def _decode(
        self, rows: Iterable[Any], names: Mapping[int, tuple[str, str]], spectral: set[int]
    ) -> tuple[list[int], list[Sample]]:
        """Rows ``(id, def_id, seq, source_ts, gateway_ts, quality, value, reason)`` as their
        ids and samples. Each sample's tuple is built directly (not through the named tuple's
        Python-level constructor): this is half the CPU time of reading a backlog back."""
        ids: list[int] = []
        samples: list[Sample] = []
        add_id, add = ids.append, samples.append
        quality, sample = _QUALITIES, sample_of_fields
        axes: dict[str, SpectralAxis | None] = {}
        for row_id, def_id, seq, source_ts, gateway_ts, q, value, reason in rows:
            name_unit = names.get(def_id)
            if name_unit is None:
                name_unit = (f"#{def_id}", "")
            if def_id in spectral and value is not None:
                try:
                    value = self._spectrum(value, axes)
                except StoreError as exc:
                    # One damaged row must not hide the rest of the store: report it as what
                    # it now is, a sample whose value cannot be read, and go on.
                    value, q = None, int(Quality.BAD)
                    problem = f"stored spectrum unreadable: {exc}"
                    reason = f"{problem}; {reason}" if reason else problem
            add_id(row_id)
            add(
                sample(
                    (
                        name_unit[0],
                        value,
                        name_unit[1],
                        source_ts,
                        gateway_ts,
                        quality[q],
                        seq,
                        reason,
                    )
                )
            )
        return ids, samples

    def _spectrum(self, blob: Any, axes: dict[str, SpectralAxis | None]) -> Spectrum:
        try:
            key, values = decode_values(blob)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"corrupt value: {exc}") from exc
        if key not in axes:
            try:
                axes[key] = self.axis(key)
            except StoreError:
                axes[key] = None
        axis = axes[key]
        if axis is None:
            raise StoreError(f"its axis {key} is missing or corrupt")
        if len(values) != len(axis):
            raise StoreError(f"{len(values)} values on axis {key} of {len(axis)} points")
        values.flags.writeable = False
        return Spectrum._trusted(values, axis)

    def axis(self, key: str) -> SpectralAxis:
        """The stored axis with ``key``; ``StoreError`` if there is none."""
        try:
            row = self._db.execute("SELECT unit, data FROM axis WHERE key=?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading axis {key}") from exc
        if row is None:
            raise StoreError(f"{self.path}: a spectrum refers to axis {key}, which is missing")
        try:
            return SpectralAxis(np.frombuffer(row[1], dtype="<f8"), row[0])
        except (TypeError, ValueError, GatewayError) as exc:
            raise StoreError(f"{self.path}: axis {key} is corrupt: {exc}") from exc

    def count(self) -> int:
        """Number of committed samples."""
        return int(self._db.execute("SELECT count(*) FROM sample").fetchone()[0])

    def limit_pages(self, max_page_count: int) -> None:
        """Cap the database size in pages (tests use it to make the store 'full')."""
        self._db.execute(f"PRAGMA max_page_count={int(max_page_count)}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """One device an instrument was, and when it was seen (UTC ns)."""

    instrument: str
    identity: DeviceIdentity
    source: str
    first_seen_ns: int
    last_seen_ns: int


_IDENTITY_COLUMNS = (
    "instrument, manufacturer, model, serial_number, firmware_revision, hardware_revision,"
    " source, first_seen_ns, last_seen_ns"
)


def _identity_record(row: Sequence[Any]) -> IdentityRecord:
    return IdentityRecord(row[0], DeviceIdentity(*row[1:6]), row[6], row[7], row[8])


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")
