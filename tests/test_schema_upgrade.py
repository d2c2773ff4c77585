"""A store written by any earlier schema version opens with today's code: upgraded in place to
the current version, its schema the same as a new store's, every row kept and still readable.

Each earlier version is a fixture under ``tests/data/store_schema_v<N>.sql``: the DDL of that
version (from git history) plus a few rows of every table it had. When the schema changes, the
version just left gets its fixture (the first test says so) and every test here covers the new
version without a change.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway import DeviceIdentity, Quality, Signal
from gateway.store import SampleStore
from gateway.store.sqlite import SCHEMA_VERSION, Delivery

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(DATA.glob("store_schema_v*.sql"), key=lambda p: int(p.stem.rpartition("v")[2]))


def version_of(fixture: Path) -> int:
    return int(fixture.stem.rpartition("v")[2])


def build(fixture: Path, path: Path) -> Path:
    db = sqlite3.connect(path)
    try:
        db.executescript(fixture.read_text(encoding="utf-8"))
    finally:
        db.close()
    return path


def raw(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, as SQLite holds it."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: sorted(db.execute(f"SELECT * FROM {t}"), key=repr) for t in tables}
    finally:
        db.close()


def shape(path: Path) -> dict[str, Any]:
    """The schema as SQLite sees it: objects, columns, indexes' columns, version, journal."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        objects = sorted(
            db.execute(
                "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            )
        )
        out: dict[str, Any] = {"objects": objects}
        for kind, name, _ in objects:
            pragma = "table_xinfo" if kind == "table" else "index_xinfo"
            out[name] = db.execute(f"PRAGMA {pragma}({name})").fetchall()
        out["user_version"] = db.execute("PRAGMA user_version").fetchone()[0]
        out["journal_mode"] = db.execute("PRAGMA journal_mode").fetchone()[0]
        return out
    finally:
        db.close()


def test_every_earlier_schema_version_has_a_fixture() -> None:
    # The current version may have one too (an early file of it, before a change that kept the
    # version number, e.g. the loss index added to version 4).
    versions = {version_of(f) for f in FIXTURES}
    assert set(range(1, SCHEMA_VERSION)) <= versions <= set(range(1, SCHEMA_VERSION + 1))


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: f"v{version_of(p)}")
def test_a_store_of_an_earlier_version_is_upgraded_with_its_data(
    tmp_path: Path, fixture: Path
) -> None:
    old = build(fixture, tmp_path / "old.sqlite")
    assert shape(old)["user_version"] == version_of(fixture) <= SCHEMA_VERSION
    before = raw(old)
    fresh = tmp_path / "fresh.sqlite"
    SampleStore(fresh).close()

    store = SampleStore(old)
    try:
        samples = list(store.samples())
        losses = store.losses()
        delivery = store.delivery("mqtt")
        next_seq = store.define(
            [Signal("r1/pump/flow", "L/h", description="feed flow", instrument="pump")]
        )
        assert store.last_id() == len(before["sample"])
    finally:
        store.close()

    # Upgraded in place: the current version, the same schema as a store created today.
    upgraded = shape(old)
    assert upgraded["user_version"] == SCHEMA_VERSION
    assert upgraded == shape(fresh)
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    # Every row of the old tables kept as it was.
    after = raw(old)
    assert {t: after[t] for t in before} == before

    # ... and read by today's code as what it was.
    flow = [s for s in samples if s.signal == "r1/pump/flow"]
    assert [(s.seq, s.value, s.unit, s.quality, s.reason) for s in flow] == [
        (0, 48.5, "mL/min", Quality.GOOD, None),
        (1, 48.25, "mL/min", Quality.UNCERTAIN, "drift"),
        (2, None, "mL/min", Quality.BAD, "No response received"),
        (3, 2.91, "L/h", Quality.GOOD, None),
    ]
    mode = [(s.seq, s.value) for s in samples if s.signal == "r1/pump/mode"]
    assert mode == [(0, 3), (1, "auto")]  # an integer stays an integer
    assert next_seq["r1/pump/flow"].next_seq == 4  # the counter carries on: no seq reused
    assert [(x.signal, x.first_seq, x.last_seq, x.count) for x in losses] == [
        ("r1/pump/mode", 2, 9, 8)
    ]
    spectra = [s for s in samples if s.signal == "r1/raman/spectrum"]
    if version_of(fixture) >= 2:
        assert [s.quality for s in spectra] == [Quality.GOOD, Quality.GOOD]
        assert [list(s.value.values) for s in spectra] == [[1, 2, 3, 4], [5, 6, 7, 8]]
        axis = spectra[0].value.axis
        assert (axis.unit, list(axis.values)) == ("cm-1", [400, 800, 1200, 1600])
        assert np.array_equal(spectra[1].value.axis.values, axis.values)
    else:
        assert spectra == []
    ranged = Delivery("mqtt", 3, ((5, 6),))
    expected = {1: None, 2: None, 3: Delivery("mqtt", 3), 4: ranged, 5: ranged}
    assert delivery == expected[version_of(fixture)]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: f"v{version_of(p)}")
def test_an_upgraded_store_takes_new_commits(tmp_path: Path, fixture: Path) -> None:
    old = build(fixture, tmp_path / "old.sqlite")
    count = len(raw(old)["sample"])
    flow = Signal("r1/pump/flow", "L/h", description="feed flow", instrument="pump")
    store = SampleStore(old)
    try:
        ids = store.define([flow])[flow.id]
        row = (ids.def_id, ids.next_seq, 1, 2, int(Quality.GOOD), 3.5, None)
        store.commit([row], {flow.id: ids.next_seq + 1})
        assert store.last_committed_id == count + 1
        # Device identities (schema 6) are kept from now on.
        store.record_identity("pump", DeviceIdentity("Acme", serial_number="S1"), "driver", 5)
    finally:
        store.close()
    reopened = SampleStore(old)
    try:
        assert reopened.define([flow])[flow.id].next_seq == ids.next_seq + 1
        assert [s.value for s in reopened.samples("r1/pump/flow")][-1] == 3.5
        assert [r.identity.serial_number for r in reopened.identities()] == ["S1"]
    finally:
        reopened.close()


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: f"v{version_of(p)}")
def test_an_old_store_read_only_has_no_identities(tmp_path: Path, fixture: Path) -> None:
    # patgw export of a store no gateway of this version has opened yet: no identity table.
    old = build(fixture, tmp_path / "old.sqlite")
    store = SampleStore(old, read_only=True)
    try:
        assert store.identities() == []
    finally:
        store.close()
    assert shape(old)["user_version"] == version_of(fixture)  # not upgraded by reading
