"""Audit events, the records they become, and the hash that chains the records (pure).

A record's hash is the SHA-256, in lower-case hex, of the UTF-8 bytes of its canonical
encoding: a JSON object holding every field of the record except the hash itself (``seq``,
``ts_ns``, ``gateway``, ``action``, ``user``, ``target``, ``old``, ``new``, ``reason``,
``outcome``, ``details``, ``prev_hash``), keys sorted, no whitespace (``","`` and ``":"``
separators), non-ASCII characters as themselves, NaN and infinities refused. ``prev_hash`` is the
previous record's hash, or 64 zeros for record 1. Anyone can recompute it with a few lines of
any language's JSON library; see docs/decisions/0016-audit-trail.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import GatewayError

__all__ = [
    "GENESIS_HASH",
    "AuditError",
    "AuditEvent",
    "AuditRecord",
    "canonical_json",
    "record_hash",
]

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of record 1."""


class AuditError(GatewayError):
    """The audit trail cannot be opened, read or written. Callers that act on the process
    (writes) fail closed on it: nothing is done that cannot be recorded."""


def canonical_json(value: Any) -> str:
    """``value`` as sorted-key compact JSON: the one encoding hashes and signatures cover.

    Raises ``ValueError``/``TypeError`` for what JSON cannot hold (NaN, sets, objects)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Something that happened, as a caller reports it: who did what to which target, with the
    value before and after, why, and how it ended.

    ``action`` is dotted (``"write.requested"``, ``"login.failed"``, ``"gateway.started"``);
    ``outcome`` is ``"ok"``, ``"refused"``, ``"failed"``, ``"mismatch"`` or another word the
    action defines; ``old``, ``new`` and ``details`` must be JSON-able (checked on append)."""

    action: str
    user: str = "system"
    target: str = ""
    old: Any = None
    new: Any = None
    reason: str = ""
    outcome: str = "ok"
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An event as committed to the trail: numbered, time-stamped, and chained by its hash."""

    seq: int
    ts_ns: int
    gateway: str
    event: AuditEvent
    prev_hash: str
    hash: str

    def fields(self) -> dict[str, Any]:
        """Every field the hash covers, plus the hash: one flat JSON-able dict (for exports)."""
        out = hashed_fields(self.seq, self.ts_ns, self.gateway, self.event, self.prev_hash)
        out["hash"] = self.hash
        return out


def hashed_fields(
    seq: int, ts_ns: int, gateway: str, event: AuditEvent, prev_hash: str
) -> dict[str, Any]:
    """The fields a record's hash covers, by name."""
    return {
        "seq": seq,
        "ts_ns": ts_ns,
        "gateway": gateway,
        "action": event.action,
        "user": event.user,
        "target": event.target,
        "old": event.old,
        "new": event.new,
        "reason": event.reason,
        "outcome": event.outcome,
        "details": dict(event.details) if event.details is not None else None,
        "prev_hash": prev_hash,
    }


EncodedValues = tuple[str, str, str]
"""An event's ``old``, ``new`` and ``details`` as canonical JSON text."""


def encode_values(event: AuditEvent) -> EncodedValues:
    """Check that ``event`` can be recorded and encode its JSON values, once; raise
    :class:`AuditError` naming the field that cannot be recorded."""
    for name in ("action", "user", "target", "reason", "outcome"):
        text = getattr(event, name)
        if not isinstance(text, str):
            raise AuditError(f"audit event {name} must be a string, not {text!r}")
        try:
            text.encode("utf-8")  # SQLite stores UTF-8: a lone surrogate has none
        except UnicodeEncodeError as exc:
            raise AuditError(f"audit event {name} is not valid Unicode text ({exc})") from exc
    if not event.action:
        raise AuditError("audit event has an empty action")
    if event.details is not None and not isinstance(event.details, Mapping):
        raise AuditError(f"audit event {event.action!r}: details must be a mapping")
    encoded = []
    for name, value in (
        ("old", event.old),
        ("new", event.new),
        ("details", dict(event.details) if event.details is not None else None),
    ):
        try:
            text = canonical_json(value)
            text.encode("utf-8")  # a lone surrogate passes json.dumps, not SQLite
            encoded.append(text)
        except (TypeError, ValueError) as exc:
            raise AuditError(
                f"audit event {event.action!r}: {name} is not JSON-able ({exc})"
            ) from exc
    return encoded[0], encoded[1], encoded[2]


def encoded_hash(
    seq: int,
    ts_ns: int,
    gateway: str,
    event: AuditEvent,
    values: EncodedValues,
    prev_hash: str,
) -> str:
    """:func:`record_hash` from values :func:`encode_values` already encoded: the same
    canonical JSON, assembled key by key in sorted order instead of encoded again."""
    text = _text
    encoded = (
        f'{{"action":{text(event.action)},"details":{values[2]},"gateway":{text(gateway)},'
        f'"new":{values[1]},"old":{values[0]},"outcome":{text(event.outcome)},'
        f'"prev_hash":{text(prev_hash)},"reason":{text(event.reason)},"seq":{seq:d},'
        f'"target":{text(event.target)},"ts_ns":{ts_ns:d},"user":{text(event.user)}}}'
    )
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def record_hash(seq: int, ts_ns: int, gateway: str, event: AuditEvent, prev_hash: str) -> str:
    """The hash of the record these fields make (see the module docstring)."""
    encoded = canonical_json(hashed_fields(seq, ts_ns, gateway, event, prev_hash))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)
