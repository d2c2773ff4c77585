"""Faults a test or demo can inject into the Raman emulator, and their parameters."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = [
    "Fault",
    "GarbageParams",
    "LaserDecayParams",
    "NackParams",
    "TruncatedParams",
    "fault_params",
]


class Fault(enum.Enum):
    """What :meth:`RamanEmulator.inject` can break; each stays active until cleared."""

    #: Answer every request with NACK and error number ``error`` (default 7, device not ready).
    NACK = "nack"
    #: Send replies with checksum type MD5 and a wrong checksum.
    BAD_CHECKSUM = "bad_checksum"
    #: Send only the first ``keep`` fraction (default one half) of each reply.
    TRUNCATED = "truncated"
    #: Send 1..``size`` random bytes before each reply (``before_reply``) and/or on their own
    #: every ``every_s`` seconds.
    GARBAGE = "garbage"
    #: Read and ignore everything: no reply to anything.
    SILENCE = "silence"
    #: Gradual: the laser's output falls, so the Raman bands lose ``rate_per_h`` of their
    #: intensity per hour of the time base (process hours when linked to a process), down to
    #: ``1 - max_loss``; fluorescence background and dark signal are unchanged. Clearing it is
    #: a new laser.
    LASER_DECAY = "laser_decay"


@dataclass(frozen=True, slots=True)
class NackParams:
    """Parameters of :attr:`Fault.NACK`."""

    error: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.error <= 0xFFFF:
            raise ValueError(f"error number must be 1..65535, got {self.error}")


@dataclass(frozen=True, slots=True)
class TruncatedParams:
    """Parameters of :attr:`Fault.TRUNCATED`."""

    keep: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.keep < 1.0:
            raise ValueError(f"keep must be a fraction strictly between 0 and 1, got {self.keep}")


@dataclass(frozen=True, slots=True)
class GarbageParams:
    """Parameters of :attr:`Fault.GARBAGE`."""

    size: int = 32
    before_reply: bool = True
    every_s: float | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be at least 1 byte, got {self.size}")
        if self.every_s is not None and not (math.isfinite(self.every_s) and self.every_s > 0):
            raise ValueError(f"every_s must be a positive number of seconds, got {self.every_s}")


@dataclass(frozen=True, slots=True)
class LaserDecayParams:
    """Parameters of :attr:`Fault.LASER_DECAY`."""

    rate_per_h: float
    max_loss: float = 0.9

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_h) and 0.0 < self.rate_per_h <= 1.0):
            raise ValueError(f"rate_per_h must be in (0, 1] per hour, got {self.rate_per_h}")
        if not (math.isfinite(self.max_loss) and 0.0 < self.max_loss <= 1.0):
            raise ValueError(f"max_loss must be in (0, 1], got {self.max_loss}")


@dataclass(frozen=True, slots=True)
class _NoParams:
    """Faults without parameters."""


_PARAMS: dict[Fault, type[object]] = {
    Fault.NACK: NackParams,
    Fault.BAD_CHECKSUM: _NoParams,
    Fault.TRUNCATED: TruncatedParams,
    Fault.GARBAGE: GarbageParams,
    Fault.SILENCE: _NoParams,
    Fault.LASER_DECAY: LaserDecayParams,
}


def fault_params(fault: Fault, params: dict[str, object]) -> object:
    """Validated parameters of ``fault``: ``TypeError`` for a name it does not take,
    ``ValueError`` for a value out of range."""
    try:
        return _PARAMS[fault](**params)
    except TypeError as exc:
        raise TypeError(f"fault {fault.value!r}: {exc}") from exc
