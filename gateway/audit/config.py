"""The ``audit:`` section of a configuration: where the audit trail, its key and its anchor
file live, and how often the chain's head is signed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from ..api import ConfigPath
from .trail import AuditTrail

if TYPE_CHECKING:
    from ..config import GatewayConfig

__all__ = ["AuditConfig", "AuditPaths", "gateway_identity", "trail_for"]


@dataclass(frozen=True, slots=True)
class AuditPaths:
    """The audit trail's three files, defaults resolved."""

    path: Path
    key: Path
    anchor_file: Path


class AuditConfig(BaseModel):
    """The tamper-evident audit trail (see docs/decisions/0016-audit-trail.md). Every path may
    be left out; a relative one is relative to the config file's folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: ConfigPath | None = Field(
        default=None,
        description="Audit database file (SQLite); default: beside the store, named after it"
        " (store demo.sqlite: demo.audit.sqlite), so two configurations never share a trail.",
    )
    key: ConfigPath | None = Field(
        default=None,
        description="The gateway's Ed25519 signing key (PEM, mode 0600; created with the trail,"
        " its public key beside it as KEY.pub); default: <data_dir>/audit/gateway-ed25519.key."
        " Keep it off the store's disk if you can.",
    )
    anchor_file: ConfigPath | None = Field(
        default=None,
        description="JSON-lines file every signed chain head is appended to, outside the audit"
        " database; default: the audit file's name with .anchors.jsonl, beside it.",
    )
    sign_interval_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="How often the chain's head is signed and anchored (when it moved): a cut"
        " tail is detectable down to the last anchor.",
    )

    def resolved(self, store_path: Path, data_dir: Path) -> AuditPaths:
        """The three files, given the configuration's store path and data_dir."""
        path = (
            self.path
            if self.path is not None
            else store_path.with_name(f"{store_path.stem}.audit.sqlite")
        )
        key = self.key if self.key is not None else data_dir / "audit" / "gateway-ed25519.key"
        anchors = (
            self.anchor_file
            if self.anchor_file is not None
            else path.with_name(path.stem + ".anchors.jsonl")
        )
        return AuditPaths(path, key, anchors)


def gateway_identity(site: str, area: str) -> str:
    """The gateway's name in its audit records and anchors: ``site/area``."""
    return f"{site}/{area}"


def trail_for(config: GatewayConfig) -> AuditTrail:
    """The audit trail ``config`` names (not opened yet): its files, and ``site/area`` as the
    gateway's identity. The runtime and ``patgw audit`` both use this."""
    paths = config.audit.resolved(config.store.path, config.data_dir)
    return AuditTrail(
        paths.path,
        gateway_id=gateway_identity(config.site, config.area),
        key_path=paths.key,
        anchor_path=paths.anchor_file,
    )
