"""Waiting for a condition with a deadline, for the kit's ``wait_for_*`` methods."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["wait_until"]


async def wait_until(
    condition: Callable[[], bool], within: float, what: Callable[[], str], interval: float = 0.02
) -> None:
    """Return once ``condition()`` is true; raise :class:`TimeoutError` saying ``what()`` (how
    far it got) after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - polled state (a store, a record) has no event
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"timed out after {within:g} s: {what()}") from None
