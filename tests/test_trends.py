"""Trend reads (gateway/store/trends.py): per signal, at most max_points points over a window,
each with the exact min, max and mean of its bucket's usable samples and its lowest quality,
from the rollups a Roller keeps in a file beside the store or from raw samples; kept consistent
through pruning, a replaced store and a roll-up backlog, and never holding up a commit. Every
expectation is computed here from the raw samples."""

from __future__ import annotations

import math
import random
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway import Quality, Signal, SpectralAxis, Spectrum
from gateway.config import StoreBudgetConfig
from gateway.errors import StoreError
from gateway.model import SignalKind
from gateway.store import SampleStore
from gateway.store.prune import Pruner
from gateway.store.sqlite import Delivery
from gateway.store.trends import (
    MAX_SIGNALS,
    RAW_SCAN_ROWS,
    Roller,
    Trend,
    TrendError,
    TrendReader,
    trends_path,
)
from gateway.timefmt import now_ns

S = 10**9
T0 = 1_800_000_000 * S  # a whole minute: buckets of every width start here
BAD, UNCERTAIN, GOOD = int(Quality.BAD), int(Quality.UNCERTAIN), int(Quality.GOOD)

# (signal, gateway_ts, quality, value)
Reading = tuple[str, int, int, Any]


def scalar(name: str, unit: str = "1") -> Signal:
    return Signal(name, unit, SignalKind.SCALAR, "", "i")


def roll(path: Path, chunk_rows: int = 1000) -> int:
    """Roll up everything the store at ``path`` holds, as the gateway's roller would (in
    chunks: a backlog); the ids rolled over."""
    roller = Roller(path, chunk_rows=chunk_rows)
    try:
        total = 0
        while True:
            rolled = roller.roll()
            total += rolled
            if rolled < chunk_rows:
                return total
    finally:
        roller.close()


def write(path: Path, readings: Sequence[Reading], *, batch: int = 97) -> None:
    """Commit ``readings`` (in order) in batches of ``batch``, as the writer would, and roll
    them up."""
    store = SampleStore(path)
    try:
        names = sorted({r[0] for r in readings})
        defs = store.define([scalar(n) for n in names])
        seq = {n: defs[n].next_seq for n in names}
        rows = []
        for name, ts, quality, value in readings:
            rows.append((defs[name].def_id, seq[name], ts, ts, quality, value, None))
            seq[name] += 1
        for at in range(0, len(rows), batch):
            store.commit(rows[at : at + batch], seq)
    finally:
        store.close()
    roll(path)


def trend(
    path: Path, signals: Sequence[str], start: int, end: int, points: int
) -> dict[str, Trend]:
    with TrendReader(path) as reader:
        return reader.trend(signals, start, end, points)


def expected(
    readings: Iterable[Reading], signal: str, origin: int, width: int, lo_ts: int, hi_ts: int
) -> list[tuple[int, Any, Any, float | None, Quality, int]]:
    """Points computed from the raw readings of ``signal`` with ``lo_ts <= ts < hi_ts``, in
    buckets of ``width`` from ``origin``: (time, min, max, mean, worst quality, count)."""
    buckets: dict[int, list[Reading]] = {}
    for r in readings:
        if r[0] == signal and lo_ts <= r[1] < hi_ts:
            buckets.setdefault((r[1] - origin) // width, []).append(r)
    out = []
    for k in sorted(buckets):
        rs = buckets[k]
        usable = [r[3] for r in rs if r[2] > 0 and type(r[3]) in (int, float)]
        out.append(
            (
                origin + k * width,
                min(usable) if usable else None,
                max(usable) if usable else None,
                sum(usable) / len(usable) if usable else None,
                Quality(min(r[2] for r in rs)),
                len(rs),
            )
        )
    return out


def points(t: Trend) -> list[tuple[int, Any, Any, float | None, Quality, int]]:
    return list(zip(t.time_ns, t.lo, t.hi, t.mean, t.quality, t.count, strict=True))


def same(got: list[Any], want: list[Any]) -> None:
    """Equal, the means to float rounding (summed in another order)."""
    assert [p[:3] + p[4:] for p in got] == [p[:3] + p[4:] for p in want]
    for g, w in zip(got, want, strict=True):
        assert (g[3] is None) == (w[3] is None)
        if w[3] is not None:
            assert math.isclose(g[3], w[3], rel_tol=1e-12, abs_tol=1e-9)


def wave(
    name: str, seconds: int, hz: int = 10, *, at: int = T0, phase: float = 0.0
) -> list[Reading]:
    return [
        (name, at + k * S // hz, GOOD, round(math.sin(k / 7 + phase) * 10, 3))
        for k in range(seconds * hz)
    ]


# -- decimation ------------------------------------------------------------------------------


def test_a_spike_is_never_hidden_by_decimation(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    readings = wave("a", 600)  # 10 minutes at 10 Hz: 6,000 samples
    spike_at = 4321
    readings[spike_at] = ("a", readings[spike_at][1], GOOD, 1e6)
    dip_at = 123
    readings[dip_at] = ("a", readings[dip_at][1], GOOD, -1e6)
    write(path, readings)
    # 10 minutes in 100 points: 6 s each, 6 buckets of the 1 s rollup (the finest that fits).
    got = trend(path, ["a"], T0, T0 + 600 * S, 100)["a"]
    assert got.source == "rollup-1s" and got.resolution_ns == 6 * S
    assert len(got.time_ns) == 100
    same(points(got), expected(readings, "a", T0, 6 * S, T0, T0 + 600 * S))
    assert max(v for v in got.hi if v is not None) == 1e6
    assert min(v for v in got.lo if v is not None) == -1e6
    # The point holding the spike, and only it, reaches it.
    spike_point = (readings[spike_at][1] - T0) // (6 * S)
    assert [i for i, v in enumerate(got.hi) if v == 1e6] == [spike_point]


@pytest.mark.parametrize(
    ("window_s", "max_points", "source", "resolution_s"),
    [
        (5, 20, "raw", 0.25),  # finer than 1 s: raw samples
        (600, 1000, "rollup-1s", 1),  # 0.6 s asked, too many samples to scan: 1 s
        (600, 60, "rollup-10s", 10),  # as fine from the 1 s rollup: 10 times the reads
        (600, 75, "rollup-1s", 8),  # 8 s: finer than the 10 s rollup
        (3600, 60, "rollup-60s", 60),
        (3600, 7, "rollup-60s", 540),  # 514.3 s asked: 9 minutes
        (86400, 1000, "rollup-10s", 90),  # 86.4 s asked; the 1 s rollup: 86,400 reads
    ],
)
def test_the_finest_points_that_fit_from_the_coarsest_rollup_that_gives_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    window_s: int,
    max_points: int,
    source: str,
    resolution_s: float,
) -> None:
    path = tmp_path / "s.sqlite"
    readings = wave("a", 3600, hz=1) + wave("b", 600, hz=10)
    readings.sort(key=lambda r: r[1])
    write(path, readings, batch=500)
    # Fewer samples than the real limit: make it small so that 600 s (6,600) is too many.
    monkeypatch.setattr("gateway.store.trends.RAW_SCAN_ROWS", 1000)
    got = trend(path, ["a", "b"], T0, T0 + window_s * S, max_points)
    for name in ("a", "b"):
        t = got[name]
        assert (t.source, t.resolution_ns) == (source, int(resolution_s * S))
        assert 0 < len(t.time_ns) <= max_points
        same(points(t), expected(readings, name, T0, t.resolution_ns, T0, T0 + window_s * S))


def test_never_more_points_than_asked_for_whatever_the_window(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    readings = wave("a", 4000, hz=1, at=T0 - 200 * S)
    write(path, readings, batch=333)
    rng = random.Random(17)
    with TrendReader(path) as reader:
        for _ in range(60):
            start = T0 + rng.randrange(-300, 3000) * S + rng.randrange(S)
            end = start + rng.randrange(1, 3600 * S)
            wanted = rng.choice([1, 2, 3, 7, 10, 99, 500, 1000])
            t = reader.trend(["a"], start, end, wanted)["a"]
            assert len(t.time_ns) <= wanted, (start, end, wanted, t.source)
            assert t.time_ns == sorted(set(t.time_ns))
            # Every sample of the window is in some point (none lost at the edges).
            inside = sum(1 for r in readings if start <= r[1] < end)
            if t.source == "raw":
                assert sum(t.count) == inside
            else:
                assert sum(t.count) >= inside


def test_rollups_summed_over_many_commits_equal_the_raw_samples(tmp_path: Path) -> None:
    """Batches split buckets anywhere (merged by the upsert), readings arrive out of time
    order across signals, values are integers and floats, negative and positive."""
    path = tmp_path / "s.sqlite"
    rng = random.Random(3)
    readings: list[Reading] = []
    for k in range(20_000):
        name = rng.choice("abc")
        ts = T0 + k * 37_000_000 + rng.randrange(-5, 5) * 1_000_000
        value: Any = rng.randrange(-1000, 1000) if name == "c" else rng.uniform(-1e3, 1e3)
        readings.append((name, ts, rng.choice([GOOD, GOOD, GOOD, UNCERTAIN, BAD]), value))
    write(path, readings, batch=71)
    end = T0 + 20_000 * 37_000_000  # 740 s
    for max_points, source in ((100, "rollup-1s"), (20, "rollup-10s"), (5, "rollup-60s")):
        got = trend(path, ["a", "b", "c"], T0, end, max_points)
        width = int(source[7:-1]) * S
        covered = ((end - 1) // width + 1) * width  # whole buckets: to the end of the last
        for name in "abc":
            t = got[name]
            assert t.source == source and t.resolution_ns % width == 0
            assert len(t.time_ns) <= max_points
            same(points(t), expected(readings, name, T0, t.resolution_ns, T0, covered))


# -- time bounds ------------------------------------------------------------------------------


def test_raw_reads_keep_the_window_exactly(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    readings = wave("a", 60)
    write(path, readings)
    start, end = T0 + 10 * S + 50_000_000, T0 + 12 * S + 50_000_000
    got = trend(path, ["a"], start, end, 1000)["a"]
    assert got.source == "raw" and got.resolution_ns == 2 * S // 1000
    inside = [r for r in readings if start <= r[1] < end]
    assert len(got.time_ns) == len(inside) == 20  # one sample per 2 ms point: each its own
    assert got.lo == got.hi == [r[3] for r in inside]
    assert all(start <= t < end for t in got.time_ns)
    # The end is exclusive, the start inclusive.
    at_start = trend(path, ["a"], T0 + 10 * S, T0 + 10 * S + 1, 10)["a"]
    assert at_start.count == [1] and at_start.lo == [readings[100][3]]
    assert trend(path, ["a"], T0 + 10 * S - 1, T0 + 10 * S, 10)["a"].count == []


def test_rollup_points_cover_whole_buckets_at_most_one_width_outside_the_window(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite"
    readings = wave("a", 300)
    write(path, readings)
    start, end = T0 + 10 * S + S // 2, T0 + 250 * S + S // 2
    # 10 s asked: the 10 s rollup; the window touches 25 of its buckets, so 2 per point.
    got = trend(path, ["a"], start, end, 24)["a"]
    assert (got.source, got.resolution_ns) == ("rollup-10s", 20 * S)
    assert got.time_ns[0] == T0 + 10 * S  # the bucket holding the start
    assert got.time_ns[-1] == T0 + 250 * S  # the bucket holding the end
    want = expected(readings, "a", T0 + 10 * S, 20 * S, T0 + 10 * S, T0 + 260 * S)
    same(points(got), want)
    assert all(start - 10 * S < t < end for t in got.time_ns)


# -- signals ----------------------------------------------------------------------------------


def test_several_signals_each_their_own_in_the_order_asked(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    readings = sorted(
        wave("r/x", 120) + [(n, ts, q, v * 2 + 5) for n, ts, q, v in wave("r/y", 120)],
        key=lambda r: r[1],
    )
    write(path, readings)
    got = trend(path, ["r/y", "r/x", "r/y"], T0, T0 + 120 * S, 12)
    assert list(got) == ["r/y", "r/x"]  # once each, in the order asked
    for name in got:
        assert got[name].signal == name and got[name].unit == "1"
        same(points(got[name]), expected(readings, name, T0, 10 * S, T0, T0 + 120 * S))
    assert got["r/y"].hi != got["r/x"].hi


def test_a_signal_without_samples_in_the_window_has_an_empty_trend(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SampleStore(path)
    try:
        defs = store.define([scalar("a"), scalar("quiet")])
        store.commit([(defs["a"].def_id, 0, T0, T0, GOOD, 1.5, None)], {"a": 1})
    finally:
        store.close()
    roll(path)
    for window, wanted in ((S, 100), (3600 * S, 100)):  # raw and rollup
        got = trend(path, ["quiet", "a"], T0, T0 + window, wanted)
        assert got["quiet"].time_ns == got["quiet"].lo == got["quiet"].count == []
        assert got["a"].lo == [1.5]
    assert trend(path, ["a"], T0 + S, T0 + 2 * S, 10)["a"].count == []  # data, not here


def test_bad_samples_show_their_quality_without_a_value(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    readings: list[Reading] = []
    for k in range(10):  # second 0: good; 1: only bad; 2: mixed; 3: uncertain and text
        readings.append(("a", T0 + k * S // 10, GOOD, 10.0 + k))
        readings.append(("a", T0 + S + k * S // 10, BAD, None if k % 2 else 999.0))
        quality = BAD if k == 5 else GOOD
        readings.append(("a", T0 + 2 * S + k * S // 10, quality, 1e9 if k == 5 else float(k)))
        readings.append(("a", T0 + 3 * S + k * S // 10, UNCERTAIN, "auto" if k == 0 else k))
    readings.sort(key=lambda r: r[1])
    write(path, readings)
    for window, wanted in ((4 * S, 4), (4 * S, 40)):  # from the 1 s rollup, from raw samples
        got = trend(path, ["a"], T0, T0 + window, wanted)["a"]
        assert got.source == ("rollup-1s" if wanted == 4 else "raw")
        want = expected(readings, "a", T0, got.resolution_ns, T0, T0 + window)
        same(points(got), want)
    got = trend(path, ["a"], T0, T0 + 4 * S, 4)["a"]
    assert got.quality == [Quality.GOOD, Quality.BAD, Quality.BAD, Quality.UNCERTAIN]
    assert (got.lo[1], got.hi[1], got.mean[1]) == (None, None, None)  # a bad value is no value
    assert (got.lo[2], got.hi[2]) == (0.0, 9.0)  # the bad 1e9 left out, its quality shown
    assert got.count == [10, 10, 10, 10]
    assert got.lo[3] == 1 and got.hi[3] == 9  # the text value counted, not summarised


def test_unknown_and_spectrum_signals_and_bad_requests_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    axis = SpectralAxis(np.array([400.0, 800.0, 1200.0]), "cm-1")
    store = SampleStore(path)
    try:
        defs = store.define(
            [scalar("a"), Signal("raman", "{counts}", SignalKind.SPECTRUM, "", "i")]
        )
        spectrum = Spectrum(np.array([1.0, 2.0, 3.0]), axis)
        store.commit(
            [
                (defs["a"].def_id, 0, T0, T0, GOOD, 1.0, None),
                (defs["raman"].def_id, 0, T0, T0, GOOD, spectrum, None),
            ],
            {"a": 1, "raman": 1},
        )
    finally:
        store.close()
    roll(path)
    with TrendReader(path) as reader:
        with pytest.raises(TrendError, match=r"unknown signal.*nope"):
            reader.trend(["a", "nope"], T0, T0 + S, 10)
        with pytest.raises(TrendError, match=r"spectrum.*raman"):
            reader.trend(["a", "raman"], T0, T0 + S, 10)
        with pytest.raises(TrendError, match="empty window"):
            reader.trend(["a"], T0, T0, 10)
        with pytest.raises(TrendError, match="max_points"):
            reader.trend(["a"], T0, T0 + S, 0)
        with pytest.raises(TrendError, match="no signal"):
            reader.trend([], T0, T0 + S, 10)
        with pytest.raises(TrendError, match="not one string"):
            reader.trend("a", T0, T0 + S, 10)
        with pytest.raises(TrendError, match="at most"):
            reader.trend([f"s{i}" for i in range(MAX_SIGNALS + 1)], T0, T0 + S, 10)
        with pytest.raises(TrendError, match="between 1970 and 2262"):
            reader.trend(["a"], -S, T0, 10)
        with pytest.raises(TrendError, match="between 1970 and 2262"):
            reader.trend(["a"], T0, 2**63, 10)
        with pytest.raises(TrendError, match="more than 200,000 buckets"):
            reader.trend(["a"], T0 - 200_000 * 60 * S, T0 + 60 * S, 10)
        with pytest.raises(TrendError, match="start_ns must be an integer"):
            reader.trend(["a"], 1.5, T0, 10)  # type: ignore[arg-type]


def test_a_changed_unit_is_trended_in_its_current_unit_only(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    for k, unit in enumerate(("mL/min", "L/h")):
        store = SampleStore(path)
        try:
            ids = store.define([scalar("flow", unit)])["flow"]
            row = (ids.def_id, ids.next_seq, T0 + k * S, T0 + k * S, GOOD, 50.0 - 47 * k, None)
            store.commit([row], {"flow": ids.next_seq + 1})
        finally:
            store.close()
        roll(path)
    got = trend(path, ["flow"], T0, T0 + 2 * S, 2)["flow"]
    assert (got.unit, got.lo, got.time_ns) == ("L/h", [3.0], [T0 + S])


def test_a_reader_sees_each_commit_of_a_running_store(tmp_path: Path) -> None:
    """The live tail: a reader open beside the writer sees every commit at once, whether the
    roller has rolled it up yet or not, and counts it once when it has."""
    path = tmp_path / "s.sqlite"
    store = SampleStore(path)
    roller = Roller(path)
    try:
        ids = store.define([scalar("a")])["a"]
        with TrendReader(path) as reader:
            for k in range(6):
                ts = T0 + k * S
                store.commit([(ids.def_id, k, ts, ts, GOOD, float(k), None)], {"a": k + 1})
                if k % 2:
                    assert roller.roll() == 2 and roller.behind() == 0
                got = reader.trend(["a"], T0, T0 + 3600 * S, 3600)["a"]
                assert got.source == "rollup-1s" and got.lo == [float(i) for i in range(k + 1)]
                assert got.count == [1] * (k + 1) and got.behind == 0
    finally:
        roller.close()
        store.close()


def test_a_store_without_its_trends_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    write(path, wave("a", 1))
    trends_path(path).unlink()
    with pytest.raises(StoreError, match=r"no trends file yet.*store\.trends on"):
        TrendReader(path)
    assert roll(path) == 10  # made again from the samples
    assert trend(path, ["a"], T0, T0 + S, 1)["a"].count == [10]


def test_a_roll_up_backlog_is_left_out_of_the_tail_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store far ahead of its rollups (a trends file deleted, store.trends turned on late):
    a read scans at most RAW_SCAN_ROWS samples above the mark and says how many it left out;
    the roller catches up in chunks."""
    path = tmp_path / "s.sqlite"
    readings = wave("a", 300)  # 3,000 samples
    write(path, readings)
    trends_path(path).unlink()
    Roller(path).close()  # an empty trends file: everything is behind
    monkeypatch.setattr("gateway.store.trends.RAW_SCAN_ROWS", 1000)
    got = trend(path, ["a"], T0, T0 + 300 * S, 300)["a"]
    assert got.behind == 2000 and sum(got.count) == 1000
    assert got.time_ns[0] == T0 + 200 * S  # the newest 1,000: the last 100 s
    roller = Roller(path, chunk_rows=1200)
    try:
        assert [roller.roll(), roller.behind()] == [1200, 1800]
        got = trend(path, ["a"], T0, T0 + 300 * S, 300)["a"]
        assert got.behind == 800 and sum(got.count) == 2200
        assert [roller.roll(), roller.roll(), roller.roll()] == [1200, 600, 0]
    finally:
        roller.close()
    got = trend(path, ["a"], T0, T0 + 300 * S, 300)["a"]
    assert got.behind == 0
    same(points(got), expected(readings, "a", T0, S, T0, T0 + 300 * S))


def test_a_replaced_store_is_rolled_up_from_scratch(tmp_path: Path) -> None:
    """The trends file outlives its store (a restored backup, a store deleted and made
    again): its rollups are dropped and made from the new store's samples."""
    path = tmp_path / "s.sqlite"
    write(path, wave("a", 30))
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    replacement = wave("a", 20, at=T0 + 5 * S, phase=1.0)  # fewer ids, other times
    write(path, replacement)
    got = trend(path, ["a"], T0, T0 + 60 * S, 60)["a"]
    same(points(got), expected(replacement, "a", T0, S, T0, T0 + 60 * S))
    # ... and with more ids than the old mark, but another time at it.
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    longer = wave("a", 40, at=T0 + 100 * S)
    write(path, longer)
    got = trend(path, ["a"], T0, T0 + 200 * S, 200)["a"]
    same(points(got), expected(longer, "a", T0, S, T0, T0 + 200 * S))


def test_a_roll_up_in_progress_never_holds_up_a_commit(tmp_path: Path) -> None:
    """The roller writes only its own file and reads the store as a WAL reader: while its
    transaction is open (rollups written, not committed), the store still commits, and the
    roll-up that follows takes the new samples too."""
    path = tmp_path / "s.sqlite"
    write(path, wave("a", 2))
    store = SampleStore(path)
    roller = Roller(path)
    try:
        store._db.execute("PRAGMA busy_timeout=0")  # waiting for a lock would be an error now
        ids = store.define([scalar("a")])["a"]
        roller._db.execute("BEGIN")
        roller._db.execute("INSERT INTO rollup VALUES (1, 0, 1, 1, 1, 0, 0, 0, 2)")
        roller._db.execute("SELECT count(*) FROM store.sample").fetchone()
        ts = T0 + 2 * S
        store.commit([(ids.def_id, ids.next_seq, ts, ts, GOOD, 7.0, None)], {"a": 21})
        roller._db.execute("ROLLBACK")
        assert roller.roll() == 1
    finally:
        roller.close()
        store.close()
    assert trend(path, ["a"], T0 + 2 * S, T0 + 3 * S, 1)["a"].lo == [7.0]


# -- pruning ----------------------------------------------------------------------------------


def test_pruning_removes_the_rollups_of_the_time_it_removed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    base = now_ns() // (60 * S) * 60 * S - 7200 * S
    # Two hours of two signals at 1 Hz up to now: the first hour is over a 1 h age budget.
    readings = sorted(
        wave("a", 7200, hz=1, at=base) + wave("b", 7200, hz=1, at=base), key=lambda r: r[1]
    )
    write(path, readings, batch=1000)
    store = SampleStore(path)
    try:
        store.commit([], {}, deliveries=[Delivery("up", 10**9)])
    finally:
        store.close()
    config = StoreBudgetConfig.model_validate({"max_age_s": 3600, "chunk_samples": 1000})
    pruner = Pruner(path, config, ["up"])
    try:
        report = pruner.prune()
    finally:
        pruner.close()
    assert report.pruned > 0
    assert roll(path) == 0  # nothing new: it prunes
    db = sqlite3.connect(path)
    trends = sqlite3.connect(trends_path(path))
    try:
        oldest = db.execute("SELECT gateway_ts FROM sample ORDER BY id LIMIT 1").fetchone()[0]
        first_bucket = {
            w: trends.execute("SELECT min(bucket) FROM rollup WHERE width=?", (w,)).fetchone()[0]
            for w in (1, 10, 60)
        }
    finally:
        db.close()
        trends.close()
    # Nothing before the bucket of the oldest sample left, that bucket kept.
    assert first_bucket == {w: oldest // (w * S) for w in (1, 10, 60)}
    # What is left still answers exactly as the samples left do (1 s rollup, whole buckets).
    left = [r for r in readings if r[1] >= oldest]
    start, end = oldest // (60 * S) * 60 * S + 60 * S, base + 7260 * S
    got = trend(path, ["a", "b"], start, end, 300)
    for name in ("a", "b"):
        assert got[name].source.startswith("rollup-") and got[name].count
        same(points(got[name]), expected(left, name, start, got[name].resolution_ns, start, end))
    # ... and the time pruned has no points left.
    assert trend(path, ["a"], base, oldest // (60 * S) * 60 * S, 100)["a"].count == []


def test_the_raw_scan_limit_is_a_bound_on_what_one_read_scans() -> None:
    # The documented figure (decision 0034) and the constant must agree.
    doc = (Path(__file__).parents[1] / "docs/decisions/0034-trend-reads.md").read_text()
    assert f"{RAW_SCAN_ROWS:,}" in doc
