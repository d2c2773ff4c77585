"""The audit file's SQLite schema, connections to it, and rows turned back into records."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from .records import AuditError, AuditEvent, AuditRecord

__all__ = ["KEY_ACTIONS", "RECORD_COLUMNS", "connect", "record_from_row"]

SCHEMA_VERSION = 1

# Records are append-only: the triggers stop a mistaken UPDATE or DELETE (a tool, a script).
# They stop no one who means harm and can drop them; the hash chain and the anchors catch that.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    gateway TEXT NOT NULL,
    action TEXT NOT NULL,
    "user" TEXT NOT NULL,
    target TEXT NOT NULL,
    old TEXT NOT NULL,
    new TEXT NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_action ON audit_records (action);
CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TABLE IF NOT EXISTS audit_anchors (
    id INTEGER PRIMARY KEY,
    gateway TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    ts_ns INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_configs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    first_ts_ns INTEGER NOT NULL,
    content BLOB NOT NULL
);
"""

RECORD_COLUMNS = (
    'seq, ts_ns, gateway, action, "user", target, old, new, reason, outcome, details,'
    " prev_hash, hash"
)

KEY_ACTIONS = ("audit.created", "audit.key_rotated")
"""The records that name the signing key from then on (details: key_id, public_key)."""


def connect(
    path: Path, *, read_only: bool = False, busy_timeout_s: float = 10.0
) -> sqlite3.Connection:
    """A connection to the audit file; writable ones create it and its schema, in WAL mode with
    ``synchronous=FULL`` (a record is on disk when its commit returns, power loss included)."""
    try:
        if read_only:
            if not path.exists():
                raise AuditError(f"no audit trail at {path}")
            uri = path.absolute().as_uri() + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=busy_timeout_s)
            db.execute("SELECT count(*) FROM audit_records").fetchone()
            return db
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise AuditError(
                        f"audit trail {path} has schema {version}, newer than this gateway's"
                        f" ({SCHEMA_VERSION}): use a newer gateway"
                    )
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
        except BaseException:
            db.close()
            raise
        return db
    except sqlite3.Error as exc:
        raise AuditError(f"audit trail {path} cannot be opened: {exc}") from exc
    except OSError as exc:
        raise AuditError(f"audit trail {path} cannot be created: {exc}") from exc


def record_from_row(row: tuple[Any, ...]) -> AuditRecord:
    """A row of ``SELECT {RECORD_COLUMNS}`` as a record; ``ValueError`` if a column cannot be
    decoded (the verifier reports that row as edited)."""
    seq, ts_ns, gateway, action, user, target, old, new, reason, outcome, details = row[:11]
    prev_hash, hash_ = row[11:13]
    texts = (gateway, action, user, target, reason, outcome, prev_hash, hash_)
    if type(seq) is not int or type(ts_ns) is not int or not all(isinstance(t, str) for t in texts):
        raise ValueError("a column has the wrong type")
    decoded = [json.loads(x) if isinstance(x, str) else _bad(x) for x in (old, new, details)]
    if decoded[2] is not None and not isinstance(decoded[2], dict):
        raise ValueError("details is not a JSON object")
    event = AuditEvent(action, user, target, decoded[0], decoded[1], reason, outcome, decoded[2])
    return AuditRecord(seq, ts_ns, gateway, event, prev_hash, hash_)


def _bad(value: Any) -> Any:
    raise ValueError(f"not JSON text: {value!r}")
