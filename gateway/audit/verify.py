"""Verification: walk the chain, check every anchor's signature against the keys the chain
introduced, and name the first record that is wrong, in one sentence."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..timefmt import format_ns
from ._db import KEY_ACTIONS, RECORD_COLUMNS, connect, record_from_row
from .anchors import Anchor, read_anchor_file
from .keys import SigningKey, public_key_from_hex, verify_signature
from .keys import key_id as key_id_of
from .records import GENESIS_HASH, AuditError, AuditRecord, record_hash

__all__ = ["VerifyReport", "verify"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :func:`verify` found. ``first_bad_seq`` is the first record that cannot be trusted
    (None when the trail is sound, or when the problem is not a record's, e.g. a replaced key
    file); ``problem`` says what is wrong in one sentence."""

    path: Path
    records: int
    head_seq: int
    anchors: int
    key_ids: tuple[str, ...]
    problem: str | None = None
    first_bad_seq: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        """One line for people."""
        if self.problem is not None:
            return f"{self.path}: NOT VERIFIED: {self.problem}"
        return (
            f"{self.path}: verified {self.records} records (head {self.head_seq}),"
            f" {self.anchors} anchor signatures, keys {', '.join(self.key_ids) or '-'}"
        )


@dataclass(slots=True)
class _Key:
    id: str
    public_hex: str
    first_seq: int
    last_seq: int | None = None  # the rotation record it signed last; None: still in force


@dataclass(frozen=True, slots=True)
class _Problem:
    seq: int | None
    text: str


def verify(
    path: Path, *, anchor_files: Sequence[Path] = (), key_path: Path | None = None
) -> VerifyReport:
    """Verify the audit file at ``path`` with the anchors of its own table and of
    ``anchor_files`` (the configured anchor file, copies fetched from upstream...); with
    ``key_path``, also check that the key file is the key the chain names last.

    Raises :class:`AuditError` only when the file cannot be read at all."""
    # The files first, the database snapshot after: every anchor a file holds then names a
    # record committed before it was written, so one the snapshot sees (a gateway appending
    # and signing meanwhile cannot make a sound trail look cut).
    anchors: list[tuple[str, Anchor]] = []
    problems: list[_Problem] = []
    for anchor_file in anchor_files:
        found, unreadable = read_anchor_file(anchor_file)
        anchors += [(f"{anchor_file} line {line}", anchor) for line, anchor in found]
        problems += [_Problem(None, f"{text}: an anchor was damaged") for text in unreadable]
    db = connect(path, read_only=True)
    try:
        db.execute("BEGIN")
        rows = db.execute(f"SELECT {RECORD_COLUMNS} FROM audit_records ORDER BY seq")
        count, head, keys, walk_problem = _walk(rows, db)
        table = db.execute(
            "SELECT id, gateway, seq, hash, ts_ns, key_id, signature FROM audit_anchors"
        ).fetchall()
        anchors += [
            (f"anchor table row {r[0]}", Anchor(r[1], r[2], r[3], r[4], r[5], bytes(r[6])))
            for r in table
        ]
        checked, anchor_problem = _check_anchors(db, anchors, keys, head, walk_problem)
        config_problem = _check_configs(db)
        if walk_problem is not None:  # the walk stopped there: count what the file holds
            count, last = db.execute("SELECT count(*), max(seq) FROM audit_records").fetchone()
            head = int(last or 0)
        db.execute("ROLLBACK")
    except Exception as exc:
        if isinstance(exc, AuditError):
            raise
        raise AuditError(f"audit trail {path} cannot be read: {exc}") from exc
    finally:
        db.close()
    firsts = [p for p in (walk_problem, anchor_problem, config_problem) if p is not None]
    if firsts:
        problems.insert(0, min(firsts, key=lambda p: p.seq if p.seq is not None else head + 1))
    if key_path is not None and keys:
        problems += _check_key_file(key_path, keys[-1])
    first = problems[0] if problems else None
    return VerifyReport(
        path=path,
        records=count,
        head_seq=head,
        anchors=checked,
        key_ids=tuple(k.id for k in keys),
        problem=first.text if first else None,
        first_bad_seq=first.seq if first else None,
        notes=tuple(p.text for p in problems[1:]),
    )


def _walk(
    rows: Iterable[tuple[Any, ...]], db: sqlite3.Connection
) -> tuple[int, int, list[_Key], _Problem | None]:
    """(records, head seq, keys in order, first problem) of the chain."""
    expected, prev, count = 1, GENESIS_HASH, 0
    keys: list[_Key] = []
    for row in rows:
        count += 1
        seq = row[0]
        try:
            record = record_from_row(tuple(row))
            computed = record_hash(
                record.seq, record.ts_ns, record.gateway, record.event, record.prev_hash
            )
        except (ValueError, TypeError) as exc:
            return count, expected - 1, keys, _Problem(seq, f"record {seq} was edited: {exc}")
        if seq != expected:
            return (
                count,
                expected - 1,
                keys,
                _Problem(
                    expected,
                    f"record {expected} is missing (deleted): the chain goes from record"
                    f" {expected - 1} to record {seq}",
                ),
            )
        if record.prev_hash != prev:
            return count, seq - 1, keys, _link_problem(db, record, computed)
        if computed != record.hash:
            return (
                count,
                seq - 1,
                keys,
                _Problem(seq, f"record {seq} was edited: its content does not match its hash"),
            )
        problem = _follow_keys(record, keys)
        if problem is not None:
            return count, seq - 1, keys, problem
        expected, prev = seq + 1, record.hash
    if count and not keys:
        return count, expected - 1, keys, _Problem(1, "record 1 is not the trail's first record")
    return count, expected - 1, keys, None


def _check_configs(db: sqlite3.Connection) -> _Problem | None:
    """The configurations kept for ``gateway.started`` records: each one's content must hash
    to its name, and every configuration a start names must be kept. The first start whose
    configuration is missing or replaced is the first bad record (its record is sound, but what
    it vouches for is gone)."""
    kept = {
        str(sha): hashlib.sha256(bytes(content)).hexdigest()
        for sha, content in db.execute("SELECT sha256, content FROM audit_configs")
    }
    starts = db.execute(
        "SELECT seq, details FROM audit_records WHERE action = 'gateway.started' ORDER BY seq"
    )
    for seq, details in starts:
        try:
            named = json.loads(details).get("config_sha256")
        except (ValueError, AttributeError):
            continue  # an edited record: the chain walk names it
        if not named:
            continue
        if named not in kept:
            return _Problem(
                seq,
                f"record {seq} names configuration {named[:16]}… which the trail no longer"
                " keeps (deleted)",
            )
        if kept[named] != named:
            return _Problem(
                seq,
                f"record {seq} names configuration {named[:16]}…, whose kept content was"
                " replaced (it hashes to another value)",
            )
    return None


def _link_problem(db: sqlite3.Connection, record: AuditRecord, computed: str) -> _Problem:
    seq = record.seq
    later = db.execute(
        "SELECT seq FROM audit_records WHERE hash = ? AND seq > ? ORDER BY seq LIMIT 1",
        (record.prev_hash, seq),
    ).fetchone()
    if later is not None:
        return _Problem(
            seq,
            f"record {seq} is out of order: it follows record {later[0]} (records were"
            " swapped or reordered)",
        )
    if computed != record.hash:
        return _Problem(
            seq,
            f"record {seq} was edited: its content does not match its hash, and it does not"
            f" follow record {seq - 1}",
        )
    return _Problem(
        seq - 1,
        f"record {seq} does not follow record {seq - 1} (its prev_hash is not that record's"
        f" hash): record {seq - 1} was rewritten and re-hashed, or records were deleted or"
        " inserted between them",
    )


def _follow_keys(record: AuditRecord, keys: list[_Key]) -> _Problem | None:
    """Track the signing keys the chain introduces; a problem if a key record is wrong."""
    action = record.event.action
    if record.seq == 1 and action != KEY_ACTIONS[0]:
        return _Problem(1, f"record 1 is {action!r}, not the trail's first record (audit.created)")
    if action not in KEY_ACTIONS:
        return None
    details = record.event.details or {}
    key_id, public = details.get("key_id"), details.get("public_key")
    try:
        valid = isinstance(public, str) and key_id_of(public_key_from_hex(public)) == key_id
    except ValueError:
        valid = False
    if not valid or not isinstance(key_id, str) or not isinstance(public, str):
        return _Problem(record.seq, f"record {record.seq} names a key that is not valid")
    if action == KEY_ACTIONS[0]:
        if keys:
            return _Problem(record.seq, f"record {record.seq} starts a second trail")
    else:
        if not keys or details.get("old_key_id") != keys[-1].id:
            return _Problem(
                record.seq, f"record {record.seq} rotates away from a key that is not in force"
            )
        keys[-1].last_seq = record.seq
    keys.append(_Key(key_id, public, record.seq))
    return None


def _check_anchors(
    db: sqlite3.Connection,
    anchors: list[tuple[str, Anchor]],
    keys: list[_Key],
    head: int,
    walk_problem: _Problem | None,
) -> tuple[int, _Problem | None]:
    """(signatures checked, first problem) of the anchors, in the order of their records."""
    by_id = {k.id: k for k in keys}
    limit = walk_problem.seq if walk_problem is not None and walk_problem.seq else None
    checked, good_through = 0, 0
    seen: set[tuple[str, int, str, bytes]] = set()
    for where, anchor in sorted(anchors, key=lambda a: a[1].seq):
        if limit is not None and anchor.seq >= limit:
            break  # the walk already names an earlier record
        ident = (anchor.key_id, anchor.seq, anchor.hash, anchor.signature)
        if ident in seen:
            continue
        seen.add(ident)
        signed = format_ns(anchor.ts_ns)
        what = f"the anchor of record {anchor.seq} signed at {signed} ({where})"
        key = by_id.get(anchor.key_id)
        if key is None:
            return checked, _Problem(
                anchor.seq,
                f"{what} is signed by key {anchor.key_id}, which the chain never introduced:"
                " the anchor is forged (a replaced key), or the chain was rewritten at or before"
                f" record {anchor.seq}",
            )
        if not verify_signature(
            public_key_from_hex(key.public_hex), anchor.signature, anchor.signed_bytes()
        ):
            return checked, _Problem(anchor.seq, f"{what} has a bad signature: it was forged")
        checked += 1
        if anchor.seq < key.first_seq or (key.last_seq is not None and anchor.seq > key.last_seq):
            until = key.last_seq if key.last_seq is not None else "now"
            return checked, _Problem(
                anchor.seq,
                f"{what} is signed by key {key.id}, valid only for records {key.first_seq}"
                f" to {until}",
            )
        if anchor.seq > head:
            return checked, _Problem(
                head + 1,
                f"the chain ends at record {head} but {what} names record {anchor.seq}:"
                f" the tail after record {head} was cut",
            )
        row = db.execute("SELECT hash FROM audit_records WHERE seq = ?", (anchor.seq,)).fetchone()
        if row is None or row[0] != anchor.hash:
            return checked, _Problem(
                good_through + 1,
                f"record {anchor.seq} does not match {what}: the chain was rewritten between"
                f" records {good_through + 1} and {anchor.seq}",
            )
        good_through = anchor.seq
    return checked, None


def _check_key_file(key_path: Path, last: _Key) -> list[_Problem]:
    try:
        key = SigningKey.load(key_path)
    except AuditError as exc:
        return [_Problem(None, f"the signing key cannot be checked: {exc}")]
    if key.id != last.id:
        return [
            _Problem(
                None,
                f"the key file {key_path} holds key {key.id}, not the key the chain names"
                f" last ({last.id}, from record {last.first_seq}): the key was replaced",
            )
        ]
    return []
