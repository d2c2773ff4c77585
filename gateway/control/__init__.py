"""The controlled write path: declared targets, their limits, and :class:`WritePath`."""

from .access import Access
from .config import WriteTargetConfig
from .path import Signature, WriteOutcome, WritePath, WriteRequest, WriteTarget
from .targets import resolve_targets

__all__ = [
    "Access",
    "Signature",
    "WriteOutcome",
    "WritePath",
    "WriteRequest",
    "WriteTarget",
    "WriteTargetConfig",
    "resolve_targets",
]
