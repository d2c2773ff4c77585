"""The durable store: counters across restarts, unit changes, and a full disk."""

from __future__ import annotations

import asyncio
import enum
import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import gateway.store.sqlite as sqlite_module
from gateway import Quality, Signal, StoreError, StoreFullError
from gateway.config import StoreConfig
from gateway.store import SampleStore, StoreWriter
from gateway.store.sqlite import Delivery, Loss

FLOW = Signal("r1/pump/flow", "mL/min", instrument="pump")
SPEED = Signal("r1/pump/speed", "{rev}/min", instrument="pump")


def rows(def_id: int, first_seq: int, count: int, t0: int = 1_000) -> list[tuple]:
    return [
        (def_id, seq, t0 + seq, t0 + seq + 1, Quality.GOOD, float(seq), None)
        for seq in range(first_seq, first_seq + count)
    ]


@pytest.mark.parametrize("update_from", [True, False], ids=["update-from", "sqlite-before-3.33"])
@pytest.mark.parametrize("count", [1, 2, 127, 128, 129, 255, 256, 300, 1001])
def test_batches_of_any_size_are_stored_in_order_with_their_counters(
    tmp_path: Path, count: int, update_from: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows go in statements of many rows (128, then powers of two): every row is stored once,
    ids in commit order, values exact; every signal's counter advances, none goes back (also
    with the one-row-at-a-time counters kept for SQLite older than 3.33)."""
    monkeypatch.setattr(sqlite_module, "_HAS_UPDATE_FROM", update_from)
    signals = [Signal(f"r1/dev/s{i:04d}", "1", instrument="dev") for i in range(count)]
    store = SampleStore(tmp_path / "s.sqlite")
    try:
        ids = store.define(signals)
        batch = [
            (ids[s.id].def_id, 7, 1000 + i, 2000 + i, Quality.GOOD, i / 3 if i % 2 else i, None)
            for i, s in enumerate(signals)
        ]
        store.commit(batch, {s.id: 8 + i for i, s in enumerate(signals)})
        assert store.last_committed_id == count
        # A lower counter (a stale writer) never moves one back; a higher one moves it on.
        store.commit([], {signals[0].id: 1, signals[-1].id: 10_000})
    finally:
        store.close()
    store = SampleStore(tmp_path / "s.sqlite")
    try:
        stored = [(s.signal, s.seq, s.source_ts, s.value) for s in store.samples()]
        again = store.define(signals)
    finally:
        store.close()
    assert stored == [(s.id, 7, 1000 + i, i / 3 if i % 2 else i) for i, s in enumerate(signals)]
    assert type(stored[0][3]) is int and (count == 1 or type(stored[1][3]) is float)
    expected = [8 + i for i in range(count)]
    expected[0] = max(expected[0], 1)
    expected[-1] = 10_000
    assert [again[s.id].next_seq for s in signals] == expected


def test_counters_survive_reopen(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.sqlite")
    ids = store.define([FLOW, SPEED])
    assert ids[FLOW.id].next_seq == 0
    store.commit(rows(ids[FLOW.id].def_id, 0, 5), {FLOW.id: 5, SPEED.id: 0})
    store.close()
    store = SampleStore(tmp_path / "s.sqlite")
    again = store.define([FLOW, SPEED])
    assert again[FLOW.id].def_id == ids[FLOW.id].def_id
    assert again[FLOW.id].next_seq == 5
    assert again[SPEED.id].next_seq == 0
    assert [s.seq for s in store.samples()] == [0, 1, 2, 3, 4]
    store.close()


def test_counter_never_moves_backwards(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.sqlite")
    ids = store.define([FLOW])
    store.commit(rows(ids[FLOW.id].def_id, 0, 3), {FLOW.id: 3})
    store.commit([], {FLOW.id: 1})
    assert store.define([FLOW])[FLOW.id].next_seq == 3
    store.close()


def test_unit_change_keeps_sequence_and_old_units(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.sqlite")
    old = store.define([FLOW])[FLOW.id]
    store.commit(rows(old.def_id, 0, 2), {FLOW.id: 2})
    in_lph = Signal(FLOW.id, "L/h", instrument="pump")
    new = store.define([in_lph])[FLOW.id]
    assert new.def_id != old.def_id
    assert new.next_seq == 2
    store.commit(rows(new.def_id, 2, 2), {FLOW.id: 4})
    samples = list(store.samples())
    assert [(s.seq, s.unit) for s in samples] == [
        (0, "mL/min"),
        (1, "mL/min"),
        (2, "L/h"),
        (3, "L/h"),
    ]
    assert store.signals() == [in_lph]
    store.close()


def test_export_filters(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.sqlite")
    ids = store.define([FLOW, SPEED])
    store.commit(rows(ids[FLOW.id].def_id, 0, 3) + rows(ids[SPEED.id].def_id, 0, 3), {})
    assert {s.signal for s in store.samples("*/speed")} == {SPEED.id}
    assert [s.seq for s in store.samples("r1/pump/flow", since_ns=1_001)] == [1, 2]
    assert list(store.samples("nothing/*")) == []
    store.close()


def fill_up(store: SampleStore) -> None:
    """Make the next commit fail with SQLITE_FULL, as a full disk would."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store.limit_pages(pages)


def test_full_store_raises_store_full(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.sqlite")
    ids = store.define([FLOW])
    fill_up(store)
    with pytest.raises(StoreFullError, match="store full"):
        store.commit(rows(ids[FLOW.id].def_id, 0, 5000), {FLOW.id: 5000})
    # The failed transaction left nothing behind: no rows, counter unchanged.
    assert store.count() == 0
    assert store.define([FLOW])[FLOW.id].next_seq == 0
    store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_full_disk_policy_counts_and_records_every_drop(tmp_path: Path, policy: str) -> None:
    store = SampleStore(tmp_path / "s.sqlite")
    ids = store.define([FLOW, SPEED])
    flow_id, speed_id = ids[FLOW.id].def_id, ids[SPEED.id].def_id
    config = StoreConfig(path=tmp_path / "s.sqlite", max_pending_samples=1000, on_full=policy)
    writer = StoreWriter(
        store,
        config,
        names={flow_id: (FLOW.id, FLOW.unit), speed_id: (SPEED.id, SPEED.unit)},
        executor=StoreWriter.new_executor(),
    )
    try:
        fill_up(store)
        # 1500 flow + 300 speed samples arrive while the disk is full: 800 must go.
        arrivals = [rows(flow_id, 0, 900), rows(speed_id, 0, 300), rows(flow_id, 900, 600)]
        for batch in arrivals:
            writer.pending.extend(batch)
            await writer.flush()
        assert writer.stats.failed_commits == 3
        assert writer.stats.dropped == 800
        assert writer.stats.committed == 0
        store.limit_pages(1_000_000)  # space again
        await writer.flush()
        assert writer.stats.committed == 1000
        losses = store.losses()
        samples = list(store.samples())
    finally:
        await writer.aclose()
    assert sum(x.count for x in losses) == 800
    # Runs that continue each other are merged: one record per signal run, not per flush.
    assert len(losses) == (2 if policy == "drop_newest" else 1)
    assert all(x.count == x.last_seq - x.first_seq + 1 for x in losses)
    kept = {(s.signal, s.seq) for s in samples}
    lost = {(x.signal, q) for x in losses for q in range(x.first_seq, x.last_seq + 1)}
    everything = {(FLOW.id, q) for q in range(1500)} | {(SPEED.id, q) for q in range(300)}
    assert kept.isdisjoint(lost)
    assert kept | lost == everything  # nothing silently missing
    assert all(policy in x.reason for x in losses)
    flow_lost = sorted(q for sig, q in lost if sig == FLOW.id)
    if policy == "drop_newest":
        # The first 1000 to arrive are kept: flow 0..899 and speed 0..99.
        assert flow_lost == list(range(900, 1500))
        assert sorted(q for sig, q in lost if sig == SPEED.id) == list(range(100, 300))
    else:
        # The newest 1000 are kept: flow 800..899, all 300 speed samples, flow 900..1499.
        assert flow_lost == list(range(800))
        assert not [q for sig, q in lost if sig == SPEED.id]
    # Committed counters include dropped samples: a restart never reuses a seq.
    reopened = SampleStore(tmp_path / "s.sqlite")
    assert reopened.define([FLOW])[FLOW.id].next_seq == 1500
    reopened.close()


@pytest.mark.asyncio
async def test_losses_on_a_full_disk_name_the_error_the_store_got(tmp_path: Path) -> None:
    """Not "commits lag behind the instruments": while commits fail, what the bound drops is
    recorded and logged with the commit's own error."""
    store = SampleStore(tmp_path / "s.sqlite")
    flow_id = store.define([FLOW])[FLOW.id].def_id
    writer = StoreWriter(
        store,
        StoreConfig(path=tmp_path / "s.sqlite", max_pending_samples=1000),
        names={flow_id: (FLOW.id, FLOW.unit)},
        executor=StoreWriter.new_executor(),
    )
    try:
        fill_up(store)
        with capture_logs() as logs:
            for first in range(0, 3000, 600):  # one interval's arrivals each, disk still full
                writer.pending.extend(rows(flow_id, first, 600))
                await writer.flush()
        failed = writer.stats.last_error
        store.limit_pages(1_000_000)  # space again: the losses are recorded
        await writer.flush()
        losses = store.losses()
    finally:
        await writer.aclose()
    assert failed is not None and "database or disk is full" in failed
    reason = "drop_newest: store could not commit: database or disk is full (SQLITE_FULL)"
    assert [(x.first_seq, x.last_seq, x.count, x.reason) for x in losses] == [
        (1000, 2999, 2000, reason)  # one record for the whole outage
    ]
    dropped = [e for e in logs if e["event"] == "store.samples_dropped"]
    assert dropped and all(e["reason"] == reason for e in dropped)


# Runs in a child process on a 1 MB tmpfs of its own: a real ENOSPC, then space again.
ON_A_SMALL_DISK = """
import asyncio, json, sys
from pathlib import Path
from gateway import Signal
from gateway.config import StoreConfig
from gateway.store import SampleStore, StoreWriter

async def main():
    disk = Path(sys.argv[1])
    filler = disk / "filler"
    filler.write_bytes(bytes(256 * 1024))  # deleted later to make room again
    flow = Signal("r1/pump/flow", "mL/min", instrument="pump")
    store = SampleStore(disk / "s.sqlite")
    def_id = store.define([flow])[flow.id].def_id
    counters = {flow.id: 0}
    writer = StoreWriter(
        store, StoreConfig(path=disk / "s.sqlite", max_pending_samples=2000),
        names={def_id: (flow.id, flow.unit)},
        executor=StoreWriter.new_executor(),
    )
    try:
        while not writer.stats.dropped and counters[flow.id] < 1_000_000:
            first = counters[flow.id]
            writer.pending.extend(
                (def_id, q, q, q, 2, "x" * 100, None) for q in range(first, first + 1000)
            )
            counters[flow.id] = first + 1000
            await writer.flush()
        error = writer.stats.last_error
        filler.unlink()
        await writer.flush()
        reasons = sorted({x.reason for x in store.losses()})
    finally:
        await writer.aclose()
    print(json.dumps({"error": error, "reasons": reasons}))

asyncio.run(main())
"""


def test_losses_on_a_real_full_disk_say_so(tmp_path: Path) -> None:
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False).returncode:
        pytest.skip("no mount namespace here (unshare -rm) for a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = 'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" -c "$3" "$1"'
    child = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(disk), sys.executable, ON_A_SMALL_DISK],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.splitlines()[-1])
    assert "database or disk is full" in result["error"]
    assert result["reasons"] == [
        "drop_newest: store could not commit: database or disk is full (SQLITE_FULL)"
    ]


def test_one_store_one_gateway(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = SampleStore(path)
    ids = first.define([FLOW])
    first.commit(rows(ids[FLOW.id].def_id, 0, 3), {FLOW.id: 3})
    with pytest.raises(StoreError, match=r"in use by another gateway \(pid \d+ on .*, opened as "):
        SampleStore(path)
    # Export reads while the gateway runs, without the lock and without writing.
    reader = SampleStore(path, read_only=True)
    assert [s.seq for s in reader.samples()] == [0, 1, 2]
    reader.close()
    first.close()
    SampleStore(path).close()  # the lock went with the first store


def test_unbindable_values_become_bad_samples_not_a_poisoned_batch(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.sqlite")
    def_id = store.define([FLOW])[FLOW.id].def_id
    batch = rows(def_id, 0, 4)
    batch[1] = (def_id, 1, 1001, 1002, Quality.GOOD, [1.0, 2.0], None)
    batch[2] = (def_id, 2, 1.5e9, 1003, Quality.UNCERTAIN, 2**70, "drift")
    stored = store.commit(batch, {FLOW.id: 4})
    assert stored[0] is batch[0] and stored[3] is batch[3]
    samples = list(store.samples())
    store.close()
    assert [s.seq for s in samples] == [0, 1, 2, 3]
    assert [s.quality for s in samples] == [Quality.GOOD, Quality.BAD, Quality.BAD, Quality.GOOD]
    assert samples[1].value is None
    assert samples[1].reason == "unstorable value of type list: [1.0, 2.0]"
    assert samples[2].reason == (
        "unstorable value of type int: 1180591620717411303424; invalid source timestamp"
        " 1500000000.0; drift"
    )
    assert samples[2].source_ts == samples[2].gateway_ts == 1003


@pytest.mark.asyncio
async def test_shutdown_with_a_full_disk_counts_what_is_lost(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "s.sqlite")
    ids = store.define([FLOW])
    flow_id = ids[FLOW.id].def_id
    writer = StoreWriter(
        store,
        StoreConfig(path=tmp_path / "s.sqlite", commit_interval_ms=10),
        names={flow_id: (FLOW.id, FLOW.unit)},
        executor=StoreWriter.new_executor(),
    )
    try:
        fill_up(store)
        writer.pending.extend(rows(flow_id, 0, 5000))
        stop = asyncio.Event()
        stop.set()
        await writer.run(stop)
        assert writer.stats.dropped == 5000
        assert writer.stats.committed == 0
        assert not writer.pending
    finally:
        await writer.aclose()


def test_repair_keeps_good_neighbours_and_handles_unencodable_text(tmp_path: Path) -> None:
    class Reading(float):
        pass

    class Mode(enum.IntEnum):
        AUTO = 3

    store = SampleStore(tmp_path / "s.sqlite")
    def_id = store.define([FLOW])[FLOW.id].def_id
    batch = [
        (def_id, 0, 1000, 1001, 2, Reading(1.5), None),
        (def_id, 1, 1000, 1001, 2, Mode.AUTO, None),
        (def_id, 2, 1000, 1001, 2, "bad byte \udcff", None),  # surrogateescape leftovers
        (def_id, 3, 1000, 1001, 0, None, "os error \udcfe"),
    ]
    store.commit(batch, {FLOW.id: 4})
    samples = list(store.samples())
    store.close()
    assert [(s.value, s.quality) for s in samples[:2]] == [(1.5, Quality.GOOD), (3, Quality.GOOD)]
    assert samples[2].quality is Quality.BAD and samples[2].value is None
    assert samples[2].reason == r"unstorable value of type str: 'bad byte \udcff'"
    assert samples[3].reason == r"'os error \udcfe'"


def test_sink_deliveries_are_saved_with_the_commit_and_reread_after_a_restart(
    tmp_path: Path,
) -> None:
    """The building block of store-and-forward: each sink's delivered ids, saved atomically
    with a commit (and with the losses it records), read back after a restart."""
    store = SampleStore(tmp_path / "s.sqlite")
    ids = store.define([FLOW, SPEED])
    flow, speed = ids[FLOW.id].def_id, ids[SPEED.id].def_id
    store.commit(rows(flow, 0, 3) + rows(speed, 0, 2), {FLOW.id: 3, SPEED.id: 2})
    assert store.last_id() == store.last_committed_id == 5
    assert store.delivery("mqtt") is None  # never seen: the runtime decides where it starts
    page = store.between(1, 4)
    assert [i for i, _ in page] == [1, 2, 3, 4]
    assert [(s.signal, s.seq) for _, s in page] == [
        (FLOW.id, 0), (FLOW.id, 1), (FLOW.id, 2), (SPEED.id, 0),
    ]  # fmt: skip
    gone = store.runs([(1, 2), (4, 4)], "retention")
    assert sorted((x.signal, x.first_seq, x.last_seq, x.count) for x in gone) == [
        (FLOW.id, 0, 1, 2), (SPEED.id, 0, 0, 1),
    ]  # fmt: skip
    store.commit(
        rows(flow, 3, 1),
        {FLOW.id: 4},
        losses=gone,
        deliveries=[Delivery("mqtt", 2, ((4, 5),)), Delivery("historian", 1)],
    )
    assert store.last_committed_id == 6
    store.commit([], {}, deliveries=[Delivery("historian", 0)])  # never moves back
    assert store.gateway_ts(6) is not None and store.gateway_ts(7) is None
    store.close()

    store = SampleStore(tmp_path / "s.sqlite")  # as after a restart
    try:
        assert store.delivery("mqtt") == Delivery("mqtt", 2, ((4, 5),))
        assert store.delivery("historian") == Delivery("historian", 1)
        assert len(store.losses()) == 2
        assert store.between(7, 10) == []
    finally:
        store.close()


def test_a_loss_that_continues_the_latest_record_of_its_signal_extends_it(
    tmp_path: Path,
) -> None:
    """A long outage recorded every commit interval is a few records, not thousands."""
    store = SampleStore(tmp_path / "s.sqlite")
    try:
        store.define([FLOW, SPEED])
        full, sink = "store full", "not delivered to sink 'up'"
        store.record_losses([Loss(FLOW.id, 0, 9, 10, full), Loss(SPEED.id, 0, 4, 5, full)])
        store.record_losses([Loss(FLOW.id, 10, 19, 10, full)])  # continues: extended
        store.record_losses([Loss(FLOW.id, 25, 29, 5, full)])  # a gap: a new record
        store.record_losses([Loss(FLOW.id, 30, 31, 2, sink)])  # another reason: a new record
        store.commit([], {}, losses=[Loss(SPEED.id, 5, 6, 2, full)])  # with a commit, too
        assert [(x.signal, x.first_seq, x.last_seq, x.count, x.reason) for x in store.losses()] == [
            (FLOW.id, 0, 19, 20, full),
            (SPEED.id, 0, 6, 7, full),
            (FLOW.id, 25, 29, 5, full),
            (FLOW.id, 30, 31, 2, sink),
        ]
    finally:
        store.close()
