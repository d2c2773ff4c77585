"""Trend reads: per signal, points decimated to a chart's width, from any window of the store.

The ``sample`` table has no index by signal or time (one would cost commits dearly, see
docs/decisions/0034-trend-reads.md). Instead a file beside the store (:func:`trends_path`:
``<store>.trends``) keeps **rollups**: per signal, per bucket of 1 s, 10 s and 60 s of gateway
time, the number of samples, the lowest quality, and the min, max and sum of the usable values
(numbers whose quality is not bad). A :class:`Roller`, on a thread and connection of its own,
rolls up what the store committed about once a second and moves a mark (``rollup_mark``: the
last sample id rolled up) in the same transaction; it never writes the store, so the store
writer never waits for it. A reader adds the samples above the mark from the store, so a trend
always matches the committed samples and its live tail is as fresh as the last commit. The
rollups are derived data: deleted with the file, they are rebuilt from the samples; the roller
prunes them as the store budget prunes the samples.

:class:`TrendReader` answers with the coarsest rollup that still gives the points asked for,
and reads raw samples for windows short enough to need finer points than 1 s. Its cost grows with
the points asked for and the signals asked for, not with the window or the store's size.

Exceptions: :class:`TrendError` (a request refused: unknown or spectral signal, bad window) and
:class:`~gateway.errors.StoreError` (the store cannot be read), both :class:`GatewayError`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ..errors import GatewayError, StoreError
from ..model import Quality, SignalKind
from .sqlite import first_id_at_or_after

__all__ = [
    "MAX_BUCKETS",
    "MAX_POINTS",
    "MAX_SIGNALS",
    "ROLLUP_WIDTHS_S",
    "Roller",
    "Trend",
    "TrendError",
    "TrendReader",
    "trends_path",
]

ROLLUP_WIDTHS_S = (1, 10, 60)
"""Bucket widths of the rollups, in seconds of gateway time, finest first. Points finer than the
finest are read from the samples; a day is 8,640 rows per signal of the 10 s rollup."""

MAX_SIGNALS = 64
"""Signals one :meth:`TrendReader.trend` call may ask for."""
MAX_POINTS = 20_000
"""Points per signal one call may ask for."""
ROLLUP_ROWS_PER_POINT = 10
"""The most rollup rows per point asked for that a read may seek, per signal: a finer rollup
that would need more is passed over for a coarser one (the coarsest is always allowed)."""
RAW_SCAN_ROWS = 200_000
"""The most samples (of every signal) a raw read scans: windows needing points finer than the
finest rollup are read from the samples if their id span is at most this, else from the finest
rollup (fewer points than asked for, never a slow read)."""

_NS = 1_000_000_000
_SAMPLE = "store.sample"  # the store's samples, attached to a trends file's connection
_INT64_MAX = 2**63 - 1
MAX_BUCKETS = 200_000
"""The most buckets of the coarsest rollup (60 s) a window may span (~139 days): a rollup read
seeks each bucket of each signal asked for (~3 ms per 1,000), so its cost follows the span."""

log = structlog.get_logger("gateway.store")

ROLLUP_SCHEMA = """
-- The trends file (gateway/store/trends.py), beside the store. Rollups: per bucket of
-- `width` seconds of gateway time (bucket = gateway_ts // (width * 1e9)) and signal
-- definition (the store's signal_def id): how many samples, how many usable (a number,
-- quality not bad), their min, max and sum, and the lowest quality. Keyed by time first, so
-- a roll-up updates a few adjacent pages (the current buckets) rather than one page per
-- signal, as an index by signal would.
CREATE TABLE IF NOT EXISTS rollup (
    width INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    def_id INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    usable INTEGER NOT NULL,
    lo,
    hi,
    total REAL NOT NULL,
    worst INTEGER NOT NULL,
    PRIMARY KEY (width, bucket, def_id)
) WITHOUT ROWID;
-- The id of the last sample rolled up and its gateway_ts (one row): newer samples are read
-- from the store's `sample`. The time tells this store from another one put in its place.
CREATE TABLE IF NOT EXISTS rollup_mark (
    rolled_id INTEGER NOT NULL,
    rolled_ts INTEGER NOT NULL
);
"""

_WIDTHS_VALUES = ", ".join(f"({w})" for w in ROLLUP_WIDTHS_S)

ROLLUP_UPSERT = f"""
INSERT INTO rollup (width, bucket, def_id, samples, usable, lo, hi, total, worst)
SELECT w.column1, g.second / w.column1, g.def_id,
       sum(g.samples), sum(g.usable), min(g.lo), max(g.hi), sum(g.total), min(g.worst)
FROM (VALUES {_WIDTHS_VALUES}) AS w
CROSS JOIN (
    SELECT gateway_ts / {_NS} AS second, def_id, count(*) AS samples, count(v) AS usable,
           min(v) AS lo, max(v) AS hi, total(v) AS total, min(quality) AS worst
    FROM (
        SELECT def_id, gateway_ts, quality,
               CASE WHEN quality > 0 AND typeof(value) IN ('integer', 'real') THEN value END AS v
        FROM store.sample WHERE id BETWEEN ?1 AND ?2
    )
    GROUP BY 1, 2
) AS g
WHERE true
GROUP BY 1, 2, 3
ON CONFLICT (width, bucket, def_id) DO UPDATE SET
    samples = samples + excluded.samples,
    usable = usable + excluded.usable,
    lo = min(coalesce(lo, excluded.lo), coalesce(excluded.lo, lo)),
    hi = max(coalesce(hi, excluded.hi), coalesce(excluded.hi, hi)),
    total = total + excluded.total,
    worst = min(worst, excluded.worst);
"""
"""Rolls the samples with ids ``?1..?2`` into every width: grouped by second and signal once,
then into each width (one statement). Every sample counts; only numbers of a quality other than
bad are summarised (a spectrum's samples are counted, never summarised: their trend is refused
anyway)."""

ROLL_EVERY_S = 1.0
"""How often the gateway's roller rolls up what the store committed since (per second, a
signal's samples cost one update of each of its buckets, not one each: decision 0034)."""
ROLL_CHUNK_ROWS = 100_000
"""The most samples one roll-up transaction takes (a backlog, e.g. a store older than its
trends file, is rolled up in steps of this many)."""

_MARK = "SELECT rolled_id, rolled_ts FROM rollup_mark"


def trends_path(store_path: Path) -> Path:
    """The trends file of the store at ``store_path``: ``<store>.trends`` beside it."""
    return store_path.with_name(store_path.name + ".trends")


def _connect(path: Path, store_path: Path, *, read_only: bool) -> sqlite3.Connection:
    """A connection to the trends file with the store attached read-only as ``store``."""
    if read_only:
        db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
        )
    else:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        if not read_only:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(ROLLUP_SCHEMA)
        db.execute("ATTACH DATABASE ? AS store", (f"{store_path.resolve().as_uri()}?mode=ro",))
        return db
    except BaseException:
        db.close()
        raise


class Roller:
    """Keeps the trends file of one store up to date: :meth:`roll` once a second, on a thread
    of its own (the gateway's ``store.trends`` task runs it on one).

    It reads the store on a read-only connection (a WAL reader: it never waits for nor holds up
    the store writer) and writes only its own file. If the store is not the one its rollups were
    made from (replaced, or recreated: the sample at the mark is gone or has another time), it
    starts over from the store's oldest sample.
    """

    def __init__(self, store_path: Path, *, chunk_rows: int = ROLL_CHUNK_ROWS) -> None:
        self.path = trends_path(store_path)
        self.store_path = store_path
        self.chunk_rows = chunk_rows
        try:
            self._db = _connect(self.path, store_path, read_only=False)
            row = self._db.execute(_MARK).fetchone()
            if row is None:
                self._db.execute("INSERT INTO rollup_mark (rolled_id, rolled_ts) VALUES (0, 0)")
                row = (0, 0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the trends file {self.path}: {exc}") from exc
        self.rolled_id, self._rolled_ts = int(row[0]), int(row[1])

    def close(self) -> None:
        """Close the connection (on the thread that rolls)."""
        self._db.close()

    def behind(self) -> int:
        """How many committed samples are not rolled up yet (their ids above the mark)."""
        try:
            last = self._db.execute("SELECT max(id) FROM store.sample").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.store_path}: {exc}") from exc
        return max(0, int(last or 0) - self.rolled_id)

    def roll(self) -> int:
        """Roll up the samples committed since the mark, at most :attr:`chunk_rows` of them, in
        one transaction of the trends file with the new mark, and drop the buckets older than
        the store's oldest sample (the store budget pruned them). Returns how many ids it
        rolled over (``chunk_rows``: call again, there may be more)."""
        db = self._db
        try:
            db.execute("BEGIN")  # deferred: the store is only read, never locked
            try:
                rolled = self._roll(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot roll up trends of {self.store_path}: {exc}") from exc
        return rolled

    def _roll(self, db: sqlite3.Connection) -> int:
        newest = db.execute("SELECT id, gateway_ts FROM store.sample ORDER BY id DESC LIMIT 1")
        last_row = newest.fetchone()
        if last_row is None:
            return 0
        last = int(last_row[0])
        if self.rolled_id and not self._same_store(db, last):
            log.warning("store.trends_rebuilt", trends=str(self.path), was_rolled_to=self.rolled_id)
            db.execute("DELETE FROM rollup")
            self.rolled_id = self._rolled_ts = 0
        if last <= self.rolled_id:
            self._prune(db)
            return 0
        upto = min(last, self.rolled_id + self.chunk_rows)
        db.execute(ROLLUP_UPSERT, (self.rolled_id + 1, upto))
        ts = db.execute(
            "SELECT gateway_ts FROM store.sample WHERE id <= ? ORDER BY id DESC LIMIT 1", (upto,)
        ).fetchone()
        rolled_ts = int(ts[0]) if ts is not None else 0
        db.execute("UPDATE rollup_mark SET rolled_id = ?, rolled_ts = ?", (upto, rolled_ts))
        self._prune(db)
        rolled, self.rolled_id, self._rolled_ts = upto - self.rolled_id, upto, rolled_ts
        return rolled

    def _same_store(self, db: sqlite3.Connection, last: int) -> bool:
        """Whether the store is the one rolled up to the mark: its sample at the mark has the
        time recorded with it (or was pruned since, with newer samples after it)."""
        row = db.execute(
            "SELECT gateway_ts FROM store.sample WHERE id = ?", (self.rolled_id,)
        ).fetchone()
        if row is None:
            return last > self.rolled_id
        return int(row[0]) == self._rolled_ts

    @staticmethod
    def _prune(db: sqlite3.Connection) -> None:
        """Delete the buckets that end before the store's oldest sample. The bucket holding it
        stays, with the counts of the pruned samples it also summarises."""
        oldest = db.execute("SELECT gateway_ts FROM store.sample ORDER BY id LIMIT 1").fetchone()
        if oldest is None:
            return
        for width in ROLLUP_WIDTHS_S:
            db.execute(
                "DELETE FROM rollup WHERE width = ? AND bucket < ?",
                (width, int(oldest[0]) // (width * _NS)),
            )


class TrendError(GatewayError):
    """A trend request refused: an unknown or spectral signal, a bad window or point count."""


@dataclass(frozen=True, slots=True)
class Trend:
    """One signal's points, oldest first, as parallel lists (one entry per point).

    Each point summarises the samples of one bucket of ``resolution_ns`` starting at
    ``time_ns[i]`` (gateway time, UTC nanoseconds): ``lo``/``hi``/``mean`` are the min, max and
    mean of its usable samples (a number, quality not bad) — ``None`` when it has none, e.g. only
    bad samples; ``quality`` is the lowest quality among all its samples (so one bad sample
    in a bucket shows); ``count`` counts all its samples. Buckets without samples have no
    point (a gap in the data is a gap in the lists).
    """

    signal: str
    unit: str
    resolution_ns: int
    source: str  # "raw", or "rollup-<width>s": what the points were computed from
    behind: int = 0  # samples committed but neither rolled up yet nor read (a roll-up backlog)
    time_ns: list[int] = field(default_factory=list)
    lo: list[float | None] = field(default_factory=list)
    hi: list[float | None] = field(default_factory=list)
    mean: list[float | None] = field(default_factory=list)
    quality: list[Quality] = field(default_factory=list)
    count: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Definition:
    name: str
    unit: str
    def_ids: tuple[int, ...]


# A point being built: [samples, usable, lo, hi, total, worst]
_Acc = list[Any]


class TrendReader:
    """Reads trends of the store at ``path`` from its trends file and its samples, on read-only
    connections of its own.

    Made for a worker thread (a console's): it takes no lock and never writes, so it neither
    waits for nor holds up the gateway's commits or roll-ups (WAL readers see the last committed
    state). One reader is not for several threads at once; open one per thread, and close it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        trends = trends_path(path)
        if not trends.exists():
            raise StoreError(
                f"{path} has no trends file yet ({trends.name}): the gateway makes it when it"
                " runs on this store with store.trends on"
            )
        try:
            self._db = _connect(trends, path, read_only=True)
            # 16 MB of page cache: a live tail re-reads the same rollup pages every refresh.
            self._db.execute("PRAGMA cache_size=-16000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {trends} and {path} for trends: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> TrendReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def trend(
        self, signals: Sequence[str], start_ns: int, end_ns: int, max_points: int
    ) -> dict[str, Trend]:
        """Per signal (in the order asked, once each), its points in ``start_ns <= t < end_ns``
        (gateway time, UTC ns), at most ``max_points`` of them, each summarising one bucket.

        Decimation never hides a spike: every point carries the min and max of its bucket's
        usable samples, and the lowest quality of all of them. The bucket width
        (:attr:`Trend.resolution_ns`) is the smallest that gives at most ``max_points`` points:

        - finer than 1 s: from the samples themselves (``source="raw"``), the window exact —
          if it holds at most :data:`RAW_SCAN_ROWS` samples of all signals; otherwise 1 s;
        - otherwise from a rollup (``source="rollup-<w>s"``): the finest whole multiple of a
          rollup width (1, 10, 60 s) that fits, reading at most
          :data:`ROLLUP_ROWS_PER_POINT` rollup rows per point asked for (so the cost follows
          ``max_points`` and the signals asked for, not the window or the store's size).
          Points are whole buckets of that rollup, aligned to its width, so the first and last
          point may also cover samples up to one width outside the window.

        Only scalar signals: a spectrum signal is refused (:class:`TrendError`; its latest
        spectrum is for the spectra page). A signal whose unit changed is trended in its
        current unit only (earlier definitions are left out, never mixed in). A known signal
        without samples in the window gets a :class:`Trend` with empty lists.

        Raises :class:`TrendError` for unknown or spectral signals, an empty list or more than
        :data:`MAX_SIGNALS`, ``end_ns <= start_ns``, or ``max_points`` outside
        ``1..``:data:`MAX_POINTS`; :class:`~gateway.errors.StoreError` if the store cannot be
        read.
        """
        names = _checked(signals, start_ns, end_ns, max_points)
        try:
            # One read transaction: the rollups and their mark agree; the store is read after
            # the mark, so it holds at least every sample up to it.
            self._db.execute("BEGIN")
            try:
                return self._trend(names, start_ns, end_ns, max_points)
            finally:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read trends from {self.path}: {exc}") from exc

    def _trend(
        self, names: list[str], start_ns: int, end_ns: int, max_points: int
    ) -> dict[str, Trend]:
        defs = self._definitions(names)
        step = -(-(end_ns - start_ns) // max_points)
        if step < ROLLUP_WIDTHS_S[0] * _NS:
            span = self._id_span(start_ns, end_ns)
            if span[1] - span[0] <= RAW_SCAN_ROWS:
                return self._raw(defs, span, start_ns, end_ns, step)
        return self._rollup(defs, *_plan(start_ns, end_ns, max_points))

    # -- definitions -------------------------------------------------------------------------
    def _definitions(self, names: list[str]) -> list[_Definition]:
        marks = ",".join("?" * len(names))
        rows = self._db.execute(
            f"SELECT id, name, unit, kind FROM store.signal_def WHERE name IN ({marks})"
            " ORDER BY id",
            names,
        ).fetchall()
        latest: dict[str, tuple[str, str]] = {}
        for _, name, unit, kind in rows:
            latest[name] = (unit, kind)  # ordered by id: the last one wins
        unknown = [n for n in names if n not in latest]
        if unknown:
            raise TrendError(f"unknown signal(s): {', '.join(unknown)}")
        spectral = [n for n in names if latest[n][1] == SignalKind.SPECTRUM.value]
        if spectral:
            raise TrendError(
                f"spectrum signal(s) have no trend (scalars only): {', '.join(spectral)}"
            )
        return [
            _Definition(
                name,
                latest[name][0],
                tuple(i for i, n, u, _ in rows if n == name and u == latest[name][0]),
            )
            for name in names
        ]

    # -- raw samples -------------------------------------------------------------------------

    def _id_span(self, start_ns: int, end_ns: int) -> tuple[int, int]:
        """``(first, stop)``: the ids of the samples committed within the window are in
        ``first <= id < stop``."""
        low = self._db.execute("SELECT id FROM store.sample ORDER BY id LIMIT 1").fetchone()
        high = self._db.execute("SELECT id FROM store.sample ORDER BY id DESC LIMIT 1").fetchone()
        if low is None or high is None:
            return (0, 0)
        first = first_id_at_or_after(self._db, start_ns, int(low[0]), int(high[0]), table=_SAMPLE)
        stop = first_id_at_or_after(self._db, end_ns, first, int(high[0]), table=_SAMPLE)
        return (first, stop)

    def _raw(
        self,
        defs: list[_Definition],
        span: tuple[int, int],
        start_ns: int,
        end_ns: int,
        step: int,
    ) -> dict[str, Trend]:
        owner = {d: index for index, x in enumerate(defs) for d in x.def_ids}
        points: list[dict[int, _Acc]] = [{} for _ in defs]
        marks = ",".join("?" * len(owner))
        rows = self._db.execute(
            "SELECT def_id, gateway_ts, quality, value FROM store.sample"
            f" WHERE id >= ? AND id < ? AND def_id IN ({marks})"
            " AND gateway_ts >= ? AND gateway_ts < ?",
            (span[0], span[1], *owner, start_ns, end_ns),
        )
        for def_id, ts, quality, value in rows:
            _add(points[owner[def_id]], (ts - start_ns) // step, quality, value)
        return {x.name: _trend(x, step, "raw", start_ns, points[i]) for i, x in enumerate(defs)}

    # -- rollups -----------------------------------------------------------------------------
    def _rollup(
        self, defs: list[_Definition], width: int, first: int, last: int, per_point: int
    ) -> dict[str, Trend]:
        width_ns = width * _NS
        row = self._db.execute(_MARK).fetchone()
        mark = int(row[0]) if row is not None else 0
        newest = self._db.execute("SELECT max(id) FROM store.sample").fetchone()[0]
        tail = max(mark, int(newest or 0) - RAW_SCAN_ROWS)
        owner = {d: index for index, x in enumerate(defs) for d in x.def_ids}
        points: list[dict[int, _Acc]] = [{} for _ in defs]
        marks = ",".join("?" * len(owner))
        # The samples committed since the last roll-up (about a second's), at most
        # RAW_SCAN_ROWS of them: a roller catching up leaves the rest out, and says so.
        for def_id, ts, quality, value in self._db.execute(
            f"SELECT def_id, gateway_ts, quality, value FROM store.sample WHERE id > ?"
            f" AND def_id IN ({marks})",
            (tail, *owner),
        ):
            bucket = ts // width_ns
            if first <= bucket <= last:
                _add(points[owner[def_id]], (bucket - first) // per_point, quality, value)
        # One seek per bucket and signal (not a scan of every signal's rows); every signal's
        # row of a bucket in turn, as they share pages.
        rows = self._db.execute(
            "WITH RECURSIVE b(k) AS (SELECT ? UNION ALL SELECT k + 1 FROM b WHERE k < ?)"
            " SELECT r.def_id, r.bucket, r.samples, r.usable, r.lo, r.hi, r.total, r.worst"
            " FROM b CROSS JOIN rollup AS r"
            f" WHERE r.width = ? AND r.bucket = b.k AND r.def_id IN ({marks})",
            (first, last, width, *owner),
        )
        for def_id, bucket, samples, usable, lo, hi, total, worst in rows:
            index = (bucket - first) // per_point
            acc = points[owner[def_id]].get(index)
            if acc is None:
                points[owner[def_id]][index] = [samples, usable, lo, hi, total, worst]
                continue
            acc[0] += samples
            acc[1] += usable
            if lo is not None and (acc[2] is None or lo < acc[2]):
                acc[2] = lo
            if hi is not None and (acc[3] is None or hi > acc[3]):
                acc[3] = hi
            acc[4] += total
            acc[5] = min(acc[5], worst)
        return {
            x.name: _trend(
                x, per_point * width_ns, f"rollup-{width}s", first * width_ns, p, tail - mark
            )
            for x, p in zip(defs, points, strict=True)
        }


def _add(points: dict[int, _Acc], index: int, quality: int, value: Any) -> None:
    """Count one sample into point ``index``, as :data:`ROLLUP_UPSERT` does into a bucket."""
    acc = points.get(index)
    if acc is None:
        acc = points[index] = [0, 0, None, None, 0.0, quality]
    acc[0] += 1
    if quality < acc[5]:
        acc[5] = quality
    if quality > 0 and type(value) in (int, float):
        acc[1] += 1
        acc[2] = value if acc[2] is None or value < acc[2] else acc[2]
        acc[3] = value if acc[3] is None or value > acc[3] else acc[3]
        acc[4] += value


def _plan(start_ns: int, end_ns: int, max_points: int) -> tuple[int, int, int, int]:
    """``(width, first, last, per_point)``: the rollup, its buckets ``first..last`` that hold the
    window, and how many of them make a point — the finest points (ties: the coarser rollup)
    that number at most ``max_points``, among the rollups of which the window spans at most
    :data:`ROLLUP_ROWS_PER_POINT` buckets per point asked for (the coarsest always)."""
    best: tuple[int, int, int, int] | None = None
    best_resolution = 0
    for width in sorted(ROLLUP_WIDTHS_S, reverse=True):
        width_ns = width * _NS
        first, last = start_ns // width_ns, (end_ns - 1) // width_ns
        if best is not None and last - first + 1 > ROLLUP_ROWS_PER_POINT * max_points:
            continue
        per_point = max(1, -(-(end_ns - start_ns) // max_points) // width_ns)
        while (last - first) // per_point + 1 > max_points:
            per_point += 1
        if best is None or per_point * width_ns < best_resolution:
            best, best_resolution = (width, first, last, per_point), per_point * width_ns
    assert best is not None
    return best


def _checked(signals: Sequence[str], start_ns: int, end_ns: int, max_points: int) -> list[str]:
    """The signals asked for, once each in order, once the request is known to be valid."""
    if isinstance(signals, str):
        raise TrendError("signals must be a list of signal ids, not one string")
    names = list(dict.fromkeys(signals))
    if not names:
        raise TrendError("no signal asked for")
    if len(names) > MAX_SIGNALS:
        raise TrendError(f"{len(names)} signals asked for; at most {MAX_SIGNALS} per request")
    if not all(isinstance(n, str) for n in names):
        raise TrendError("signal ids must be strings")
    for name, value in (("start_ns", start_ns), ("end_ns", end_ns), ("max_points", max_points)):
        if type(value) is not int:
            raise TrendError(f"{name} must be an integer, not {type(value).__name__}")
    if end_ns <= start_ns:
        raise TrendError(f"empty window: end_ns {end_ns} is not after start_ns {start_ns}")
    if start_ns < 0 or end_ns > _INT64_MAX:
        raise TrendError("the window must lie between 1970 and 2262 (UTC nanoseconds, int64)")
    coarsest = ROLLUP_WIDTHS_S[-1] * _NS
    if (end_ns - 1) // coarsest - start_ns // coarsest >= MAX_BUCKETS:
        raise TrendError(
            f"a window of more than {MAX_BUCKETS:,} buckets of {ROLLUP_WIDTHS_S[-1]} s"
            " (its read would take minutes)"
        )
    if not 1 <= max_points <= MAX_POINTS:
        raise TrendError(f"max_points must be 1..{MAX_POINTS}, not {max_points}")
    return names


def _trend(
    x: _Definition,
    resolution: int,
    source: str,
    origin: int,
    points: dict[int, _Acc],
    behind: int = 0,
) -> Trend:
    out = Trend(x.name, x.unit, resolution, source, behind)
    qualities = list(Quality)
    for index in sorted(points):
        samples, usable, lo, hi, total, worst = points[index]
        out.time_ns.append(origin + index * resolution)
        out.lo.append(lo)
        out.hi.append(hi)
        out.mean.append(total / usable if usable else None)
        out.quality.append(qualities[worst])
        out.count.append(samples)
    return out
