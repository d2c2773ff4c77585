"""Store-and-forward through the real runtime and store, with an upstream that can be taken
down: nothing committed is missing upstream (de-duplicated on (signal, seq)), the backlog is
flagged historical, and retention drops are exactly what is missing."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import running, wait_for, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict
from test_runtime import Counter, Options

from gateway import PluginContext, Registry, Sample, build_registry, hookimpl, load_plan
from gateway.runtime import Gateway
from gateway.runtime.forward import SinkState
from gateway.runtime.ranges import IdRanges
from gateway.store import SampleStore
from plugins.jsonl_file import plugin as jsonl_file


class UpstreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concurrency: int = 4


class Upstream:
    """A forwarding sink standing in for a broker that can go down: while ``up`` is false,
    every forward fails (like a lost connection); otherwise it records what it acknowledges."""

    def __init__(self, options: UpstreamOptions, context: PluginContext) -> None:
        self.max_concurrent_forwards = options.concurrency
        self.up = True
        self.received: list[tuple[Sample, bool]] = []
        self.calls = 0
        # When set, backlog pages after the first one (the probe that brings the sink back up)
        # wait until a live batch was acknowledged: a forwarder that served its backlog before
        # live data would never get there.
        self.history_waits_for_live: asyncio.Event | None = None
        self._historical_forwards = 0
        self.forwards: list[tuple[bool, list[Sample]]] = []  # every forward acknowledged
        # Historical forwards (1, 2, ... counted while up) that fail, with the connection.
        self.fail_historical: set[int] = set()
        self._historical_calls = 0
        self._connection = 0  # a failure ends the "connection": every forward begun on it fails
        self._lost = -1  # the connection a failing forward is on: those sent after it fail too
        self.injected = 0  # failures of fail_historical that happened
        # Loop steps a failing forward takes to fail: the loss is seen a little later (the
        # forwards sent before it are acknowledged meanwhile, and those after it fail).
        self.failure_steps = 0

    async def __aenter__(self) -> Upstream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, samples: Sequence[Sample]) -> None:
        await self.forward(samples, False)

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        self.calls += 1
        connection = self._connection
        after_loss = connection == self._lost
        fail = False
        if historical and self.up:
            self._historical_calls += 1
            fail = self._historical_calls in self.fail_historical
            if fail:
                self._lost = connection
        await asyncio.sleep(0)  # an acknowledgement takes a round trip
        if not self.up:
            raise ConnectionError("broker unreachable")
        if connection != self._connection or after_loss:
            raise ConnectionError("connection lost")
        if historical and fail:
            for _ in range(self.failure_steps):
                await asyncio.sleep(0)
            self.injected += 1
            self._connection += 1  # as on one TCP connection: those sent after it fail too
            raise ConnectionError("connection lost")
        gate = self.history_waits_for_live
        if gate is not None and historical:
            self._historical_forwards += 1
            if self._historical_forwards > 1:
                await gate.wait()
        self.received.extend((s, historical) for s in samples)
        self.forwards.append((historical, list(samples)))
        if gate is not None and not historical:
            gate.set()

    def seen(self) -> set[tuple[str, int]]:
        return {(s.signal, s.seq) for s, _ in self.received}


class Plugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("counter", Counter, Options)

    @hookimpl
    def pat_gateway_register_sinks(self, registry: Registry) -> None:
        registry.add_sink("upstream", Upstream, UpstreamOptions)


def make_plan(tmp_path: Path, instruments: list[dict[str, Any]] | None = None, **sink: Any) -> Any:
    config = {
        "area": "t",
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 10},
        "instruments": instruments
        or [{"id": f"c{i}", "driver": "counter", "backoff": {"initial_s": 0.05}} for i in range(3)],
        "sinks": [
            {
                "id": "up",
                "type": "upstream",
                "retry": {"initial_s": 0.02, "max_s": 0.1},
                **sink,
            },
            {"id": "lines", "type": "jsonl_file", "options": {"path": "lines.jsonl"}},
        ],
        "data_dir": str(tmp_path / "data"),
    }
    registry = build_registry([Plugin(), jsonl_file], entry_points=False)
    return load_plan(write_config(tmp_path / "g.yaml", config), registry)


def committed(tmp_path: Path) -> set[tuple[str, int]]:
    store = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        return {(s.signal, s.seq) for s in store.samples()}
    finally:
        store.close()


def losses(tmp_path: Path) -> list[Any]:
    store = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        return store.losses()
    finally:
        store.close()


def upstream(plan: Any) -> Upstream:
    sink = plan.sinks[0].instance
    assert isinstance(sink, Upstream)
    return sink


@pytest.mark.asyncio
async def test_an_outage_loses_nothing_and_the_backlog_comes_flagged_historical(
    tmp_path: Path,
) -> None:
    plan = make_plan(tmp_path, batch_max_samples=10)
    sink = upstream(plan)
    async with running(plan) as (gateway, _):
        forwarder = gateway.forwarders[0]
        await wait_for(lambda: forwarder.stats.delivered >= 50, what="live delivery")
        assert forwarder.stats.state is SinkState.UP
        sink.up = False
        await wait_for(lambda: forwarder.stats.state is SinkState.DOWN, what="the sink is down")
        await wait_for(lambda: forwarder.stats.backlog >= 300, what="a backlog builds up")
        assert forwarder.stats.failures >= 1
        outage_end = len(sink.received)
        backlog_pages = forwarder.stats.backlog // 10
        assert backlog_pages >= 30
        # Live data resumes while the backlog drains: backlog pages beyond the probe wait for
        # a live batch, so this only drains if the forwarder keeps a slot for live data.
        sink.history_waits_for_live = asyncio.Event()
        sink.up = True
        # Ids are the commit order, 1..committed: all of the outage is delivered once the
        # cursor passes what was committed by now.
        up_to = gateway.stats.committed
        await wait_for(lambda: forwarder.cursor >= up_to, what="the backlog drains")
        after = sink.received[outage_end:]
        flags = [historical for _, historical in after]
        assert True in flags and False in flags
        assert flags.index(False) < len(flags) - 1 - flags[::-1].index(True)
    summary = gateway_summary(gateway)
    store_view = committed(tmp_path)
    assert sink.seen() == store_view, "every committed sample reached the upstream"
    assert summary["historical"] >= 300
    # Per signal, the backlog kept seq order.
    for signal in {s.signal for s, _ in sink.received}:
        backlog = [s.seq for s, h in sink.received if h and s.signal == signal]
        assert backlog == sorted(backlog)
    # The JSON-lines sink never went down: every sample once, none historical.
    lines = [json.loads(x) for x in (tmp_path / "lines.jsonl").read_text().splitlines()]
    assert {(x["signal"], x["seq"]) for x in lines} == store_view
    assert len(lines) == len(store_view) and not any("historical" in x for x in lines)


def gateway_summary(gateway: Gateway) -> dict[str, int]:
    stats = gateway.forwarders[0].stats
    return {"historical": stats.delivered_historical, "delivered": stats.delivered}


@pytest.mark.asyncio
async def test_a_restart_resumes_from_the_saved_cursor(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    upstream(plan).up = False
    async with running(plan) as (gateway, _):
        await wait_for(lambda: gateway.stats.committed >= 200, what="samples while down")
    first_run = committed(tmp_path)
    plan = make_plan(tmp_path)
    sink = upstream(plan)
    async with running(plan) as (gateway, _):
        await wait_for(lambda: first_run <= sink.seen(), what="the first run's samples")
        await wait_for(lambda: gateway.stats.committed >= 100, what="live samples")
    assert sink.seen() == committed(tmp_path)
    assert all(historical for s, historical in sink.received if (s.signal, s.seq) in first_run)
    # Nothing before the restart was sent twice by the second run.
    assert len(sink.received) == len(sink.seen())


@pytest.mark.asyncio
async def test_a_new_sink_starts_at_the_end_of_the_store_or_at_its_beginning(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    plan = make_plan(tmp_path / "a")
    async with running(plan) as (gateway, _):
        await wait_for(lambda: gateway.stats.committed >= 100, what="history")
    history = committed(tmp_path / "a")
    for start_from, expect_history in (("latest", False), ("earliest", True)):
        plan = make_plan(tmp_path / "a", id=f"new-{start_from}", start_from=start_from)
        sink = upstream(plan)
        async with running(plan) as (gateway, _):
            await wait_for(lambda: len(sink.received) >= 30, what="delivery")  # noqa: B023
        got_history = bool(history & sink.seen())
        assert got_history is expect_history, start_from
        if expect_history:
            assert history <= sink.seen()


@pytest.mark.asyncio
async def test_retention_drop_oldest_drops_exactly_what_is_missing(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, retention={"max_samples": 200, "policy": "drop_oldest"})
    sink = upstream(plan)
    sink.up = False
    async with running(plan) as (gateway, _):
        forwarder = gateway.forwarders[0]
        await wait_for(lambda: forwarder.stats.dropped >= 300, what="retention drops")
        sink.up = True
        up_to = gateway.stats.committed
        await wait_for(lambda: forwarder.cursor >= up_to, what="the rest is delivered")
    store_view = committed(tmp_path)
    missing = store_view - sink.seen()
    recorded = [x for x in losses(tmp_path) if "sink 'up'" in x.reason]
    assert len(missing) == forwarder.stats.dropped == sum(x.count for x in recorded)
    # The oldest were given up: every missing sample is older (per signal) than any delivered.
    for signal in {s for s, _ in store_view}:
        gone = [seq for s, seq in missing if s == signal]
        kept = [seq for s, seq in sink.seen() if s == signal]
        if gone and kept:
            assert max(gone) < min(kept)
    assert all("retention bound of 200 undelivered samples" in x.reason for x in recorded)


@pytest.mark.asyncio
async def test_retention_stop_holds_new_samples_back_until_the_sink_catches_up(
    tmp_path: Path,
) -> None:
    plan = make_plan(tmp_path, retention={"max_samples": 150, "policy": "stop"})
    sink = upstream(plan)
    sink.up = False
    async with running(plan) as (gateway, _):
        await wait_for(lambda: gateway.stats.failed_commits >= 3, what="commits refused")
        await wait_for(lambda: gateway.writer.waiting >= 100, what="samples held back")
        sink.up = True
        forwarder = gateway.forwarders[0]
        await wait_for(lambda: gateway.stats.last_error is None, what="commits resume")
        up_to = gateway.stats.committed
        await wait_for(lambda: forwarder.cursor >= up_to, what="delivery")
    # Everything committed reached the upstream; the pause cost no sample (the pending
    # samples waited in memory and were committed afterwards).
    assert sink.seen() == committed(tmp_path)
    assert gateway.stats.committed == len(committed(tmp_path))


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 60), st.integers(0, 12)),
        max_size=40,
    )
)
@settings(max_examples=300, deadline=None)
def test_id_ranges_behave_like_a_set(operations: list[tuple[bool, int, int]]) -> None:
    ranges, model = IdRanges(), set()
    for add, first, length in operations:
        last = first + length - 1
        if add:
            ranges.add(first, last)
            model |= set(range(first, last + 1))
        else:
            ranges.remove(first, last)
            model -= set(range(first, last + 1))
        pairs = list(ranges)
        assert all(b + 1 < a2 for (_, b), (a2, _) in itertools.pairwise(pairs))
        assert {i for a, b in pairs for i in range(a, b + 1)} == model
    assert ranges.count(1, 80) == len(model)
    prefix = 0
    while prefix + 1 in model:
        prefix += 1
    assert ranges.prefix_end() == prefix
    other = IdRanges([(5, 9)])
    gaps = {i for a, b in ranges.gaps(1, 80, other) for i in range(a, b + 1)}
    assert gaps == set(range(1, 81)) - model - set(range(5, 10))


def instruments(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"c{i}", "driver": "counter", "backoff": {"initial_s": 0.05}} for i in range(count)
    ]


async def outage_backlog(gateway: Gateway, sink: Upstream, samples: int) -> int:
    """Take the upstream down until ``samples`` are waiting; bring it back; return how many
    forwards it had acknowledged before it came back."""
    forwarder = gateway.forwarders[0]
    await wait_for(lambda: forwarder.stats.state is SinkState.UP, what="the sink up")
    sink.up = False
    await wait_for(lambda: forwarder.stats.state is SinkState.DOWN, what="the sink is down")
    await wait_for(lambda: forwarder.stats.backlog >= samples, what="a backlog builds up")
    before = len(sink.forwards)
    sink.up = True
    return before


def assert_backlog_complete_and_in_order(tmp_path: Path, sink: Upstream) -> None:
    assert sink.seen() == committed(tmp_path), "every committed sample reached the upstream"
    seen: set[tuple[str, int]] = set()
    by_signal: dict[str, list[int]] = {}
    for sample, historical in sink.received:  # first copies, as a de-duplicating consumer
        if (sample.signal, sample.seq) not in seen:
            seen.add((sample.signal, sample.seq))
            if historical:
                by_signal.setdefault(sample.signal, []).append(sample.seq)
    assert by_signal
    for signal, seqs in by_signal.items():
        assert seqs == sorted(seqs), f"{signal}: backlog out of seq order"


@pytest.mark.asyncio
async def test_a_backlog_is_forwarded_regrouped_by_signal(tmp_path: Path) -> None:
    # A page of commit order holds every signal (each instrument's samples interleave); the
    # backlog goes out in windows regrouped by signal, so a forward holds fewer signals (for
    # MQTT with a topic per signal: fewer, longer arrays for the same samples).
    plan = make_plan(tmp_path, batch_max_samples=30, instruments=instruments(3))
    sink = upstream(plan)
    async with running(plan) as (gateway, _):
        forwarder = gateway.forwarders[0]
        start = await outage_backlog(gateway, sink, 600)
        up_to = gateway.stats.committed
        await wait_for(lambda: forwarder.cursor >= up_to, what="the backlog drains")
        backlog = [samples for historical, samples in sink.forwards[start:] if historical]
    full = [samples for samples in backlog if len(samples) == 30]
    assert len(full) >= 15
    signals_per_forward = [len({s.signal for s in samples}) for samples in full]
    # In commit order every full page holds all 3 signals; regrouped, about 1.5.
    assert sum(signals_per_forward) / len(full) <= 2.2, signals_per_forward
    assert_backlog_complete_and_in_order(tmp_path, sink)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("failing", "steps", "concurrency"),
    [({2}, 0, 4), ({3}, 0, 4), ({2, 6}, 0, 4), ({3}, 1, 3), ({3}, 2, 3), ({3}, 3, 3)],
)
async def test_a_failed_part_of_a_backlog_window_sends_the_window_again(
    tmp_path: Path, failing: set[int], steps: int, concurrency: int
) -> None:
    # Historical forward 1 is the probe that brings the sink up; then windows of three parts.
    # A part that fails while the others are acknowledged: nothing is skipped, the window comes
    # again (its acknowledged parts as duplicates, counted as resent), per-signal order holds.
    # With ``steps``, the failure is seen that many loop steps late: with two, the window's
    # part created on the slot the first part freed runs just after the failure, and must not
    # be handed to the sink then (on a new connection it would be acknowledged before the
    # failed part is sent again: a consumer would see that signal's backlog out of seq order).
    plan = make_plan(
        tmp_path,
        batch_max_samples=30,
        instruments=instruments(3),
        options={"concurrency": concurrency},
    )
    sink = upstream(plan)
    sink.fail_historical = failing
    sink.failure_steps = steps
    async with running(plan) as (gateway, _):
        forwarder = gateway.forwarders[0]
        await outage_backlog(gateway, sink, 600)
        up_to = gateway.stats.committed
        await wait_for(lambda: forwarder.cursor >= up_to, what="the backlog drains")
        assert sink.injected == len(failing)
        assert forwarder.stats.resent > 0
    assert_backlog_complete_and_in_order(tmp_path, sink)
