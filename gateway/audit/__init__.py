"""The tamper-evident audit trail: who did what, when, why, with which outcome.

Records are hash-chained (each holds its predecessor's hash), numbered without gaps, and their
head is signed from time to time with the gateway's Ed25519 key; the signed heads (anchors) are
kept in the audit file, in an anchor file outside it and upstream. :func:`verify` names the first
record that is wrong. See docs/decisions/0016-audit-trail.md.

::

    trail = AuditTrail(path, gateway_id="site/area", key_path=key, anchor_path=anchors).open()
    trail.append(AuditEvent("write.requested", user="operator", target="...", new=5.0))
    await trail.record(event)   # from a coroutine: group commit in a worker thread
    trail.sign_head()           # periodically
"""

from .anchors import Anchor, read_anchor_file
from .config import AuditConfig, AuditPaths, gateway_identity, trail_for
from .export import EXPORT_COLUMNS, chain_head, export, read_records
from .records import GENESIS_HASH, AuditError, AuditEvent, AuditRecord, canonical_json, record_hash
from .trail import AuditTrail
from .verify import VerifyReport, verify

__all__ = [
    "EXPORT_COLUMNS",
    "GENESIS_HASH",
    "Anchor",
    "AuditConfig",
    "AuditError",
    "AuditEvent",
    "AuditPaths",
    "AuditRecord",
    "AuditTrail",
    "VerifyReport",
    "canonical_json",
    "chain_head",
    "export",
    "gateway_identity",
    "read_anchor_file",
    "read_records",
    "record_hash",
    "trail_for",
    "verify",
]
