"""The controlled write path: declared targets and commands, their rules, and :class:`WritePath`."""

from .access import Access
from .commands import (
    CommandOutcome,
    CommandRequest,
    CommandTarget,
    CommandTargetConfig,
    resolve_commands,
)
from .config import WriteTargetConfig
from .path import Signature, WriteOutcome, WritePath, WriteRequest, WriteTarget
from .targets import resolve_targets

__all__ = [
    "Access",
    "CommandOutcome",
    "CommandRequest",
    "CommandTarget",
    "CommandTargetConfig",
    "Signature",
    "WriteOutcome",
    "WritePath",
    "WriteRequest",
    "WriteTarget",
    "WriteTargetConfig",
    "resolve_commands",
    "resolve_targets",
]
