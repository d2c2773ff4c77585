"""Reconnect backoff: growth, cap, jitter, reset — and no overflow in a week-long outage."""

from __future__ import annotations

import random

import pytest

from gateway.config import BackoffConfig
from gateway.runtime.backoff import Backoff


def test_grows_by_factor_up_to_the_cap_without_jitter() -> None:
    backoff = Backoff(BackoffConfig(initial_s=0.5, max_s=5, factor=2, jitter=0))
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1, 2, 4, 5, 5, 5]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_jitter_only_shortens_within_its_fraction() -> None:
    backoff = Backoff(BackoffConfig(initial_s=1, max_s=1, jitter=0.5), random.Random(7))
    delays = [backoff.next_delay() for _ in range(1000)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.4  # really spread, not constant


@pytest.mark.parametrize("factor", [1.0, 2.0, 10.0])
def test_a_very_long_outage_never_overflows(factor: float) -> None:
    backoff = Backoff(BackoffConfig(initial_s=0.5, max_s=30, factor=factor, jitter=0.5))
    delays = [backoff.next_delay() for _ in range(100_000)]
    assert backoff.attempt == 100_000
    assert all(0 < d <= 30 for d in delays)
