"""A polling driver stops when cancelled even if a library it awaits swallowed the
cancellation: Python 3.11's ``asyncio.wait_for`` (which pymodbus awaits every request with)
returns the inner result and drops the CancelledError when both happen at once. Seen in CI as
``gateway.stop_timeout`` for a Modbus instrument that went on polling for 10 s after the stop,
its samples then dropped after the final commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway import Channel, InstrumentIO, PollingDriver
from gateway.testing import RecordingIO


class SwallowingDriver(PollingDriver):
    """Every poll awaits a "library call"; the first cancellation it sees becomes a normal
    return."""

    poll_interval_s = 0.001

    def __init__(self) -> None:
        self.in_call = asyncio.Event()
        self.swallowed = 0

    def channels(self) -> Sequence[Channel]:
        return [Channel("x", "1")]

    async def connect(self) -> None:
        return None

    async def poll(self, io: InstrumentIO) -> None:
        self.in_call.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1  # like wait_for when the inner future had just completed
        finally:
            self.in_call.clear()
        io.output("x").publish(1.0)


@pytest.mark.asyncio
async def test_a_cancellation_swallowed_by_a_library_still_stops_the_poll_loop() -> None:
    driver = SwallowingDriver()
    task = asyncio.create_task(driver.run(RecordingIO(driver)), name="test.polling")
    await driver.in_call.wait()  # the task is now suspended inside the library call
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    if not done:  # without the fix: the second cancellation gets through
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert driver.swallowed == 1
    assert done and task.cancelled(), "the driver went on polling after its cancellation"
