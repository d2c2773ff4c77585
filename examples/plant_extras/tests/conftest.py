"""What the tests share: a ``ramp`` driver (a plugin object handed to ``run_gateway``, not
installed) publishing 1, 2, 3... mL/min, and a wait for rows in a CSV file."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from gateway import Channel, InstrumentIO, PluginContext, PollingDriver, Quality, Registry, hookimpl


class RampOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bad_from: float | None = None  # from this value on: bad samples ("sensor fault")


class Ramp(PollingDriver):
    def __init__(self, options: RampOptions, context: PluginContext) -> None:
        super().__init__(context)
        self.options = options
        self.value = 1.0

    def channels(self) -> Sequence[Channel]:
        return [Channel("flow", "mL/min")]

    async def connect(self) -> None:
        pass

    async def poll(self, io: InstrumentIO) -> None:
        if self.options.bad_from is not None and self.value >= self.options.bad_from:
            io.output("flow").publish(None, quality=Quality.BAD, reason="sensor fault")
        else:
            io.output("flow").publish(self.value)
        self.value += 1


class RampPlugin:
    PAT_GATEWAY_API = "1.0"

    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("ramp", Ramp, RampOptions, "1, 2, 3... mL/min (for tests)")


def rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


async def wait_for_rows(path: Path, count: int, within: float = 10.0) -> None:
    """Wait until ``path`` holds ``count`` rows (the sink writes after the store commits)."""
    async with asyncio.timeout(within):
        # The file is written by the sink's worker thread: there is no event to wait on.
        while len(rows(path)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
