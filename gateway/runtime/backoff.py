"""Jittered exponential backoff for reconnecting to instruments."""

from __future__ import annotations

import random

from ..config import BackoffConfig

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial_s * factor**n`` capped at ``max_s``, each shortened by a random jitter.

    Jitter spreads reconnects of many gateways (or many instruments) so that a recovering server
    is not hit by all of them at once.
    """

    def __init__(self, config: BackoffConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.attempt = 0
        self._base = config.initial_s
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        c = self.config
        # Carried forward and capped, never recomputed as factor**attempt: an outage of days
        # means tens of thousands of attempts, and a power that large overflows a float.
        base = self._base
        self._base = min(c.max_s, base * c.factor)
        self.attempt += 1
        return base * (1.0 - c.jitter * self._rng.random())

    def reset(self) -> None:
        """Forget past failures (the instrument answered)."""
        self.attempt = 0
        self._base = self.config.initial_s
