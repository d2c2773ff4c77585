"""The runtime with small inline plugins: sinks that misbehave, drivers that publish nonsense,
runs that end by cancellation. Each checks the store against what was published."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import running, wait_for, write_config
from pydantic import BaseModel, ConfigDict

from gateway import (
    Channel,
    InstrumentError,
    InstrumentIO,
    PluginContext,
    Quality,
    Registry,
    Sample,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.runtime import Gateway
from gateway.store import SampleStore
from gateway.store.trends import TrendReader, trends_path


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: str = "ok"


class Counter:
    """Publishes 0, 1, 2, … every 10 ms; in 'nonsense' mode, misuses the publish API."""

    def __init__(self, options: Options, context: PluginContext) -> None:
        self.mode = options.mode

    def channels(self) -> Sequence[Channel]:
        return [Channel("count", "1")]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        out = io.output("count")
        n = 0
        while True:
            if self.mode == "nonsense" and n % 4 == 1:
                out.publish(float(n), quality="maybe")  # type: ignore[arg-type]
            elif self.mode == "nonsense" and n % 4 == 2:
                out.publish(float(n), source_ts=1_700_000_000)  # seconds, not ns
            elif self.mode == "nonsense" and n % 4 == 3:
                out.publish(math.nan, quality=Quality.UNCERTAIN, reason="probe drift")
            else:
                out.publish(float(n))
            n += 1
            await asyncio.sleep(0.01)


class SinkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    behaviour: str = "ok"


class Recorder:
    """A sink that records, hangs or fails, as told."""

    received: list[Sample]

    def __init__(self, options: SinkOptions, context: PluginContext) -> None:
        self.behaviour = options.behaviour
        self.received = []

    async def __aenter__(self) -> Recorder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, samples: Sequence[Sample]) -> None:
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        if self.behaviour == "fail":
            raise RuntimeError("upstream refused")
        if self.behaviour == "slow":
            await asyncio.sleep(0.3)
        self.received.extend(samples)


class InlinePlugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("counter", Counter, Options)
        registry.add_driver("stubborn", Stubborn, StubbornOptions)

    @hookimpl
    def pat_gateway_register_sinks(self, registry: Registry) -> None:
        registry.add_sink("recorder", Recorder, SinkOptions)


def inline_plan(
    tmp_path: Path, instrument: dict[str, Any], sinks: list[dict[str, Any]] | None = None
) -> Any:
    """A plan with one instrument of the inline drivers, the inline sinks and a fresh store."""
    config = {
        "area": "t",
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [instrument],
        "sinks": sinks or [],
    }
    registry = build_registry([InlinePlugin()], entry_points=False)
    return load_plan(write_config(tmp_path / "g.yaml", config), registry)


def plan(tmp_path: Path, mode: str = "ok", sinks: list[dict[str, Any]] | None = None) -> Any:
    return inline_plan(tmp_path, {"id": "c", "driver": "counter", "options": {"mode": mode}}, sinks)


def stored(tmp_path: Path) -> list[Sample]:
    store = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        return list(store.samples())
    finally:
        store.close()


@pytest.mark.asyncio
async def test_hanging_and_failing_sinks_never_stall_the_store(tmp_path: Path) -> None:
    sinks = [
        {
            "id": "hangs",
            "type": "recorder",
            "options": {"behaviour": "hang"},
            "send_timeout_s": 0.2,
        },
        {"id": "fails", "type": "recorder", "options": {"behaviour": "fail"}},
        {"id": "works", "type": "recorder"},
    ]
    the_plan = plan(tmp_path, sinks=sinks)
    async with running(the_plan) as (gateway, _):
        await wait_for(lambda: gateway.stats.committed >= 100, what="commits go on")
        await wait_for(lambda: gateway.feeders[0].lost > 0, what="the hanging sink times out")
    samples = stored(tmp_path)
    hangs, fails, works = gateway.feeders
    working_sink = the_plan.sinks[2].instance
    # The store has everything; the healthy sink got exactly what was committed, in order.
    assert [(s.signal, s.seq) for s in working_sink.received] == [
        (s.signal, s.seq) for s in samples
    ]
    assert works.delivered == len(samples) and works.lost == 0
    # The broken sinks lost what they did not take, and every such sample is counted.
    assert fails.delivered == 0 and fails.lost == len(samples)
    assert hangs.delivered == 0 and 0 < hangs.lost <= len(samples)


@pytest.mark.asyncio
async def test_publish_misuse_becomes_bad_samples_with_reasons(tmp_path: Path) -> None:
    async with running(plan(tmp_path, mode="nonsense")) as (gateway, _):
        await wait_for(lambda: gateway.stats.committed >= 12)
    samples = stored(tmp_path)
    by_kind = {s.seq % 4: s for s in samples[:4]}
    assert by_kind[0].quality is Quality.GOOD and by_kind[0].value == 0.0
    assert by_kind[1].quality is Quality.BAD
    assert by_kind[1].reason == "invalid quality 'maybe'"
    assert by_kind[1].value == 1.0  # the reading itself is kept
    assert by_kind[2].quality is Quality.BAD
    assert by_kind[2].reason.startswith("invalid source timestamp 1700000000")
    assert by_kind[2].source_ts == by_kind[2].gateway_ts
    assert by_kind[3].quality is Quality.BAD
    assert by_kind[3].value is None
    assert by_kind[3].reason == "non-finite value nan; probe drift"
    assert [s.seq for s in samples] == list(range(len(samples)))


@pytest.mark.asyncio
async def test_cancelled_run_still_commits_everything_published(tmp_path: Path) -> None:
    gateway = Gateway(plan(tmp_path))
    task = asyncio.create_task(gateway.run(asyncio.Event()), name="test.gateway")
    await gateway.started.wait()
    await wait_for(lambda: gateway.outputs[0].seq >= 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    samples = stored(tmp_path)
    assert len(samples) == gateway.outputs[0].seq  # nothing published was lost
    assert [s.seq for s in samples] == list(range(len(samples)))


class StubbornOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ignore_cancel_s: float = 0.0
    swallow: bool = False


class Stubborn:
    """Publishes every 10 ms; on cancellation either turns it into an InstrumentError
    (``swallow``) or keeps publishing for ``ignore_cancel_s`` before giving in."""

    def __init__(self, options: StubbornOptions, context: PluginContext) -> None:
        self.options = options
        self.done = asyncio.Event()

    def channels(self) -> Sequence[Channel]:
        return [Channel("x", "1")]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        out = io.output("x")
        try:
            while True:
                try:
                    out.publish(1.0)
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    if self.options.swallow:
                        raise InstrumentError("vendor SDK: operation aborted") from None
                    loop = asyncio.get_running_loop()
                    until = loop.time() + self.options.ignore_cancel_s
                    while loop.time() < until:
                        out.publish(2.0)
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.sleep(0.01)
                    raise
        finally:
            self.done.set()


def stubborn_plan(tmp_path: Path, **options: Any) -> Any:
    return inline_plan(tmp_path, {"id": "s", "driver": "stubborn", "options": options})


@pytest.mark.asyncio
async def test_driver_turning_cancel_into_its_own_error_still_stops(tmp_path: Path) -> None:
    plan = stubborn_plan(tmp_path, swallow=True)
    async with running(plan) as (gateway, _):
        await wait_for(lambda: gateway.outputs[0].seq >= 5)
    assert gateway.runners[0].state.value == "stopped"
    assert len(stored(tmp_path)) == gateway.outputs[0].seq


@pytest.mark.asyncio
async def test_driver_ignoring_cancel_cannot_hold_up_the_final_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.runtime.supervisor.STOP_TIMEOUT_S", 0.2)
    plan = stubborn_plan(tmp_path, ignore_cancel_s=1.0)
    driver = plan.instruments[0].driver
    async with running(plan) as (gateway, _):
        await wait_for(lambda: gateway.outputs[0].seq >= 5)
    # The run ended after ~0.2 s of waiting, while the driver was still publishing.
    assert not driver.done.is_set()
    committed = gateway.stats.committed
    await wait_for(driver.done.is_set, what="the stubborn driver gives in")
    published = gateway.outputs[0].seq
    # Everything published was either committed or counted as dropped after the commit.
    assert committed + gateway.stats.dropped_late == published
    assert gateway.stats.dropped == gateway.stats.dropped_late > 0
    assert len(stored(tmp_path)) == committed


@pytest.mark.asyncio
async def test_cancelled_twice_still_commits_and_releases_the_store(tmp_path: Path) -> None:
    gateway = Gateway(plan(tmp_path))
    task = asyncio.create_task(gateway.run(asyncio.Event()), name="test.gateway")
    await gateway.started.wait()
    await wait_for(lambda: gateway.outputs[0].seq >= 20)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(stored(tmp_path)) == gateway.outputs[0].seq
    SampleStore(tmp_path / "s.sqlite").close()  # not locked any more


@pytest.mark.asyncio
async def test_samples_a_slow_sink_never_got_are_counted_at_shutdown(tmp_path: Path) -> None:
    sinks = [
        {"id": "slow", "type": "recorder", "options": {"behaviour": "slow"}, "send_timeout_s": 0.5}
    ]
    the_plan = plan(tmp_path, sinks=sinks)
    async with running(the_plan) as (gateway, _):
        await wait_for(lambda: gateway.stats.batches >= 10)
    feeder = gateway.feeders[0]
    assert feeder.delivered + feeder.lost == gateway.stats.committed
    assert feeder.lost > 0


class BindingRecorder(Recorder):
    """A sink that wants the signal list before it starts (as an OPC UA server does)."""

    bound: list[str]
    entered_after_bind = False

    def bind(self, signals: Sequence[Any]) -> None:
        self.bound = [s.id for s in signals]

    async def __aenter__(self) -> BindingRecorder:
        self.entered_after_bind = hasattr(self, "bound")
        return self


@pytest.mark.asyncio
async def test_a_sink_with_bind_learns_every_signal_before_it_starts(tmp_path: Path) -> None:
    class Plugin:
        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            registry.add_driver("counter", Counter, Options)

        @hookimpl
        def pat_gateway_register_sinks(self, registry: Registry) -> None:
            registry.add_sink("binding", BindingRecorder, SinkOptions)

    config = {
        "area": "t",
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [{"id": "c", "driver": "counter"}],
        "sinks": [{"id": "b", "type": "binding"}],
    }
    registry = build_registry([Plugin()], entry_points=False)
    built = load_plan(write_config(tmp_path / "g.yaml", config), registry)
    async with running(built) as (gateway, _task):
        await wait_for(lambda: gateway.stats.committed >= 3, what="samples")
    sink = built.sinks[0].instance
    assert sink.bound == ["t/c/count"] and sink.entered_after_bind


@pytest.mark.asyncio
async def test_a_running_gateway_keeps_trends_of_what_it_committed(tmp_path: Path) -> None:
    """store.trends (on by default): the ``store.trends`` task rolls up what was committed,
    and a trend read after the stop counts every committed sample once."""
    async with running(plan(tmp_path)) as (gateway, _):
        assert gateway.trends is not None
        trends = gateway.trends
        await wait_for(lambda: trends.stats.rolled_id >= 30, what="a roll-up")
        assert trends.stats.failing is None
    samples = stored(tmp_path)
    first, last = samples[0].gateway_ts, samples[-1].gateway_ts
    with TrendReader(tmp_path / "s.sqlite") as reader:
        got = reader.trend(["t/c/count"], first, last + 1, 1)["t/c/count"]
    assert sum(got.count) == len(samples) and got.behind == 0
    assert (got.lo, got.hi) == ([0.0], [float(len(samples) - 1)])


@pytest.mark.asyncio
async def test_trends_that_cannot_be_written_leave_the_samples_alone(tmp_path: Path) -> None:
    """A trends file that cannot be made (here a folder in its place): the failure is on
    /health's counters and the log; every sample is still committed."""
    trends_path(tmp_path / "s.sqlite").mkdir()
    async with running(plan(tmp_path)) as (gateway, _):
        assert gateway.trends is not None
        trends = gateway.trends
        await wait_for(lambda: trends.stats.failing, what="the failure")
        assert "trends file" in str(trends.stats.failing)
        await wait_for(lambda: gateway.outputs[0].seq >= 20)
    samples = stored(tmp_path)
    assert [s.seq for s in samples] == list(range(gateway.outputs[0].seq))


@pytest.mark.asyncio
async def test_store_trends_false_makes_no_trends_file(tmp_path: Path) -> None:
    config = {
        "area": "t",
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20, "trends": False},
        "instruments": [{"id": "c", "driver": "counter"}],
    }
    registry = build_registry([InlinePlugin()], entry_points=False)
    async with running(load_plan(write_config(tmp_path / "g.yaml", config), registry)) as (
        gateway,
        _,
    ):
        assert gateway.trends is None
        await wait_for(lambda: gateway.outputs[0].seq >= 5)
    assert not trends_path(tmp_path / "s.sqlite").exists()
