"""Polls of instruments that start together are spread over the period (``poll_phase``), so
their readings do not reach the store and the sinks as one burst per period."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from gateway import Channel, PluginContext, PollingDriver
from gateway.api import poll_phase


def test_the_phase_is_fixed_by_the_id_and_spread_over_the_period() -> None:
    ids = [f"reactor1_probe_{n}" for n in range(100)]
    phases = sorted(poll_phase(i) for i in ids)
    assert phases == sorted(poll_phase(i) for i in ids)  # the same at every start
    assert all(0.0 <= p < 1.0 for p in phases)
    gaps = [b - a for a, b in zip([0.0, *phases], [*phases, 1.0], strict=True)]
    assert max(gaps) < 0.1, "100 instruments leave no tenth of the period unpolled"
    # Each tenth of the period polls some of them, none most of them.
    tenths = [sum(int(p * 10) == t for p in phases) for t in range(10)]
    assert min(tenths) >= 3 and max(tenths) <= 25, tenths


class Recording(PollingDriver):
    def __init__(self, context: PluginContext, polls: list[float]) -> None:
        super().__init__(context)
        self.polls = polls

    def channels(self) -> Sequence[Channel]:
        return [Channel("x", "1")]

    async def connect(self) -> None:
        return None

    async def poll(self, io: Any) -> None:
        self.polls.append(asyncio.get_running_loop().time())


class _IO:
    def connected(self) -> None:
        return None


@pytest.mark.asyncio
async def test_the_second_poll_waits_for_the_instruments_phase(tmp_path: Path) -> None:
    # An id whose phase is most of the period: the second poll comes a period and that phase
    # after the first (never earlier: asyncio does not wake a sleep before its time).
    instrument = next(f"probe{n}" for n in range(1000) if 0.6 < poll_phase(f"probe{n}") < 0.9)
    interval = 0.2
    polls: list[float] = []
    driver = Recording(PluginContext(instrument, tmp_path, poll_interval_s=interval), polls)
    task = asyncio.create_task(driver.run(_IO()), name="test.phase")  # type: ignore[arg-type]
    try:
        await wait_for(lambda: len(polls) >= 3, 10, what="three polls")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    resolution = asyncio.get_running_loop()._clock_resolution  # type: ignore[attr-defined]
    assert polls[1] - polls[0] >= (1 + poll_phase(instrument)) * interval - 2 * resolution
    assert polls[2] - polls[0] >= (2 + poll_phase(instrument)) * interval - 2 * resolution
