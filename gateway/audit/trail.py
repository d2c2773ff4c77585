"""The audit trail: an append-only, hash-chained, periodically signed record of who did what.

One :class:`AuditTrail` per process; several processes (the running gateway, a ``patgw audit``
command) may append to the same file: every append is one ``BEGIN IMMEDIATE`` transaction that
reads the head and adds after it, so the chain stays one chain. Every failure to write raises
:class:`AuditError`: callers that act on the process fail closed on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import structlog

from ._db import KEY_ACTIONS, connect
from .anchors import Anchor, append_anchor_file
from .keys import SigningKey, public_path
from .records import (
    GENESIS_HASH,
    AuditError,
    AuditEvent,
    AuditRecord,
    EncodedValues,
    encode_values,
    encoded_hash,
)

__all__ = ["AuditTrail"]

log = structlog.get_logger("gateway.audit")

_Prepared = tuple[AuditEvent, EncodedValues]
_Pending = tuple[_Prepared, "asyncio.Future[AuditRecord]"]


class AuditTrail:
    """The audit file at ``path``, signed with the key at ``key_path`` (created with the trail
    if missing), its anchors also appended to ``anchor_path``.

    ``gateway_id`` names this gateway in every record and anchor. Use :meth:`open` (or ``with``)
    before anything else, :meth:`close` (or :meth:`aclose` after :meth:`record`) at the end.
    """

    def __init__(
        self,
        path: Path,
        *,
        gateway_id: str,
        key_path: Path,
        anchor_path: Path,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.gateway_id = gateway_id
        self.key_path = Path(key_path)
        self.anchor_path = Path(anchor_path)
        self._busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._key: SigningKey | None = None
        # One connection, used from the event loop's worker threads and from callers' threads.
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None

    # -- life cycle --------------------------------------------------------------------------

    def open(self) -> AuditTrail:
        """Open the file (creating it, its schema and, for a new trail, the key); check that the
        key is the one the chain names. Returns ``self``."""
        db = connect(self.path, busy_timeout_s=self._busy_timeout_s)
        try:
            with self._lock, self._transaction(db, "open"):
                self._key = self._settle_key(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        log.debug("audit.opened", path=str(self.path), key_id=self._key.id)
        return self

    def close(self) -> None:
        """Close the file. Records still waiting in :meth:`record` fail with AuditError."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def aclose(self) -> None:
        """Wait for the records :meth:`record` is committing, then close."""
        committer = self._committer
        if committer is not None:
            await committer
        self.close()

    def __enter__(self) -> AuditTrail:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def key_id(self) -> str:
        """The id of the key anchors are signed with now."""
        return self._signing_key().id

    # -- appending ---------------------------------------------------------------------------

    def append(self, event: AuditEvent) -> AuditRecord:
        """Append one record; it is on disk when this returns. Blocks: from a coroutine, use
        :meth:`record`."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditRecord]:
        """Append ``events`` in order, in one transaction (all or none)."""
        return self._append_prepared([(event, encode_values(event)) for event in events])

    def _append_prepared(self, prepared: Sequence[_Prepared]) -> list[AuditRecord]:
        with self._lock:
            db = self._connection()
            with self._transaction(db, "append to"):
                return self._insert(db, prepared)

    async def record(self, event: AuditEvent) -> AuditRecord:
        """Append ``event`` and return its record once committed, without blocking the loop.

        Concurrent callers share one transaction (group commit): while one commit runs in a
        worker thread, the events that arrive wait for the next. A caller cancelled while
        waiting does not take its event back: it may still be committed."""
        values = encode_values(event)  # a bad event fails its caller alone, at once
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[AuditRecord] = loop.create_future()
        self._pending.append(((event, values), waiter))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_pending(), name="audit.group_commit")
        return await waiter

    async def _commit_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                records = await asyncio.to_thread(self._append_prepared, [p for p, _ in batch])
            except AuditError as exc:
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(AuditError(str(exc)))
                continue
            except BaseException:
                for _, waiter in batch + self._pending:
                    if not waiter.done():
                        waiter.set_exception(AuditError("audit commit was cancelled"))
                self._pending = []
                raise
            for (_, waiter), record in zip(batch, records, strict=True):
                if not waiter.done():
                    waiter.set_result(record)

    # -- configurations ----------------------------------------------------------------------

    def keep_config(self, content: bytes) -> str:
        """Keep ``content`` (a configuration file's bytes) once; its SHA-256 (hex) names it."""
        digest = hashlib.sha256(content).hexdigest()
        with self._lock:
            db = self._connection()
            with self._transaction(db, "keep a configuration in"):
                db.execute(
                    "INSERT OR IGNORE INTO audit_configs (sha256, size, first_ts_ns, content)"
                    " VALUES (?, ?, ?, ?)",
                    (digest, len(content), time.time_ns(), content),
                )
        return digest

    def config_content(self, sha256: str) -> bytes | None:
        """The configuration kept under ``sha256``, or None."""
        with self._lock:
            db = self._connection()
            try:
                row = db.execute(
                    "SELECT content FROM audit_configs WHERE sha256 = ?", (sha256,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise AuditError(f"audit trail {self.path} cannot be read: {exc}") from exc
        return None if row is None else bytes(row[0])

    # -- signing -----------------------------------------------------------------------------

    def sign_head(self) -> Anchor | None:
        """Sign the chain's head, keep the anchor in the file's anchor table and append it to
        the anchor file. None if the trail is empty or its head is already anchored with the
        current key (nothing new to sign)."""
        with self._lock:
            db = self._connection()
            with self._transaction(db, "sign"):
                key = self._current_key(db)
                head = _head(db)
                if head is None:
                    return None
                last = db.execute(
                    "SELECT seq, hash, key_id FROM audit_anchors ORDER BY id DESC LIMIT 1"
                ).fetchone()
                if last is not None and tuple(last) == (head[0], head[1], key.id):
                    return None
                return self._anchor(db, key, head)

    async def asign_head(self) -> Anchor | None:
        """:meth:`sign_head` in a worker thread, for the runtime's periodic signing."""
        return await asyncio.to_thread(self.sign_head)

    def rotate_key(self) -> AuditRecord:
        """Replace the signing key with a new one.

        The rotation is a record (``audit.key_rotated``, naming the new public key) anchored
        with the old key, then anchored again with the new one: the chain shows which key was
        valid for which records. The old private key is gone afterwards."""
        new = SigningKey.generate()
        staged = _staged_path(self.key_path)
        new.save(staged)  # a crash from here on is settled by the next open()
        with self._lock:
            db = self._connection()
            try:
                with self._transaction(db, "rotate the key of"):
                    old = self._current_key(db)
                    details = {"old_key_id": old.id, "key_id": new.id, "public_key": new.public_hex}
                    event = AuditEvent("audit.key_rotated", details=details)
                    record = self._insert(db, [(event, encode_values(event))])[0]
            except BaseException:
                _discard(staged)
                raise
            # Anchored once committed: the anchor file must not name a record a reader (a
            # verification) cannot see yet.
            with self._transaction(db, "sign"):
                self._anchor(db, old, (record.seq, record.hash))
            new.save(self.key_path)
            _discard(staged)
            self._key = new
            with self._transaction(db, "sign"):
                self._anchor(db, new, (record.seq, record.hash))
        log.info("audit.key_rotated", old_key_id=old.id, key_id=new.id, seq=record.seq)
        return record

    # -- internals ---------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise AuditError(f"audit trail {self.path} is not open")
        return self._db

    def _signing_key(self) -> SigningKey:
        if self._key is None:
            raise AuditError(f"audit trail {self.path} is not open")
        return self._key

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection, what: str) -> Iterator[None]:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise AuditError(f"cannot {what} audit trail {self.path}: {exc}") from exc
        try:
            yield
            db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise AuditError(f"cannot {what} audit trail {self.path}: {exc}") from exc
            raise

    def _insert(self, db: sqlite3.Connection, events: Sequence[_Prepared]) -> list[AuditRecord]:
        head = _head(db)
        seq, prev = head if head is not None else (0, GENESIS_HASH)
        records: list[AuditRecord] = []
        rows = []
        gateway = self.gateway_id
        for event, (old, new, details) in events:
            seq += 1
            ts_ns = time.time_ns()
            digest = encoded_hash(seq, ts_ns, gateway, event, (old, new, details), prev)
            records.append(AuditRecord(seq, ts_ns, gateway, event, prev, digest))
            texts = (event.action, event.user, event.target, old, new, event.reason)
            rows.append((seq, ts_ns, gateway, *texts, event.outcome, details, prev, digest))
            prev = digest
        db.executemany(
            "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
        return records

    def _anchor(self, db: sqlite3.Connection, key: SigningKey, head: tuple[int, str]) -> Anchor:
        anchor = Anchor.sign(key, self.gateway_id, head[0], head[1], time.time_ns())
        db.execute(
            "INSERT INTO audit_anchors (gateway, seq, hash, ts_ns, key_id, signature)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                anchor.gateway,
                anchor.seq,
                anchor.hash,
                anchor.ts_ns,
                anchor.key_id,
                anchor.signature,
            ),
        )
        # Only committed records are anchored (the head as this transaction reads it, or a
        # record committed before), so the file never names a record a reader cannot see yet.
        append_anchor_file(self.anchor_path, anchor)
        return anchor

    def _settle_key(self, db: sqlite3.Connection) -> SigningKey:
        """The key to sign with, checked against the chain (in an open transaction)."""
        named = chain_key(db)
        staged = _staged_path(self.key_path)
        if staged.exists():  # a rotation was interrupted: finish it or forget it
            key = SigningKey.load(staged)
            if named is not None and named[0] == key.id:
                key.save(self.key_path)
            _discard(staged)
        if not self.key_path.exists():
            if named is not None:
                raise AuditError(
                    f"audit key {self.key_path} is missing; the trail {self.path} is signed with"
                    f" key {named[0]}: restore the key file"
                )
            SigningKey.generate().save(self.key_path)
        key = SigningKey.load(self.key_path)
        if named is None:
            if _head(db) is not None:
                raise AuditError(f"audit trail {self.path} has records but names no key")
            details = {"key_id": key.id, "public_key": key.public_hex}
            created = AuditEvent("audit.created", details=details)
            self._insert(db, [(created, encode_values(created))])
            log.info("audit.created", path=str(self.path), key_id=key.id)
        elif named[0] != key.id:
            raise AuditError(
                f"audit key {self.key_path} (id {key.id}) is not the key the trail {self.path}"
                f" names (id {named[0]}): the key file was replaced; restore it"
            )
        return key

    def _current_key(self, db: sqlite3.Connection) -> SigningKey:
        """The key the chain names now; reloaded from the key file if another process rotated
        it since."""
        key = self._signing_key()
        named = chain_key(db)
        if named is None or named[0] == key.id:
            return key
        # The rotating process installs the new key file just after committing the rotation:
        # until then the new key is the staged one.
        for candidate in (self.key_path, _staged_path(self.key_path)):
            try:
                reloaded = SigningKey.load(candidate)
            except AuditError:
                continue
            if reloaded.id == named[0]:
                self._key = reloaded
                return reloaded
        raise AuditError(
            f"audit key {self.key_path} is not the key the trail {self.path} names (id"
            f" {named[0]}): the key file was replaced; restore it"
        )


def chain_key(db: sqlite3.Connection) -> tuple[str, str] | None:
    """(key id, public key hex) of the key the chain names last, or None."""
    marks = ", ".join("?" for _ in KEY_ACTIONS)
    row = db.execute(
        f"SELECT details FROM audit_records WHERE action IN ({marks}) ORDER BY seq DESC LIMIT 1",
        KEY_ACTIONS,
    ).fetchone()
    if row is None:
        return None
    try:
        details = json.loads(row[0])
        return str(details["key_id"]), str(details["public_key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"the trail's last key record is unreadable: {exc}") from exc


def _head(db: sqlite3.Connection) -> tuple[int, str] | None:
    row = db.execute("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _staged_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".new")


def _discard(staged: Path) -> None:
    for path in (staged, public_path(staged)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
