"""The audit trail as a library: chain, signatures, tampering named at the first bad record,
two processes on one chain, SIGKILL while appending, failures to write, key rotation, export."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, tamper_audit, wait_for

from gateway.audit import (
    Anchor,
    AuditError,
    AuditEvent,
    AuditTrail,
    VerifyReport,
    export,
    read_records,
    verify,
)
from gateway.audit.keys import SigningKey
from gateway.errors import GatewayError


class Files:
    """The three files of a trail in one folder."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "audit.sqlite"
        self.key = folder / "keys" / "gateway-ed25519.key"
        self.anchors = folder / "audit.anchors.jsonl"

    def trail(self, **options: Any) -> AuditTrail:
        return AuditTrail(
            self.path,
            gateway_id="site1/reactor1",
            key_path=self.key,
            anchor_path=self.anchors,
            **options,
        )

    def verify(self, *, key: bool = True) -> VerifyReport:
        return verify(self.path, anchor_files=[self.anchors], key_path=self.key if key else None)


def write_event(i: int) -> AuditEvent:
    return AuditEvent(
        "write.requested",
        user="operator",
        target="reactor1/feed_pump/speed_setpoint",
        old=float(i),
        new=float(i + 1),
        reason=f"step {i}",
        outcome="ok",
        details={"rule": None, "i": i},
    )


def filled(tmp_path: Path, records: int = 10, *, anchor_every: int = 0) -> Files:
    """A trail of ``records`` records (audit.created plus writes), its head anchored."""
    files = Files(tmp_path)
    with files.trail() as trail:
        for i in range(records - 1):
            trail.append(write_event(i))
            if anchor_every and (i + 2) % anchor_every == 0:
                trail.sign_head()
        trail.sign_head()
    return files


def independent_hash(row: dict[str, Any]) -> str:
    """The documented hash, computed here without the gateway's code."""
    fields = {k: row[k] for k in row if k not in ("hash", "time")}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the chain ---------------------------------------------------------------------------------


def test_records_are_numbered_chained_and_hashed_as_documented(tmp_path: Path) -> None:
    files = Files(tmp_path)
    before = time.time_ns()
    with files.trail() as trail:
        appended = [trail.append(write_event(i)) for i in range(5)]
        key_id = trail.key_id
    after = time.time_ns()
    assert [r.seq for r in appended] == [2, 3, 4, 5, 6]
    out = io.StringIO()
    assert export(files.path, out) == 6
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    first = rows[0]
    assert first["action"] == "audit.created" and first["user"] == "system"
    assert first["details"]["key_id"] == key_id
    assert first["prev_hash"] == "0" * 64
    for prev, row in itertools.pairwise(rows):
        assert row["prev_hash"] == prev["hash"]
    for row in rows:
        assert row["hash"] == independent_hash(row)
        assert row["gateway"] == "site1/reactor1"
        assert before <= row["ts_ns"] <= after
    assert rows[3] | {"ts_ns": 0, "time": "", "hash": "", "prev_hash": ""} == {
        "seq": 4,
        "ts_ns": 0,
        "time": "",
        "gateway": "site1/reactor1",
        "action": "write.requested",
        "user": "operator",
        "target": "reactor1/feed_pump/speed_setpoint",
        "old": 2.0,
        "new": 3.0,
        "reason": "step 2",
        "outcome": "ok",
        "details": {"rule": None, "i": 2},
        "prev_hash": "",
        "hash": "",
    }
    assert appended[2].hash == rows[3]["hash"]


def test_unusual_values_hash_as_documented(tmp_path: Path) -> None:
    files = Files(tmp_path)
    events = [
        AuditEvent("x.y", reason='Grüße, "quoted"\n\u2028', target="\u00e9", user="ü"),
        AuditEvent("x.y", old=[1, 2.5, None, True], new={"b": {"z": 1, "a": [-0.0, 1e300]}}),
        AuditEvent("x.y", details={"ß": "\x00", "a": {"nested": {"deep": "\ud7ff"}}}),
    ]
    with files.trail() as trail:
        for event in events:
            trail.append(event)
    out = io.StringIO()
    export(files.path, out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [row["hash"] for row in rows] == [independent_hash(row) for row in rows]
    assert [r.event for r in read_records(files.path)][1:] == events
    assert files.verify().ok


def test_a_sound_trail_verifies_with_its_anchors(tmp_path: Path) -> None:
    files = filled(tmp_path, 30, anchor_every=7)
    report = files.verify()
    assert report.ok, report.problem
    assert (report.records, report.head_seq, report.first_bad_seq) == (30, 30, None)
    assert report.anchors == 5  # heads 7, 14, 21, 28, 30: the table and the file agree
    assert len(files.anchors.read_text().splitlines()) == 5


def test_the_key_file_is_private_and_its_public_key_beside_it(tmp_path: Path) -> None:
    with Files(tmp_path).trail() as trail:
        key_id = trail.key_id
    files = Files(tmp_path)
    assert files.key.stat().st_mode & 0o777 == 0o600
    public = files.key.with_name(files.key.name + ".pub").read_text()
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    assert SigningKey.load(files.key).id == key_id


def test_sign_head_signs_only_a_head_that_moved(tmp_path: Path) -> None:
    files = Files(tmp_path)
    with files.trail() as trail:
        first = trail.sign_head()
        assert first is not None and first.seq == 1
        assert trail.sign_head() is None
        trail.append(write_event(0))
        second = trail.sign_head()
    assert second is not None and second.seq == 2
    # What is published upstream: short JSON that reads back into the same anchor.
    published = json.loads(json.dumps(second.to_json()))
    assert set(published) == {"gateway", "seq", "hash", "ts_ns", "key_id", "signature"}
    assert Anchor.from_json(published) == second


@pytest.mark.asyncio
async def test_asign_head_signs_in_a_worker_thread(tmp_path: Path) -> None:
    files = Files(tmp_path)
    trail = files.trail().open()
    try:
        await trail.record(write_event(0))
        anchor = await trail.asign_head()
        assert anchor is not None and anchor.seq == 2
        assert await trail.asign_head() is None
    finally:
        await trail.aclose()
    assert files.verify().anchors == 1


def test_each_distinct_configuration_is_kept_once(tmp_path: Path) -> None:
    files = Files(tmp_path)
    with files.trail() as trail:
        old = trail.keep_config(b"area: reactor1\n")
        again = trail.keep_config(b"area: reactor1\n")
        new = trail.keep_config(b"area: reactor2\n")
        assert old == again == hashlib.sha256(b"area: reactor1\n").hexdigest()
        assert new != old
        assert trail.config_content(old) == b"area: reactor1\n"
        assert trail.config_content(new) == b"area: reactor2\n"
        assert trail.config_content("0" * 64) is None
    db = sqlite3.connect(files.path)
    assert db.execute("SELECT count(*) FROM audit_configs").fetchone()[0] == 2
    db.close()


def test_the_file_refuses_updates_and_deletes(tmp_path: Path) -> None:
    files = filled(tmp_path, 3)
    db = sqlite3.connect(files.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit_records SET reason = 'x' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit_records WHERE seq = 3")
    db.close()


# -- tampering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("ts_ns", "ts_ns + 1"),
        ("gateway", "'elsewhere'"),
        ("action", "'write.refused'"),
        ('"user"', "'admin'"),
        ("target", "'reactor1/other'"),
        ("old", "'1.5'"),
        ("new", "'99.0'"),
        ("reason", "'nothing to see'"),
        ("outcome", "'refused'"),
        ("details", """'{"i":5,"rule":"max"}'"""),
        ("old", "'not json'"),
    ],
)
def test_an_edited_column_is_named_at_its_record(tmp_path: Path, column: str, value: str) -> None:
    files = filled(tmp_path, 10)
    tamper_audit(files.path, f"UPDATE audit_records SET {column} = {value} WHERE seq = 6")
    report = files.verify()
    assert not report.ok
    assert report.first_bad_seq == 6
    assert report.problem is not None and report.problem.startswith("record 6 was edited")


def test_an_edited_and_rehashed_record_is_named(tmp_path: Path) -> None:
    files = filled(tmp_path, 10)
    # Someone who knows the hash recipe rewrites record 4 and its hash, not its successor.
    row = next(r for r in read_records(files.path) if r.seq == 4)
    fields = row.fields() | {"reason": "rewritten"}
    fields.pop("hash")
    new_hash = independent_hash(fields)
    tamper_audit(
        files.path,
        f"UPDATE audit_records SET reason = 'rewritten', hash = '{new_hash}' WHERE seq = 4",
    )
    report = files.verify()
    assert report.first_bad_seq == 4
    assert "record 5 does not follow record 4" in str(report.problem)


@pytest.mark.parametrize(
    ("statements", "first_bad", "problem"),
    [
        (
            ["DELETE FROM audit_records WHERE seq = 5"],
            5,
            "record 5 is missing (deleted): the chain goes from record 4 to record 6",
        ),
        (
            [
                "DELETE FROM audit_records WHERE seq = 5",
                "UPDATE audit_records SET seq = seq - 1 WHERE seq > 5",
            ],
            5,
            "record 5 was edited: its content does not match its hash, and it does not follow"
            " record 4",
        ),
        (
            [
                "UPDATE audit_records SET seq = -1 WHERE seq = 7",
                "UPDATE audit_records SET seq = 7 WHERE seq = 8",
                "UPDATE audit_records SET seq = 8 WHERE seq = -1",
            ],
            7,
            "record 7 is out of order: it follows record 8 (records were swapped or reordered)",
        ),
    ],
    ids=["deleted", "deleted-and-renumbered", "swapped"],
)
def test_a_deleted_or_reordered_record_is_named(
    tmp_path: Path, statements: list[str], first_bad: int, problem: str
) -> None:
    files = filled(tmp_path, 10)
    tamper_audit(files.path, *statements)
    report = files.verify()
    assert (report.first_bad_seq, report.problem) == (first_bad, problem)


def test_a_cut_tail_is_named_from_the_anchor_file(tmp_path: Path) -> None:
    files = filled(tmp_path, 20, anchor_every=5)
    # Cut the tail and the anchor table with it: the anchor file still names record 20.
    tamper_audit(
        files.path,
        "DELETE FROM audit_records WHERE seq > 12",
        "DELETE FROM audit_anchors WHERE seq > 12",
    )
    report = files.verify()
    assert report.first_bad_seq == 13
    assert "the chain ends at record 12" in str(report.problem)
    assert "the tail after record 12 was cut" in str(report.problem)


def test_a_cut_tail_is_named_from_the_anchor_table(tmp_path: Path) -> None:
    files = filled(tmp_path, 20, anchor_every=5)
    files.anchors.unlink()
    tamper_audit(files.path, "DELETE FROM audit_records WHERE seq > 16")
    report = verify(files.path)
    assert report.first_bad_seq == 17
    assert "anchor table" in str(report.problem)


@pytest.mark.parametrize("same_key", [True, False])
def test_a_rewritten_chain_is_caught_by_an_earlier_anchor(tmp_path: Path, same_key: bool) -> None:
    files = filled(tmp_path, 12, anchor_every=4)
    # A whole new chain, valid in itself, in place of the old file: made with the gateway's key
    # (someone holding it), or with a key of one's own.
    files.path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{files.path}{suffix}").unlink(missing_ok=True)
    other = Files(tmp_path / "other")
    with AuditTrail(
        files.path,
        gateway_id="site1/reactor1",
        key_path=files.key if same_key else other.key,
        anchor_path=other.anchors,
    ) as trail:
        for i in range(11):
            trail.append(write_event(i))
    report = files.verify(key=False)
    assert not report.ok
    if same_key:
        assert report.first_bad_seq == 1
        assert "record 4 does not match the anchor of record 4" in str(report.problem)
        assert "rewritten between records 1 and 4" in str(report.problem)
    else:
        assert report.first_bad_seq == 4
        assert "which the chain never introduced" in str(report.problem)
        assert "or the chain was rewritten at or before record 4" in str(report.problem)


def test_a_forged_anchor_is_named(tmp_path: Path) -> None:
    files = filled(tmp_path, 10, anchor_every=5)
    lines = files.anchors.read_text().splitlines()
    forged = json.loads(lines[0]) | {"seq": 12, "hash": "ab" * 32}
    files.anchors.write_text("\n".join([*lines, json.dumps(forged)]) + "\n")
    report = files.verify()
    assert report.first_bad_seq == 12
    assert "anchor of record 12" in str(report.problem)
    assert "has a bad signature: it was forged" in str(report.problem)


def test_a_replaced_key_is_named(tmp_path: Path) -> None:
    files = filled(tmp_path, 10, anchor_every=5)
    intruder = SigningKey.generate()
    intruder.save(files.key)
    report = files.verify()
    assert "the key was replaced" in str(report.problem)
    # Anchors signed with the new key name the record they claim.
    db = sqlite3.connect(files.path)
    seq, digest = db.execute("SELECT seq, hash FROM audit_records WHERE seq = 8").fetchone()
    db.close()
    anchor = Anchor.sign(intruder, "site1/reactor1", seq, digest, time.time_ns())
    with files.anchors.open("a") as out:
        out.write(json.dumps(anchor.to_json()) + "\n")
    report = files.verify(key=False)
    assert report.first_bad_seq == 8
    assert f"signed by key {intruder.id}, which the chain never introduced" in str(report.problem)
    # The gateway refuses to go on with a key the chain does not name.
    with pytest.raises(AuditError, match="the key file was replaced"):
        files.trail().open()


def test_a_missing_key_is_not_silently_replaced(tmp_path: Path) -> None:
    files = filled(tmp_path, 3)
    files.key.unlink()
    with pytest.raises(AuditError, match=r"is missing; the trail .* is signed with key"):
        files.trail().open()
    assert not files.key.exists()


def test_a_damaged_anchor_line_fails_verification(tmp_path: Path) -> None:
    files = filled(tmp_path, 5)
    with files.anchors.open("a") as out:
        out.write('{"seq": 9, "hash": \n')
    report = files.verify()
    assert not report.ok
    assert "line 2" in str(report.problem) and "an anchor was damaged" in str(report.problem)


# -- key rotation ------------------------------------------------------------------------------


def test_rotated_keys_verify_and_an_old_key_cannot_anchor_new_records(tmp_path: Path) -> None:
    files = filled(tmp_path, 6)
    old_key = SigningKey.load(files.key)
    with files.trail() as trail:
        rotation = trail.rotate_key()
        trail.append(write_event(100))
        trail.sign_head()
        new_id = trail.key_id
    assert rotation.event.action == "audit.key_rotated"
    assert rotation.event.details is not None
    assert rotation.event.details["old_key_id"] == old_key.id
    assert rotation.event.details["key_id"] == new_id != old_key.id
    assert SigningKey.load(files.key).id == new_id
    assert not files.key.with_name(files.key.name + ".new").exists()
    report = files.verify()
    assert report.ok, report.problem
    assert report.key_ids == (old_key.id, new_id)
    # Someone who kept the old key signs the new head: refused, the key was retired at 7.
    db = sqlite3.connect(files.path)
    seq, digest = db.execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC").fetchone()
    db.close()
    stale = Anchor.sign(old_key, "site1/reactor1", seq, digest, time.time_ns())
    with files.anchors.open("a") as out:
        out.write(json.dumps(stale.to_json()) + "\n")
    report = files.verify()
    assert report.first_bad_seq == seq
    assert f"valid only for records 1 to {rotation.seq}" in str(report.problem)


def test_another_process_rotating_the_key_is_followed(tmp_path: Path) -> None:
    files = filled(tmp_path, 3)
    with files.trail() as running, files.trail() as cli:
        cli.rotate_key()
        running.append(write_event(1))
        anchor = running.sign_head()
        assert anchor is not None and anchor.key_id == cli.key_id == running.key_id
    assert files.verify().ok


def test_a_rotation_not_yet_installed_is_followed_with_the_staged_key(tmp_path: Path) -> None:
    files = filled(tmp_path, 3)
    old_pem = files.key.read_bytes()
    staged = files.key.with_name(files.key.name + ".new")
    with files.trail() as running:
        with files.trail() as cli:
            cli.rotate_key()
        # The moment between the rotation's commit and the new key file's installation.
        shutil.copy(files.key, staged)
        files.key.write_bytes(old_pem)
        running.append(write_event(1))
        anchor = running.sign_head()
        assert anchor is not None and anchor.key_id == SigningKey.load(staged).id
    assert files.verify(key=False).ok


def test_an_interrupted_rotation_is_finished_or_forgotten_on_open(tmp_path: Path) -> None:
    files = filled(tmp_path, 3)
    staged = files.key.with_name(files.key.name + ".new")
    SigningKey.generate().save(staged)  # a crash before the rotation record was committed
    with files.trail() as trail:
        assert trail.key_id == SigningKey.load(files.key).id
    assert not staged.exists()
    assert files.verify().ok


# -- failures to write -------------------------------------------------------------------------


def test_an_uncreatable_file_raises_audit_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    trail = AuditTrail(
        tmp_path / "file" / "audit.sqlite",
        gateway_id="g",
        key_path=tmp_path / "key",
        anchor_path=tmp_path / "anchors.jsonl",
    )
    with pytest.raises(AuditError, match="cannot be created") as caught:
        trail.open()
    assert isinstance(caught.value, GatewayError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_a_read_only_file_raises_audit_error(tmp_path: Path) -> None:
    files = filled(tmp_path, 3)
    files.path.chmod(0o444)
    with pytest.raises(AuditError):
        files.trail().open().append(write_event(1))


def test_a_file_that_cannot_be_written_raises_audit_error_even_for_root(tmp_path: Path) -> None:
    """Root ignores file modes: the write-ahead log's path taken by a folder makes every
    write fail for any user, as a broken or read-only medium would."""
    files = filled(tmp_path, 3)
    for suffix in ("-wal", "-shm"):
        Path(f"{files.path}{suffix}").unlink(missing_ok=True)
    Path(f"{files.path}-wal").mkdir()
    with pytest.raises(AuditError):
        files.trail().open().append(write_event(1))


def test_a_locked_file_raises_audit_error_and_records_nothing(tmp_path: Path) -> None:
    files = filled(tmp_path, 3)
    with files.trail(busy_timeout_s=0.1) as trail:
        blocker = sqlite3.connect(files.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(AuditError, match=r"cannot append to audit trail .*locked"):
                trail.append(write_event(1))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert trail.append(write_event(2)).seq == 4  # nothing half-written before it


def test_an_unwritable_anchor_file_fails_and_keeps_no_anchor(tmp_path: Path) -> None:
    files = Files(tmp_path)
    files.anchors.mkdir()  # a folder where the file should be
    with files.trail() as trail, pytest.raises(AuditError, match=r"anchor file .* cannot be"):
        trail.sign_head()
    db = sqlite3.connect(files.path)
    assert db.execute("SELECT count(*) FROM audit_anchors").fetchone()[0] == 0
    db.close()


def test_an_event_that_is_not_json_is_refused_whole(tmp_path: Path) -> None:
    files = Files(tmp_path)
    with files.trail() as trail:
        with pytest.raises(AuditError, match="new is not JSON-able"):
            trail.append_many([write_event(1), AuditEvent("x.y", new=float("nan"))])
        with pytest.raises(AuditError, match="details is not JSON-able"):
            trail.append(AuditEvent("x.y", details={"when": object()}))
    assert [r.seq for r in read_records(files.path)] == [1]


# -- group commit ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_records_are_all_committed_in_order(tmp_path: Path) -> None:
    files = Files(tmp_path)
    trail = files.trail().open()
    try:
        records = await asyncio.gather(*(trail.record(write_event(i)) for i in range(300)))
    finally:
        await trail.aclose()
    assert [r.seq for r in records] == list(range(2, 302))
    stored = list(read_records(files.path))
    assert [r.event for r in stored[1:]] == [write_event(i) for i in range(300)]
    assert files.verify().ok


@pytest.mark.asyncio
async def test_record_does_not_block_the_event_loop(tmp_path: Path) -> None:
    files = filled(tmp_path, 2)
    trail = files.trail(busy_timeout_s=60).open()
    blocker = sqlite3.connect(files.path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # the commit must wait for this lock
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(ticker(), name="test.ticker")
    pending = [asyncio.create_task(trail.record(write_event(i)), name=f"r{i}") for i in range(5)]
    try:
        # The loop goes on while the commit waits for the lock in a worker thread.
        await wait_for(lambda: ticks > 50, within=20, what="the loop to tick")
        assert not any(task.done() for task in pending)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
    records = await asyncio.gather(*pending)
    await trail.aclose()
    assert sorted(r.seq for r in records) == [3, 4, 5, 6, 7]
    assert files.verify().ok


@pytest.mark.asyncio
async def test_record_raises_audit_error_when_the_file_cannot_be_written(tmp_path: Path) -> None:
    files = filled(tmp_path, 2)
    trail = files.trail(busy_timeout_s=0.05).open()
    blocker = sqlite3.connect(files.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        results = await asyncio.gather(
            *(trail.record(write_event(i)) for i in range(3)), return_exceptions=True
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        await trail.aclose()
    assert all(isinstance(r, AuditError) for r in results), results
    assert [r.seq for r in read_records(files.path)] == [1, 2]


# -- processes ---------------------------------------------------------------------------------

_APPENDER = """
import sys
from pathlib import Path
from gateway.audit import AuditEvent, AuditTrail
from gateway.logs import configure_logging
configure_logging("console", "warning")
folder, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
trail = AuditTrail(folder / "audit.sqlite", gateway_id="site1/reactor1",
                   key_path=folder / "keys" / "gateway-ed25519.key",
                   anchor_path=folder / "audit.anchors.jsonl", busy_timeout_s=30).open()
print("open", flush=True)
i = 0
while count < 0 or i < count:
    trail.append(AuditEvent("test.append", user=name, details={"i": i}))
    if i % 25 == 0:
        trail.sign_head()
    i += 1
    if i % 10 == 0:
        print(i, flush=True)
trail.close()
"""


def appender(folder: Path, name: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _APPENDER, str(folder), name, str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_two_processes_appending_keep_one_valid_chain(tmp_path: Path) -> None:
    # Both start on a trail that does not exist yet: one creates it, the other joins.
    procs = [appender(tmp_path, name, 300) for name in ("gateway", "cli")]
    for proc in procs:
        proc.communicate(timeout=120)
        assert proc.returncode == 0
    files = Files(tmp_path)
    report = files.verify()
    assert report.ok, report.problem
    assert report.records == 601
    for name in ("gateway", "cli"):
        mine = [r.event.details for r in read_records(files.path, user=name)]
        assert mine == [{"i": i} for i in range(300)]


def test_sigkill_while_appending_leaves_a_verifiable_chain(tmp_path: Path) -> None:
    files = Files(tmp_path)
    total = 0
    for _ in range(3):
        proc = appender(tmp_path, "victim", -1)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "open"
        for _ in range(5):  # it has appended and signed, and is in the middle of more
            assert proc.stdout.readline().strip().isdigit()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        report = files.verify()
        assert report.ok, report.problem
        assert report.records >= total + 50
        total = report.records
    with files.trail() as trail:  # and the chain goes on
        assert trail.append(write_event(0)).seq == total + 1
        trail.sign_head()
    assert files.verify().ok


def test_verify_while_another_process_appends_and_signs(tmp_path: Path) -> None:
    files = Files(tmp_path)
    proc = appender(tmp_path, "busy", -1)  # signs every 25 records
    try:
        assert proc.stdout is not None
        while proc.stdout.readline().strip() != "open":
            pass
        heads: list[int] = []
        deadline = time.monotonic() + 60
        # At least 20 verifications, over at least 50 records appended (and 2 anchors) meanwhile.
        while len(heads) < 20 or heads[-1] < heads[0] + 50:
            assert time.monotonic() < deadline, f"the appender barely moved: {heads}"
            report = files.verify()
            assert report.ok, report.problem
            heads.append(report.head_seq)
    finally:
        proc.kill()
        proc.communicate(timeout=30)


# -- export ------------------------------------------------------------------------------------


def test_export_filters_by_time_user_and_action(tmp_path: Path) -> None:
    files = Files(tmp_path)
    with files.trail() as trail:
        trail.append(AuditEvent("login.failed", user="viewer", outcome="refused"))
        middle = trail.append(AuditEvent("write.requested", user="operator", new=5))
        trail.append(AuditEvent("write.executed", user="operator", old=4, new=5))
        trail.append(AuditEvent("login.ok", user="operator", reason='shift, "night"\nstart'))

    def seqs(**options: Any) -> list[int]:
        out = io.StringIO()
        export(files.path, out, **options)
        return [json.loads(line)["seq"] for line in out.getvalue().splitlines()]

    assert seqs() == [1, 2, 3, 4, 5]
    assert seqs(user="operator") == [3, 4, 5]
    assert seqs(action="write.*") == [3, 4]
    assert seqs(action="login.*", user="operator") == [5]
    assert seqs(since_ns=middle.ts_ns) == [3, 4, 5]
    assert seqs(user="nobody") == []
    out = io.StringIO()
    assert export(files.path, out, fmt="csv", user="operator") == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["action"] for r in rows] == ["write.requested", "write.executed", "login.ok"]
    assert (rows[1]["old"], rows[1]["new"], rows[1]["details"]) == ("4", "5", "null")
    assert rows[2]["reason"] == 'shift, "night"\nstart'
    assert rows[0]["time"].endswith("Z") and int(rows[0]["ts_ns"]) == middle.ts_ns
