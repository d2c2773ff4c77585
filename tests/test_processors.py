"""Processors in the runtime, with small inline plugins: derived samples keep their input's
source time, failures become bad samples, chains work, shutdown processes every input, and a
configuration that wires them wrongly is refused with lines naming the field."""

from __future__ import annotations

import asyncio
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
    SignalKind,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.runtime import Gateway


class CounterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_tick: int = 1


class Counter:
    """Publishes 0, 1, 2, … (``per_tick`` of them) every 5 ms with a source time of its own (1 ms
    steps from 2026)."""

    EPOCH = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z

    def __init__(self, options: CounterOptions, context: PluginContext) -> None:
        self.per_tick = options.per_tick

    def channels(self) -> Sequence[Channel]:
        return [Channel("count", "1")]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        out = io.output("count")
        n = 0
        while True:
            for _ in range(self.per_tick):
                quality = Quality.UNCERTAIN if n % 10 == 9 else Quality.GOOD
                reason = "drift" if n % 10 == 9 else None
                out.publish(float(n), self.EPOCH + n * 1_000_000, quality, reason)
                n += 1
            await asyncio.sleep(0.005)


class ScaleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str
    factor: float = 2.0
    fail_every: int = 0
    unit: str = "1"
    want: str = "scalar"


class Scale:
    """Publishes input times factor (and raises on every ``fail_every``-th input)."""

    def __init__(self, options: ScaleOptions, context: PluginContext) -> None:
        self.options = options
        self.calls = 0
        self.bound: Mapping[str, Signal] = {}

    def inputs(self) -> Sequence[str]:
        return [self.options.input]

    def channels(self) -> Sequence[Channel]:
        return [Channel("scaled", self.options.unit), Channel("also", "1")]

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        signal = inputs[self.options.input]
        if signal.kind.value != self.options.want:
            raise ValueError(f"{signal.id} is a {signal.kind.value} signal, I want a spectrum")
        self.bound = inputs

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        self.calls += 1
        every = self.options.fail_every
        if every and self.calls % every == 0:
            raise ArithmeticError(f"input {sample.seq} is unlucky")
        if sample.value is None:
            io.output("scaled").publish(None, sample.source_ts, Quality.BAD, sample.reason)
            return
        io.output("scaled").publish(
            sample.value * self.options.factor, sample.source_ts, sample.quality, sample.reason
        )


class Plugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("counter", Counter, CounterOptions)

    @hookimpl
    def pat_gateway_register_processors(self, registry: Registry) -> None:
        registry.add_processor("scale", Scale, ScaleOptions)


def make_plan(tmp_path: Path, processors: list[dict[str, Any]]) -> Any:
    config = {
        "area": "t",
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [{"id": "c", "driver": "counter"}],
        "processors": processors,
    }
    registry = build_registry([Plugin()], entry_points=False)
    return load_plan(write_config(tmp_path / "g.yaml", config), registry)


def stored(tmp_path: Path) -> dict[str, list[Sample]]:
    return stored_by_signal(tmp_path / "s.sqlite")


async def run_until(the_plan: Any, inputs: int) -> Gateway:
    async with running(the_plan) as (gateway, _):
        await wait_for(lambda: gateway.outputs[0].seq >= inputs, what=f"{inputs} inputs")
    return gateway


@pytest.mark.asyncio
async def test_derived_samples_keep_the_input_time_and_every_input_is_processed(
    tmp_path: Path,
) -> None:
    the_plan = make_plan(
        tmp_path,
        [
            {"id": "double", "type": "scale", "options": {"input": "c/count"}},
            # Reads the first processor's output, by its full id, with a unit conversion.
            {
                "id": "chain",
                "type": "scale",
                "options": {"input": "t/double/scaled", "factor": 10, "unit": "%"},
                "signals": [{"id": "scaled", "unit": "1"}],
            },
        ],
    )
    assert [s.id for s in the_plan.signals] == [
        "t/c/count",
        "t/double/scaled",
        "t/double/also",
        "t/chain/scaled",
    ]
    gateway = await run_until(the_plan, 60)
    samples = stored(tmp_path)
    counts = samples["t/c/count"]
    doubled = samples["t/double/scaled"]
    chained = samples["t/chain/scaled"]
    # Shutdown processed everything published, through the chain, before the final commit.
    assert len(counts) == len(doubled) == len(chained) >= 60
    for c, d, x in zip(counts, doubled, chained, strict=True):
        assert d.source_ts == x.source_ts == c.source_ts
        assert d.value == 2 * c.value
        assert x.value == pytest.approx(20 * c.value / 100)  # % -> 1
        assert d.quality == x.quality == c.quality
        assert d.reason == c.reason
    assert [d.seq for d in doubled] == list(range(len(doubled)))
    assert "t/double/also" not in samples  # a channel never published has no samples
    assert gateway.processors[0].processed == len(counts)
    assert gateway.processors[0].failures == gateway.processors[0].skipped == 0


@pytest.mark.asyncio
async def test_a_failing_processor_publishes_bad_samples_and_goes_on(tmp_path: Path) -> None:
    the_plan = make_plan(
        tmp_path, [{"id": "p", "type": "scale", "options": {"input": "c/count", "fail_every": 4}}]
    )
    gateway = await run_until(the_plan, 40)
    samples = stored(tmp_path)
    counts = samples["t/c/count"]
    scaled = samples["t/p/scaled"]
    assert len(scaled) == len(counts)
    bad = [s for s in scaled if s.quality is Quality.BAD]
    assert len(bad) == len(counts) // 4 == gateway.processors[0].failures
    for s in bad:
        assert s.value is None
        assert s.reason.startswith("processor error: ArithmeticError('input ")
    # Every output of the processor says so, at the input's time.
    also = samples["t/p/also"]
    assert [s.source_ts for s in also] == [s.source_ts for s in bad]
    good = [s for s in scaled if s.quality is not Quality.BAD]
    by_ts = {c.source_ts: c for c in counts}
    assert all(s.value == 2 * by_ts[s.source_ts].value for s in good)


@pytest.mark.asyncio
async def test_a_slow_processor_skips_its_oldest_inputs_and_counts_them(tmp_path: Path) -> None:
    the_plan = make_plan(
        tmp_path,
        [{"id": "p", "type": "scale", "options": {"input": "c/count"}, "queue_max_samples": 3}],
    )
    gateway = Gateway(the_plan)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop), name="test.gateway")
    await gateway.started.wait()
    runner = gateway.processors[0]
    # Offer more than the queue holds at once, without yielding: the oldest are skipped.
    template = Sample("t/c/count", 1.0, "1", Counter.EPOCH, Counter.EPOCH, Quality.GOOD, 0)
    for i in range(10):
        runner.offer(template._replace(seq=10_000 + i))
    assert runner.skipped == 7 and runner.queued == 3
    stop.set()
    await task


def problems(tmp_path: Path, processors: list[dict[str, Any]]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        make_plan(tmp_path, processors)
    return list(caught.value.problems)


def test_wiring_mistakes_are_config_errors_naming_the_field(tmp_path: Path) -> None:
    lines = problems(tmp_path, [{"id": "p", "type": "scale", "options": {"input": "c/nothing"}}])
    assert len(lines) == 1
    assert lines[0].startswith(
        "processors[0].options: input 'c/nothing' is no signal of an instrument or an"
        " earlier processor (signals: t/c/count)"
    )
    # A processor cannot read a later one (no cycles, no forward references).
    lines = problems(
        tmp_path,
        [
            {"id": "a", "type": "scale", "options": {"input": "b/scaled"}},
            {"id": "b", "type": "scale", "options": {"input": "c/count"}},
        ],
    )
    assert lines[0].startswith("processors[0].options: input 'b/scaled' is no signal")
    lines = problems(
        tmp_path,
        [{"id": "p", "type": "scale", "options": {"input": "c/count", "want": "spectrum"}}],
    )
    assert lines == ["processors[0].options: t/c/count is a scalar signal, I want a spectrum"]
    lines = problems(
        tmp_path, [{"id": "p", "type": "scale", "options": {"input": "c/count", "unit": "furlong"}}]
    )
    assert len(lines) == 1 and lines[0].startswith("processors[0].options: channel 'scaled': ")
    lines = problems(tmp_path, [{"id": "c", "type": "scale", "options": {"input": "c/count"}}])
    assert lines == [
        "processors[0].id: duplicate id 'c': instruments[0] has it (instruments and processors"
        " name signals, so they share ids)"
    ]
    lines = problems(tmp_path, [{"id": "p", "type": "nope", "options": {}}])
    assert lines == ["processors[0].type: unknown processor 'nope' (known: scale)"]
    lines = problems(
        tmp_path,
        [{"id": "p", "type": "scale", "options": {"input": "c/count"}, "signals": [{"id": "x"}]}],
    )
    assert lines == [
        "processors[0].signals[0].id: processor type 'scale' has no channel 'x'"
        " (channels: scaled, also)"
    ]


def test_a_disabled_processor_is_checked_but_not_run(tmp_path: Path) -> None:
    the_plan = make_plan(
        tmp_path,
        [{"id": "p", "type": "scale", "enabled": False, "options": {"input": "c/count"}}],
    )
    assert the_plan.processors == ()
    assert [s.id for s in the_plan.signals] == ["t/c/count"]
    with pytest.raises(ConfigError):
        make_plan(
            tmp_path,
            [{"id": "p", "type": "scale", "enabled": False, "options": {"input": "c/none"}}],
        )


def test_signal_kinds_of_processor_outputs(tmp_path: Path) -> None:
    the_plan = make_plan(tmp_path, [{"id": "p", "type": "scale", "options": {"input": "c/count"}}])
    (pp,) = the_plan.processors
    assert pp.inputs == {"c/count": the_plan.signals[0]}
    assert {sp.signal.id: sp.signal.kind for sp in pp.signals} == {
        "t/p/scaled": SignalKind.SCALAR,
        "t/p/also": SignalKind.SCALAR,
    }
    assert all(sp.signal.instrument == "p" for sp in pp.signals)


@pytest.mark.asyncio
async def test_health_and_metrics_show_each_processor(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from gateway.metrics import health_report, new_registry

    the_plan = make_plan(
        tmp_path, [{"id": "p", "type": "scale", "options": {"input": "c/count", "fail_every": 2}}]
    )
    async with running(the_plan) as (gateway, _):
        await wait_for(lambda: gateway.processors[0].failures >= 3, what="failures")
        report = health_report(gateway, 1.0)["processors"]["p"]
        text = generate_latest(new_registry(gateway)).decode()
    assert report["processed"] >= 6 and report["failures"] >= 3 and report["skipped"] == 0
    assert report["last_error"].startswith("processor error: ArithmeticError(")
    assert 'patgw_processor_failures_total{processor="p"}' in text
    processed = [
        line
        for line in text.splitlines()
        if line.startswith('patgw_processor_inputs_processed_total{processor="p"}')
    ]
    assert len(processed) == 1 and float(processed[0].split()[-1]) >= 6
