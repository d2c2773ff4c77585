"""Processors at the edges of a run (found by review): a processor failing half way, runs
ended by cancellation, a driver that ignores being stopped, restarts, disabled sources."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import running, stored_by_signal, wait_for, write_config
from pydantic import BaseModel, ConfigDict

from gateway import (
    Channel,
    ConfigError,
    InstrumentIO,
    PluginContext,
    ProcessorIO,
    Quality,
    Registry,
    Sample,
    Signal,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.runtime import Gateway

EPOCH = 1_767_225_600_000_000_000


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Idle:
    """A driver that publishes nothing by itself (the test publishes on its output)."""

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        pass

    def channels(self) -> Sequence[Channel]:
        return [Channel("count", "1")]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        await asyncio.Event().wait()


class Stubborn:
    """A driver that ignores cancellation and keeps publishing for a while (a misbehaving
    vendor driver; the supervisor documents it must not hold up the final commit)."""

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        pass

    def channels(self) -> Sequence[Channel]:
        return [Channel("count", "1")]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        out = io.output("count")
        n = 0
        loop = asyncio.get_running_loop()
        stop_at = None
        while True:
            try:
                out.publish(float(n), EPOCH + n * 1_000_000)
                n += 1
                await asyncio.sleep(0.0002)
                if stop_at is not None and loop.time() > stop_at:
                    return
            except asyncio.CancelledError:
                stop_at = loop.time() + 0.5  # ignore it, keep publishing for 0.5 s


class HalfOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str


class PublishThenRaise:
    """Publishes 'a', then raises before publishing 'b' (a bug half way through process)."""

    def __init__(self, options: HalfOptions, context: PluginContext) -> None:
        self.options = options

    def inputs(self) -> Sequence[str]:
        return [self.options.input]

    def channels(self) -> Sequence[Channel]:
        return [Channel("a", "1"), Channel("b", "1")]

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        pass

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        io.output("a").publish(sample.value, sample.source_ts)
        raise RuntimeError("bug after the first output")


class Copy(PublishThenRaise):
    def process(self, sample: Sample, io: ProcessorIO) -> None:
        io.output("a").publish(sample.value, sample.source_ts)
        io.output("b").publish(sample.value, sample.source_ts)


class SlowCopy(Copy):
    def process(self, sample: Sample, io: ProcessorIO) -> None:
        time.sleep(0.0005)
        super().process(sample, io)


class Plugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("idle", Idle, NoOptions)
        registry.add_driver("stubborn", Stubborn, NoOptions)

    @hookimpl
    def pat_gateway_register_processors(self, registry: Registry) -> None:
        registry.add_processor("halfraise", PublishThenRaise, HalfOptions)
        registry.add_processor("copy", Copy, HalfOptions)
        registry.add_processor("slowcopy", SlowCopy, HalfOptions)


def make_plan(tmp_path: Path, driver: str, ptype: str) -> Any:
    config = {
        "area": "t",
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [{"id": "c", "driver": driver}],
        "processors": [{"id": "p", "type": ptype, "options": {"input": "c/count"}}],
    }
    registry = build_registry([Plugin()], entry_points=False)
    return load_plan(write_config(tmp_path / "g.yaml", config), registry)


def stored(tmp_path: Path) -> dict[str, list[Sample]]:
    return stored_by_signal(tmp_path / "s.sqlite")


@pytest.mark.asyncio
async def test_a_failure_half_way_marks_only_the_outputs_not_yet_published(
    tmp_path: Path,
) -> None:
    """A processor that raises after publishing one output: that output keeps its value (one
    verdict per input), the other gets the error."""
    plan = make_plan(tmp_path, "idle", "halfraise")
    async with running(plan) as (gateway, _):
        gateway.outputs[0].publish(1.0, EPOCH)
        await wait_for(lambda: gateway.processors[0].processed >= 1)
    samples = stored(tmp_path)
    (a,) = samples["t/p/a"]
    assert (a.value, a.quality, a.source_ts) == (1.0, Quality.GOOD, EPOCH)
    (b,) = samples["t/p/b"]
    assert (b.value, b.quality, b.source_ts) == (None, Quality.BAD, EPOCH)
    assert b.reason == "processor error: RuntimeError('bug after the first output')"


@pytest.mark.asyncio
async def test_a_cancelled_run_still_derives_every_committed_input(tmp_path: Path) -> None:
    """A run that ends by cancellation (or any error ending the TaskGroup) processes what is
    queued before its final commit."""
    plan = make_plan(tmp_path, "idle", "slowcopy")
    gateway = Gateway(plan)
    task = asyncio.create_task(gateway.run(asyncio.Event()), name="test.gateway")
    await gateway.started.wait()
    for n in range(500):
        gateway.outputs[0].publish(float(n), EPOCH + n)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    samples = stored(tmp_path)
    runner = gateway.processors[0]
    assert len(samples["t/c/count"]) == 500
    assert len(samples["t/p/a"]) == len(samples["t/p/b"]) == 500
    assert (runner.processed, runner.skipped, runner.queued) == (500, 0, 0)


@pytest.mark.asyncio
async def test_inputs_a_stubborn_driver_publishes_after_the_drain_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.runtime.supervisor as supervisor

    monkeypatch.setattr(supervisor, "STOP_TIMEOUT_S", 0.05)
    plan = make_plan(tmp_path, "stubborn", "copy")
    async with running(plan) as (gateway, _):
        await wait_for(lambda: gateway.outputs[0].seq >= 20)
    # The stubborn driver outlives the run by 0.5 s: let it end rather than leak its task.
    await wait_for(
        lambda: not any(t.get_name() == "instrument.c" for t in asyncio.all_tasks()),
        what="the stubborn driver ends",
    )
    samples = stored(tmp_path)
    raw = samples["t/c/count"]
    derived = {s.source_ts for s in samples["t/p/a"]}
    missing = [s.seq for s in raw if s.source_ts not in derived]
    runner = gateway.processors[0]
    # Committed inputs without a derived value exist only as counted skips.
    assert runner.skipped >= len(missing), (
        f"{len(missing)} committed inputs have no derived sample and are counted nowhere"
        f" (seqs {missing[:5]}...; skipped={runner.skipped}, queued={runner.queued})"
    )


@pytest.mark.asyncio
async def test_processor_seq_continues_over_a_restart(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, "idle", "copy")
    for run in range(2):
        async with running(plan) as (gateway, _):
            for n in range(3):
                gateway.outputs[0].publish(float(n), EPOCH + run * 10 + n)
            await wait_for(lambda: gateway.processors[0].processed >= 3)
    a = stored(tmp_path)["t/p/a"]
    assert [s.seq for s in a] == list(range(6))


def test_an_instrument_and_its_processor_can_be_disabled_together(tmp_path: Path) -> None:
    """enabled: false is 'keep it configured but idle': taking the Raman and its soft sensor
    out of service together is valid; a processor left enabled on a disabled source is not."""
    config: dict[str, Any] = {
        "area": "t",
        "store": {"path": str(tmp_path / "s.sqlite")},
        "instruments": [{"id": "c", "driver": "idle", "enabled": False}],
        "processors": [
            {"id": "p", "type": "copy", "enabled": False, "options": {"input": "c/count"}}
        ],
    }
    registry = build_registry([Plugin()], entry_points=False)
    plan = load_plan(write_config(tmp_path / "g.yaml", config), registry)
    assert plan.processors == () and plan.signals == []
    config["processors"][0]["enabled"] = True
    with pytest.raises(ConfigError) as caught:
        load_plan(write_config(tmp_path / "g.yaml", config), registry)
    assert list(caught.value.problems) == [
        "processors[0].options: input 'c/count' (t/c/count) comes from 'c', which is disabled"
        " (disable this processor too)"
    ]
