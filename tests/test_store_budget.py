"""The store budget (store.budget): pruning only what every forwarding sink released, archived
first, complete and hash-recorded, read back by export; pauses instead of losing anything; and
no row both pruned and unarchived after a kill -9 in the middle of a run."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter as Tally
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, patgw, running, wait_for, write_config
from prometheus_client import generate_latest
from pydantic import BaseModel, ConfigDict
from test_forward import Plugin as ForwardPlugin
from test_forward import Upstream
from test_runtime import Recorder, SinkOptions

from gateway import PluginContext, Registry, Signal, build_registry, hookimpl, load_plan
from gateway.config import StoreBudgetConfig
from gateway.export import sample_from_json
from gateway.metrics import health_report, new_registry
from gateway.model import Quality, SignalKind
from gateway.store import SampleStore
from gateway.store.prune import ArchiveError, Pruner, file_sha256
from gateway.store.sqlite import Delivery, Loss
from gateway.timefmt import now_ns

SIGNALS = ("t/i/a", "t/i/b")
HOUR_NS = 3600 * 10**9


def fill(
    path: Path, count: int, *, recent: int = 10, age_ns: int = HOUR_NS, **cursors: int
) -> None:
    """A store of ``count`` samples alternating over two signals, all ``age_ns`` old but the
    ``recent`` newest, with the given sinks' cursors saved."""
    store = SampleStore(path)
    try:
        defs = store.define([Signal(s, "1", SignalKind.SCALAR, "", "i") for s in SIGNALS])
        now = now_ns()
        rows = []
        seq = {s: 0 for s in SIGNALS}
        for k in range(count):
            name = SIGNALS[k % 2]
            ts = now - age_ns + k if k < count - recent else now
            rows.append((defs[name].def_id, seq[name], ts, ts, 2, float(k), None))
            seq[name] += 1
        store.commit(rows, seq, deliveries=[Delivery(s, c) for s, c in cursors.items()])
    finally:
        store.close()


def save(path: Path, *deliveries: Delivery, losses: Sequence[Loss] = ()) -> None:
    store = SampleStore(path)
    try:
        store.commit([], {}, deliveries=deliveries, losses=losses)
    finally:
        store.close()


def in_store(path: Path) -> set[tuple[str, int]]:
    store = SampleStore(path, read_only=True)
    try:
        return {(s.signal, s.seq) for s in store.samples()}
    finally:
        store.close()


def archived(path: Path, folder: Path) -> list[tuple[str, int]]:
    """Every (signal, seq) in the archive files the store records (duplicates kept), after
    checking each file against its recorded SHA-256 and size."""
    store = SampleStore(path, read_only=True)
    try:
        runs = store.archived_runs()
    finally:
        store.close()
    found = []
    for run in runs:
        assert file_sha256(folder / run.file) == (run.sha256, run.size), run.file
        with gzip.open(folder / run.file, "rt") as f:
            lines = f.read().splitlines()
        assert len(lines) == run.samples
        found += [(s.signal, s.seq) for s in map(sample_from_json, lines)]
    return found


def budget(folder: Path | None, **extra: Any) -> StoreBudgetConfig:
    archive = {"path": str(folder), "max_file_samples": 1000} if folder else None
    return StoreBudgetConfig.model_validate({"max_age_s": 60, "archive": archive, **extra})


def prune(path: Path, config: StoreBudgetConfig, holders: Sequence[str]) -> Any:
    pruner = Pruner(path, config, holders)
    try:
        return pruner.prune()
    finally:
        pruner.close()


def everything(count: int) -> set[tuple[str, int]]:
    return {(SIGNALS[k % 2], k // 2) for k in range(count)}


def test_pruning_stops_at_the_cursor_of_a_sink_that_is_behind(tmp_path: Path) -> None:
    path, folder = tmp_path / "s.sqlite", tmp_path / "archive"
    fill(path, 3000, up=2990, down=300)
    report = prune(path, budget(folder), ["up", "down"])
    # Ids 1..300 released by both; the down sink holds the rest of what is over budget.
    assert report.pruned == 300
    assert report.holding == {"down": 2990 - 300}
    assert in_store(path) == everything(3000) - everything(300)
    assert sorted(archived(path, folder)) == sorted(everything(300))
    # It catches up: the rest over budget goes, in files of at most 1000, each row once.
    save(path, Delivery("down", 2995))
    report = prune(path, budget(folder), ["up", "down"])
    assert report.holding == {}
    assert report.pruned == 2990 - 300
    assert len(report.files) == 3
    assert in_store(path) == everything(3000) - everything(2990)
    names = archived(path, folder)
    assert len(names) == len(set(names)) == 2990
    assert set(names) == everything(2990)


def test_ranges_delivered_above_a_cursor_do_not_release_the_gap_below(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    fill(path, 1000, a=990)
    save(path, Delivery("b", 100, ((200, 900),)))
    prune(path, budget(None), ["a", "b"])
    assert in_store(path) == everything(1000) - everything(100)


def test_a_sink_the_store_has_not_seen_holds_everything_and_live_sinks_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite"
    fill(path, 500, a=500)
    report = prune(path, budget(None), ["a", "new"])
    assert report.pruned == 0 and report.holding == {"new": 490}
    # No store-and-forward sink at all (only at-most-once ones): what is over budget goes.
    report = prune(path, budget(None), [])
    assert report.pruned == 490
    assert in_store(path) == everything(500) - everything(490)


def test_the_newest_sample_is_never_pruned_so_ids_keep_increasing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    fill(path, 200, recent=0, a=200)
    prune(path, budget(None), ["a"])
    assert in_store(path) == {(SIGNALS[1], 99)}
    store = SampleStore(path)
    try:
        store.define([Signal(s, "1", SignalKind.SCALAR, "", "i") for s in SIGNALS])
        store.commit([(1, 100, 1, 1, 2, 0.0, None)], {SIGNALS[0]: 101})
        assert store.last_committed_id == 201
    finally:
        store.close()


def test_a_run_starts_once_the_oldest_is_ten_percent_past_the_age_budget(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite"
    fill(path, 500, age_ns=63 * 10**9, a=500)
    assert prune(path, budget(None), ["a"]).pruned == 0  # 63 s old, budget 60 s: not yet
    path.unlink()
    fill(path, 500, age_ns=67 * 10**9, a=500)
    assert prune(path, budget(None), ["a"]).pruned == 490


def test_a_size_budget_prunes_the_oldest_released_samples(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    fill(path, 60_000, recent=60_000, a=60_000)
    before = os.path.getsize(path)
    assert before > 2 << 20
    report = prune(path, budget(None, max_age_s=None, max_bytes=1 << 20), ["a"])
    assert report.pruned > 0
    kept = in_store(path)
    assert kept == everything(60_000) - everything(report.pruned)
    db = sqlite3.connect(path)
    try:
        pages, free, size = (
            db.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("page_count", "freelist_count", "page_size")
        )
    finally:
        db.close()
    assert (pages - free) * size <= 1 << 20


def test_a_full_archive_pauses_pruning_and_loses_nothing(tmp_path: Path) -> None:
    path, folder = tmp_path / "s.sqlite", tmp_path / "archive"
    fill(path, 3000, a=3000)
    folder.mkdir()
    # The first file of the run: every write to it gets ENOSPC from the kernel (/dev/full).
    (folder / "patgw-000000000001-000000001000.jsonl.gz.partial").symlink_to("/dev/full")
    with pytest.raises(ArchiveError, match="No space left on device"):
        prune(path, budget(folder), ["a"])
    assert in_store(path) == everything(3000)
    assert archived(path, folder) == []
    assert sorted(p.name for p in folder.iterdir()) == []  # no partial file left behind
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT state FROM prune_run").fetchall() == [("abandoned",)]
    finally:
        db.close()
    # Space again: the next run archives and prunes it all.
    report = prune(path, budget(folder), ["a"])
    assert report.pruned == 2990
    assert sorted(archived(path, folder)) == sorted(everything(2990))


class LivePlugin:
    @hookimpl
    def pat_gateway_register_sinks(self, registry: Registry) -> None:
        registry.add_sink("live", Recorder, SinkOptions)  # at most once: no forward()


def gateway_plan(tmp_path: Path, archive: Path, **up: Any) -> Any:
    config = {
        "area": "t",
        "store": {
            "path": str(tmp_path / "s.sqlite"),
            "commit_interval_ms": 10,
            "budget": {
                "max_age_s": 0.3,
                "check_interval_s": 0.1,
                "chunk_samples": 100,
                "archive": {"path": str(archive), "max_file_samples": 1000},
            },
        },
        "instruments": [{"id": f"c{i}", "driver": "counter"} for i in range(3)],
        "sinks": [
            {"id": "up", "type": "upstream", "retry": {"initial_s": 0.02, "max_s": 0.1}, **up},
            {"id": "view", "type": "live"},
        ],
        "data_dir": str(tmp_path / "data"),
    }
    registry = build_registry([ForwardPlugin(), LivePlugin()], entry_points=False)
    return load_plan(write_config(tmp_path / "g.yaml", config), registry)


@pytest.mark.asyncio
async def test_a_down_sink_holds_its_samples_and_says_so_until_its_retention_gives_them_up(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "archive"
    plan = gateway_plan(tmp_path, folder, retention={"max_samples": 100_000})
    sink = plan.sinks[0].instance
    assert isinstance(sink, Upstream)
    sink.up = False
    async with running(plan) as (gateway, _):
        keeper = gateway.budget
        assert keeper is not None
        await wait_for(lambda: keeper.stats.holding.get("up", 0) > 100, what="the sink holds")
        report = health_report(gateway, 0)
        assert report["sinks"]["up"]["holding_prune"] is True
        assert report["sinks"]["up"]["holding_samples"] > 100
        assert "view" not in report["store"]["budget"]["held_by"]  # at-most-once: holds nothing
        assert keeper.stats.pruned == 0
        # Its own retention gives the oldest up (recorded as losses): those may be pruned.
        gateway.forwarders[0].config = gateway.forwarders[0].config.model_copy(
            update={
                "retention": plan.config.sinks[0].retention.model_copy(update={"max_samples": 50})
            }
        )
        await wait_for(lambda: keeper.stats.pruned > 200, what="given-up samples pruned")
        sink.up = True
        await wait_for(lambda: not keeper.stats.holding, what="nothing held once delivered")
    store = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        lost = Tally()
        for x in store.losses():
            assert "sink 'up'" in x.reason
            for seq in range(x.first_seq, x.last_seq + 1):
                lost[(x.signal, seq)] += 1
    finally:
        store.close()
    pruned = archived(tmp_path / "s.sqlite", folder)
    assert len(pruned) == len(set(pruned))
    # Every pruned sample was delivered to the sink or given up by its retention, recorded.
    assert set(pruned) <= sink.seen() | set(lost)
    assert not set(pruned) & in_store(tmp_path / "s.sqlite")


@pytest.mark.asyncio
async def test_an_archive_folder_that_cannot_be_written_pauses_pruning_and_says_so(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the archive's parent folder should be")
    folder = blocker / "archive"
    plan = gateway_plan(tmp_path, folder)
    async with running(plan) as (gateway, _):
        keeper = gateway.budget
        assert keeper is not None
        await wait_for(lambda: keeper.stats.paused, what="pruning paused")
        report = health_report(gateway, 0)["store"]["budget"]
        assert "cannot write archive" in report["paused"]
        assert report["pruned"] == 0
        assert "patgw_store_prune_paused 1.0" in metrics_text(gateway)
        await wait_for(lambda: gateway.stats.committed > 500, what="commits go on")
        blocker.unlink()
        blocker.mkdir()
        await wait_for(lambda: keeper.stats.pruned > 0, what="pruning resumed")
        assert keeper.stats.paused is None
        assert "patgw_store_prune_paused 0.0" in metrics_text(gateway)
    pruned = archived(tmp_path / "s.sqlite", folder)
    assert len(pruned) == len(set(pruned))
    kept = in_store(tmp_path / "s.sqlite")
    assert not set(pruned) & kept
    # Nothing lost: per signal, archive and store together hold every seq from 0 on.
    for name in {s for s, _ in kept}:
        seqs = sorted([q for s, q in pruned if s == name] + [q for s, q in kept if s == name])
        assert seqs == list(range(len(seqs)))


def metrics_text(gateway: Any) -> str:
    return generate_latest(new_registry(gateway)).decode()


def export_config(tmp_path: Path, folder: Path) -> Path:
    return write_config(
        tmp_path / "g.yaml",
        {
            "area": "t",
            "store": {
                "path": str(tmp_path / "s.sqlite"),
                "budget": {"max_age_s": 60, "archive": {"path": str(folder)}},
            },
        },
    )


def test_export_reads_the_archives_back_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    path, folder = tmp_path / "s.sqlite", tmp_path / "archive"
    fill(path, 3000, a=3000)
    assert prune(path, budget(folder), ["a"]).pruned == 2990
    config = export_config(tmp_path, folder)
    whole = patgw("export", str(config), "--include-archive", "--signal", "t/i/*")
    assert whole.returncode == 0, whole.stderr
    samples = [sample_from_json(line) for line in whole.stdout.splitlines()]
    assert [(s.signal, s.seq) for s in samples] == [(SIGNALS[k % 2], k // 2) for k in range(3000)]
    assert [s.value for s in samples] == [float(k) for k in range(3000)]
    assert all(s.quality is Quality.GOOD for s in samples)
    only_store = patgw("export", str(config))
    assert len(only_store.stdout.splitlines()) == 10
    filtered = patgw("export", str(config), "--include-archive", "--signal", "t/i/b")
    assert len(filtered.stdout.splitlines()) == 1500
    first = sorted(folder.iterdir())[0]
    with gzip.open(first, "rt") as f:
        text = f.read()
    assert '"seq":0}' in text
    with gzip.open(first, "wt") as f:
        f.write(text.replace('"seq":0}', '"seq":7}', 1))
    tampered = patgw("export", str(config), "--include-archive")
    assert tampered.returncode == 1
    assert f"archive file {first} does not match its record" in tampered.stderr
    assert tampered.stdout == ""


def test_check_refuses_a_budget_below_one_commit_interval_and_an_unwritable_archive(
    tmp_path: Path,
) -> None:
    def check(store: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        config = write_config(tmp_path / "g.yaml", {"area": "t", "store": store})
        return patgw("check", str(config), cwd=tmp_path)

    short = check({"commit_interval_ms": 100, "budget": {"max_age_s": 0.05}})
    assert short.returncode == 2
    assert "store: budget.max_age_s (0.05 s) is shorter than one commit interval" in short.stderr
    empty = check({"budget": {}})
    assert empty.returncode == 2
    assert "store.budget: give max_age_s, max_bytes or both" in empty.stderr
    (tmp_path / "plain").write_text("")
    blocked = check({"budget": {"max_bytes": 1 << 30, "archive": {"path": "plain/archive"}}})
    assert blocked.returncode == 2
    # Relative to the config's folder (tmp_path), named in full.
    plain = tmp_path / "plain"
    assert (
        f"store.budget.archive.path: {plain}/archive cannot be created: {plain} is not a folder"
        in (blocked.stderr)
    )
    small = check({"budget": {"max_bytes": 1000}})
    assert small.returncode == 2 and "store.budget.max_bytes" in small.stderr
    good = check({"budget": {"max_age_s": 300, "archive": {"path": "archive"}}})
    assert good.returncode == 0, good.stderr


class BurstOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_tick: int = 50


class Burst:
    """Publishes ``per_tick`` samples over two channels every 5 ms (10,000/s by default)."""

    def __init__(self, options: BurstOptions, context: PluginContext) -> None:
        self.per_tick = options.per_tick

    def channels(self) -> Sequence[Any]:
        from gateway import Channel

        return [Channel("a", "1"), Channel("b", "1")]

    async def run(self, io: Any) -> None:
        io.connected()
        outputs = [io.output("a").publish, io.output("b").publish]
        n = 0
        while True:
            for _ in range(self.per_tick):
                outputs[n % 2](float(n))
                n += 1
            await asyncio.sleep(0.005)


class BurstPlugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("burst", Burst, BurstOptions)


def _run_gateway(config: Path) -> None:
    """``python tests/test_store_budget.py CONFIG``: a gateway with the burst driver, in a
    process of its own (killed with SIGKILL by the crash test)."""
    from gateway.runtime import Gateway

    plan = load_plan(config, build_registry([BurstPlugin()], entry_points=False))

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await Gateway(plan).run(stop)

    asyncio.run(main())


def _invariants(path: Path, folder: Path) -> set[tuple[str, int]]:
    """Check, on a store a crash left: every sample missing from the store is in exactly one
    complete, recorded archive file whose SHA-256 matches; return the archived samples."""
    db = sqlite3.connect(path)  # read-write: it may have to recover the WAL
    try:
        next_seq = dict(db.execute("SELECT name, next_seq FROM signal").fetchall())
        names = dict(db.execute("SELECT id, name FROM signal_def").fetchall())
        kept = {(names[d], q) for d, q in db.execute("SELECT def_id, seq FROM sample")}
    finally:
        db.close()
    files = archived(path, folder)
    assert len(files) == len(set(files)), "a sample in two archive files"
    for name, count in next_seq.items():
        for seq in range(count):
            assert (name, seq) in kept or (name, seq) in files, f"{name} {seq} lost"
    return set(files)


def test_a_kill_during_archiving_or_pruning_never_loses_an_unarchived_sample(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "archive"
    path = tmp_path / "s.sqlite"
    config = write_config(
        tmp_path / "g.yaml",
        {
            "area": "t",
            "store": {
                "path": str(path),
                "budget": {
                    "max_age_s": 0.5,
                    "check_interval_s": 0.2,
                    "chunk_samples": 100,
                    "archive": {"path": str(folder), "max_file_samples": 1000},
                },
            },
            "instruments": [{"id": "i", "driver": "burst"}],
            "data_dir": str(tmp_path / "data"),
        },
    )
    command = [sys.executable, str(Path(__file__)), str(config)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    hit: Tally[str] = Tally()

    def newest_run() -> int:
        if not path.exists():
            return 0
        db = sqlite3.connect(path)
        try:
            return int(db.execute("SELECT coalesce(max(id), 0) FROM prune_run").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()

    def state_now(after: int) -> str | None:
        """The state of a run this process began (not one a previous kill left)."""
        try:
            db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0.05)
            try:
                row = db.execute(
                    "SELECT state FROM prune_run"
                    " WHERE id > ? AND state IN ('archiving', 'pruning')",
                    (after,),
                ).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    for attempt in range(20):
        if hit["archiving"] and hit["pruning"]:
            break
        wanted = ("archiving", "pruning")[attempt % 2]
        after = newest_run()
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            state = None
            while state != wanted and time.monotonic() < deadline:
                state = state_now(after)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        if state is not None:
            hit[state] += 1
        _invariants(path, folder)
    assert hit["archiving"] and hit["pruning"], f"kills never landed mid-run: {dict(hit)}"
    # A clean run afterwards finishes what the crashes interrupted, and goes on pruning.
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (finished := _finished(path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert finished, "the interrupted runs were not finished"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    # A stop may leave a run half deleted (its archive complete): the next start finishes it.
    report = prune(path, budget(folder, max_age_s=3600), [])
    assert report.pruned == 0
    files = _invariants(path, folder)
    assert not files & in_store(path), "a sample both archived and still in the store"


def _finished(path: Path) -> bool:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1)
    try:
        left = db.execute(
            "SELECT count(*) FROM prune_run WHERE state IN ('archiving', 'pruning')"
        ).fetchone()[0]
        done = db.execute("SELECT max(id) FROM prune_run WHERE state='done'").fetchone()[0]
        first = db.execute("SELECT max(id) FROM prune_run WHERE state<>'done'").fetchone()[0]
    finally:
        db.close()
    return left == 0 and done is not None and (first is None or done > first)


if __name__ == "__main__":
    _run_gateway(Path(sys.argv[1]))
