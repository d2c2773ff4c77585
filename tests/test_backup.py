"""``patgw backup``: an online, consistent, checked copy of a live store."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import demo_copy, patgw, write_config

from gateway import Quality, Signal
from gateway.store import SampleStore

FLOW = Signal("r1/pump/flow", "mL/min", instrument="pump")


def count(store: Path) -> int:
    with sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True) as db:
        try:
            return int(db.execute("SELECT count(*) FROM sample").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


def check_consistent(copy: Path) -> int:
    """Integrity, and samples and counters from one commit: every signal's seqs are 0..n-1
    (in commit order) and its saved counter is n. Returns the number of samples."""
    db = sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one whole file
        seqs: dict[str, list[int]] = {}
        for name, seq in db.execute(
            "SELECT d.name, s.seq FROM sample s JOIN signal_def d ON d.id = s.def_id ORDER BY s.id"
        ):
            seqs.setdefault(name, []).append(seq)
        counters = dict(db.execute("SELECT name, next_seq FROM signal"))
    finally:
        db.close()
    assert seqs, "the copy holds samples"
    for name, found in seqs.items():
        assert found == list(range(len(found))), name
        assert counters[name] == len(found), name
    return sum(map(len, seqs.values()))


def test_backup_of_a_running_gateway_is_consistent_and_the_gateway_goes_on(
    tmp_path: Path,
) -> None:
    config, _ = demo_copy(tmp_path)
    store = tmp_path / "data" / "demo.sqlite"
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", str(config), "--no-view"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        copies = []
        for n in range(2):
            deadline = time.monotonic() + 60
            wanted = 200 * (n + 1)
            while not store.exists() or count(store) < wanted:
                assert gateway.poll() is None, gateway.communicate()
                assert time.monotonic() < deadline, "the gateway did not commit samples in time"
                time.sleep(0.1)
            before = count(store)
            copy = tmp_path / f"copy{n}.sqlite"
            result = patgw("backup", str(config), str(copy), cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert f"copied to {copy}" in result.stderr
            copies.append(copy)
            assert check_consistent(copy) >= before
        # Still running and committing after the copies.
        grown = count(store)
        deadline = time.monotonic() + 30
        while count(store) <= grown:
            assert gateway.poll() is None, gateway.communicate()
            assert time.monotonic() < deadline, "the gateway stopped committing"
            time.sleep(0.1)
    finally:
        gateway.terminate()
        _, stderr = gateway.communicate(timeout=30)
    assert gateway.returncode == 0, stderr
    assert check_consistent(copies[1]) > check_consistent(copies[0])
    reopened = SampleStore(copies[1])  # a copy is a store the gateway can run on
    try:
        assert reopened.define([FLOW])[FLOW.id].next_seq == 0
    finally:
        reopened.close()


def config_for(store: Path, name: str = "gw.yaml") -> Path:
    return write_config(store.with_name(name), {"area": "r1", "store": {"path": str(store)}})


def small_store(tmp_path: Path) -> Path:
    store = SampleStore(tmp_path / "s.sqlite")
    def_id = store.define([FLOW])[FLOW.id].def_id
    store.commit([(def_id, 0, 1, 2, int(Quality.GOOD), 1.5, None)], {FLOW.id: 1})
    store.close()
    return config_for(tmp_path / "s.sqlite")


def test_backup_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    config = small_store(tmp_path)
    out = tmp_path / "out.sqlite"
    out.write_text("an older copy")
    refused = patgw("backup", str(config), str(out), cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"{out} exists; --force replaces it"
    assert out.read_text() == "an older copy"
    forced = patgw("backup", str(config), str(out), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert check_consistent(out) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == ["out.sqlite"]


def test_backup_errors_are_exit_2_naming_the_problem(tmp_path: Path) -> None:
    config = small_store(tmp_path)
    itself = patgw("backup", str(config), str(tmp_path / "s.sqlite"), "--force", cwd=tmp_path)
    assert itself.returncode == 2
    assert "is the store itself" in itself.stderr
    nowhere = patgw("backup", str(config), str(tmp_path / "no" / "c.sqlite"), cwd=tmp_path)
    assert nowhere.returncode == 2
    assert f"{tmp_path / 'no'} does not exist" in nowhere.stderr
    missing = config_for(tmp_path / "x.sqlite", "m.yaml")
    absent = patgw("backup", str(missing), str(tmp_path / "c.sqlite"), cwd=tmp_path)
    assert absent.returncode == 2
    assert absent.stderr.strip() == f"store.path: {tmp_path / 'x.sqlite'} does not exist"
    assert not (tmp_path / "x.sqlite").exists()  # a backup never creates a store


def test_a_backup_that_fails_is_exit_1_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "s.sqlite").write_bytes(b"not a database, " * 512)
    config = config_for(tmp_path / "s.sqlite")
    failed = patgw("backup", str(config), str(tmp_path / "c.sqlite"), cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"patgw: backup of {tmp_path / 's.sqlite'} failed: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw.yaml", "s.sqlite"]
