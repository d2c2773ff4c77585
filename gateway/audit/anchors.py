"""Anchors: signed statements "record ``seq`` of this gateway's trail has hash ``hash``", kept
outside the chain (a table of the audit file, a JSON-lines file elsewhere, and upstream) so that
cutting the chain's tail is detectable.

The signature is Ed25519 over the canonical JSON (see :mod:`.records`) of the object
``{"gateway", "hash", "key_id", "seq", "ts_ns"}``."""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..oscompat import O_BINARY, read_at
from .keys import SigningKey
from .records import AuditError, canonical_json

__all__ = ["Anchor", "append_anchor_file", "read_anchor_file"]


@dataclass(frozen=True, slots=True)
class Anchor:
    """A signed chain head. ``ts_ns`` is when it was signed (UTC ns); ``signature`` is raw."""

    gateway: str
    seq: int
    hash: str
    ts_ns: int
    key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers."""
        return signed_payload(self.gateway, self.seq, self.hash, self.ts_ns, self.key_id)

    def to_json(self) -> dict[str, Any]:
        """A short JSON-able dict (for the anchor file and for publishing upstream)."""
        return {
            "gateway": self.gateway,
            "seq": self.seq,
            "hash": self.hash,
            "ts_ns": self.ts_ns,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Any) -> Anchor:
        """The anchor :meth:`to_json` made; ``ValueError`` naming what is wrong otherwise."""
        if not isinstance(data, dict):
            raise ValueError("an anchor is a JSON object")
        try:
            gateway, seq, hash_, ts_ns = data["gateway"], data["seq"], data["hash"], data["ts_ns"]
            key, signature = data["key_id"], data["signature"]
        except KeyError as exc:
            raise ValueError(f"anchor without {exc.args[0]!r}") from None
        if not (isinstance(gateway, str) and isinstance(hash_, str) and isinstance(key, str)):
            raise ValueError("anchor gateway, hash and key_id must be strings")
        if type(seq) is not int or type(ts_ns) is not int or not isinstance(signature, str):
            raise ValueError("anchor seq and ts_ns must be integers, signature a string")
        try:
            raw = base64.b64decode(signature, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"anchor signature is not base64: {exc}") from None
        return cls(gateway, seq, hash_, ts_ns, key, raw)

    @classmethod
    def sign(cls, key: SigningKey, gateway: str, seq: int, hash_: str, ts_ns: int) -> Anchor:
        """``key``'s anchor of record ``seq`` whose hash is ``hash_``."""
        payload = signed_payload(gateway, seq, hash_, ts_ns, key.id)
        return cls(gateway, seq, hash_, ts_ns, key.id, key.sign(payload))


def signed_payload(gateway: str, seq: int, hash_: str, ts_ns: int, key_id: str) -> bytes:
    fields = {"gateway": gateway, "seq": seq, "hash": hash_, "ts_ns": ts_ns, "key_id": key_id}
    return canonical_json(fields).encode("utf-8")


def append_anchor_file(path: Path, anchor: Anchor) -> None:
    """Append ``anchor`` as one JSON line to ``path`` (created if missing), synced to disk."""
    line = (json.dumps(anchor.to_json(), sort_keys=True) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | O_BINARY, 0o644)
        try:
            # A last line torn by a crash (no newline) is ended first, so this anchor stays a
            # line of its own; the torn one is reported by verify as unreadable.
            size = os.fstat(fd).st_size
            if size and read_at(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            # One write of a short line with O_APPEND: two processes never interleave lines.
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise AuditError(f"audit anchor file {path} cannot be written: {exc}") from exc


def read_anchor_file(path: Path) -> tuple[list[tuple[int, Anchor]], list[str]]:
    """The anchors in ``path`` with their line numbers, and one problem per unreadable line.

    A missing file has no anchors. A last line without its newline (a crash while appending) is
    reported like any other bad line: the verifier decides what it means."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"audit anchor file {path} cannot be read: {exc}") from exc
    anchors: list[tuple[int, Anchor]] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            anchors.append((number, Anchor.from_json(json.loads(line))))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            problems.append(f"{path} line {number}: {exc}")
    return anchors, problems
