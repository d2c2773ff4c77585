"""Start-up and stop of the runtime (issue 16, decision 0030), in process with inline plugins.

* Sinks are entered beside the running instruments: one slow to start (as the OPC UA server
  building its address space) delays no reading, and once up it is given everything committed
  meanwhile — a live sink from its queue, a store-and-forward sink from its cursor.
* A sample a driver publishes after the final commit (it ignored its cancellation) is recorded
  in the store as a loss with its seq range, and its seq number is never handed out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, running, stored_by_signal, wait_for, write_config
from pydantic import BaseModel, ConfigDict

from gateway import (
    Channel,
    GatewayError,
    InstrumentIO,
    PluginContext,
    Registry,
    Sample,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.metrics import is_ready
from gateway.store import SampleStore


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ticker:
    """Publishes 0, 1, 2… every 10 ms. Told to (``stubborn``), it ignores its cancellation
    and publishes on until :attr:`released` is set, then gives in."""

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        self.stubborn = False
        self.released = asyncio.Event()
        self.after_cancel = 0  # samples published since it was cancelled
        self.wanted = 0  # ... until `enough` is set
        self.enough = asyncio.Event()
        self.done = asyncio.Event()

    def channels(self) -> Sequence[Channel]:
        return [Channel("n", "1")]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        out = io.output("n")
        n = 0
        try:
            while True:
                try:
                    out.publish(float(n))
                    n += 1
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    if not self.stubborn:
                        raise
                    while not self.released.is_set():
                        out.publish(float(n))
                        n += 1
                        self.after_cancel += 1
                        if self.after_cancel >= self.wanted:
                            self.enough.set()
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.sleep(0.01)
                    raise
        finally:
            self.done.set()


class Gate:
    """Releases a sink's ``__aenter__`` (or ``__aexit__``) when the test says so."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered = asyncio.Event()


class SlowSink:
    """A live sink (``send``) whose start waits for :attr:`gate` (an OPC UA server that builds
    its address space); at its exit it lets a stubborn ticker publish a few late samples."""

    gate: Gate | None = None
    ticker: Ticker | None = None

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        self.received: list[Sample] = []

    async def __aenter__(self) -> Any:
        if self.gate is not None:
            await self.gate.open.wait()
            self.gate.entered.set()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        ticker = self.ticker
        if ticker is not None and ticker.stubborn:
            # After the final commit: what the ticker publishes now can no longer be committed.
            ticker.wanted = ticker.after_cancel + 5
            ticker.enough.clear()
            await ticker.enough.wait()
            ticker.released.set()
            await ticker.done.wait()

    async def send(self, samples: Sequence[Sample]) -> None:
        self.received.extend(samples)


class BrokenSink(SlowSink):
    """A sink that cannot start (its port is taken) once the test opens its gate."""

    async def __aenter__(self) -> Any:
        assert self.gate is not None
        await self.gate.open.wait()
        raise OSError(98, "Address already in use")


class SlowForwardingSink(SlowSink):
    """The same, fed from the store (store-and-forward)."""

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        self.received.extend(samples)


class Plugins:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("ticker", Ticker, NoOptions)

    @hookimpl
    def pat_gateway_register_sinks(self, registry: Registry) -> None:
        registry.add_sink("slow", SlowSink, NoOptions)
        registry.add_sink("slow_forwarding", SlowForwardingSink, NoOptions)
        registry.add_sink("broken", BrokenSink, NoOptions)


def make_plan(tmp_path: Path, sinks: list[dict[str, Any]]) -> Any:
    config = {
        "area": "t",
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [{"id": "i", "driver": "ticker"}],
        "sinks": sinks,
    }
    registry = build_registry([Plugins()], entry_points=False)
    return load_plan(write_config(tmp_path / "g.yaml", config), registry)


@pytest.mark.asyncio
async def test_a_sink_slow_to_start_delays_no_reading_and_catches_up(tmp_path: Path) -> None:
    plan = make_plan(
        tmp_path,
        [
            {"id": "live", "type": "slow", "options": {}},
            {"id": "forwarded", "type": "slow_forwarding", "options": {}, "start_from": "earliest"},
        ],
    )
    gate = Gate()
    live, forwarded = (sink.instance for sink in plan.sinks)
    live.gate = forwarded.gate = gate
    from gateway.runtime import Gateway

    gateway = Gateway(plan)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop), name="test.gateway")
    try:
        # The instruments run and the store commits while both sinks are still starting.
        await wait_for(lambda: gateway.writer is not None and gateway.stats.committed >= 20)
        assert not gate.entered.is_set()
        assert not gateway.started.is_set() and not is_ready(gateway)  # not every sink is up
        gate.open.set()
        await wait_for(gateway.started.is_set, what="every sink up")
        assert is_ready(gateway)
        await wait_for(lambda: len(live.received) >= gateway.stats.committed > 100)
    finally:
        stop.set()
        await task
    samples = stored_by_signal(tmp_path / "s.sqlite")["t/i/n"]
    assert samples[0].seq == 0
    # Each sink got every committed sample, the first ones included, in order.
    keys = [(s.signal, s.seq) for s in samples]
    assert [(s.signal, s.seq) for s in forwarded.received] == keys
    assert [(s.signal, s.seq) for s in live.received] == keys
    assert gateway.feeders[0].lost == 0


@pytest.mark.asyncio
async def test_samples_published_after_the_final_commit_are_recorded_as_losses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.runtime.supervisor.STOP_TIMEOUT_S", 0.2)
    plan = make_plan(tmp_path, [{"id": "gate", "type": "slow", "options": {}}])
    ticker = plan.instruments[0].driver
    ticker.stubborn = True
    plan.sinks[0].instance.ticker = ticker
    async with running(plan) as (gateway, _):
        await wait_for(lambda: gateway.stats.committed >= 20)
    assert ticker.done.is_set() and ticker.after_cancel >= 5
    published = gateway.outputs[0].seq
    store = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        committed = sorted(s.seq for s in store.samples())
        losses = store.losses()
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "s.sqlite")) as db:
        (next_seq,) = db.execute("SELECT next_seq FROM signal WHERE name = 't/i/n'").fetchone()
    lost = sorted(seq for x in losses for seq in range(x.first_seq, x.last_seq + 1))
    assert losses, "the late samples left no loss record"
    assert all("after the final commit" in x.reason for x in losses)
    assert sum(x.count for x in losses) == len(lost) == gateway.stats.dropped_late
    # Every published seq is committed or recorded as lost, once; none will be handed out again.
    assert sorted(committed + lost) == list(range(published))
    assert next_seq == published


@pytest.mark.asyncio
async def test_a_sink_that_cannot_start_ends_the_run_with_its_error_after_a_clean_stop(
    tmp_path: Path,
) -> None:
    plan = make_plan(tmp_path, [{"id": "upstream", "type": "broken", "options": {}}])
    gate = Gate()
    plan.sinks[0].instance.gate = gate
    from gateway.runtime import Gateway

    gateway = Gateway(plan)
    task = asyncio.create_task(gateway.run(asyncio.Event()), name="test.gateway")
    await wait_for(lambda: gateway.writer is not None and gateway.stats.committed >= 10)
    gate.open.set()
    with pytest.raises(GatewayError, match=r"sink 'upstream' \(broken\) cannot start: .*in use"):
        await task
    assert not gateway.started.is_set()
    # What was read while the sink was starting is committed, none of it lost.
    published = gateway.outputs[0].seq
    assert len(stored_by_signal(tmp_path / "s.sqlite")["t/i/n"]) == published > 0


@pytest.mark.asyncio
async def test_the_opcua_server_gets_what_was_committed_before_it_was_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugins.opcua_server.sink import OpcUaServerSink

    gate = Gate()
    enter = OpcUaServerSink.__aenter__

    async def slow_enter(self: OpcUaServerSink) -> OpcUaServerSink:
        await gate.open.wait()  # as if building its address space took this long
        return await enter(self)

    monkeypatch.setattr(OpcUaServerSink, "__aenter__", slow_enter)
    config = {
        "area": "t",
        "data_dir": str(tmp_path / "data"),
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [{"id": "i", "driver": "ticker"}],
        "sinks": [{"id": "ua", "type": "opcua_server", "options": {"port": free_port()}}],
    }
    registry = build_registry([Plugins()])  # the built-in opcua_server too
    plan = load_plan(write_config(tmp_path / "g.yaml", config), registry)
    from gateway.runtime import Gateway

    gateway = Gateway(plan)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop), name="test.gateway")
    try:
        await wait_for(lambda: gateway.writer is not None and gateway.stats.committed >= 20)
        before = gateway.stats.committed  # committed while the server was not up
        gate.open.set()
        await wait_for(gateway.started.is_set, within=60, what="the OPC UA server up")
        feeder = gateway.feeders[0]
        await wait_for(lambda: feeder.delivered >= before + 10, what="the server catches up")
        server = plan.sinks[0].instance
        node = server._space.nodes["t/i/n"]
        assert node.value.value.Value.Value >= before - 1  # a value published after them
    finally:
        stop.set()
        await task
    # Every committed sample reached the server, those before it was up included.
    assert feeder.lost == 0
    assert feeder.delivered == gateway.stats.committed


def test_loading_the_plugins_imports_no_heavy_library_a_configuration_does_not_use() -> None:
    """``patgw run`` loads every installed plugin. asyncua (~14 MB resident, ~0.1 s) and the
    protobuf runtime come in only when an ``opcua``/``opcua_server``/``sparkplug`` component
    is built: a Modbus-to-MQTT gateway does not pay for them (issue 16's 100 MB budget)."""
    code = (
        "import sys\n"
        "from gateway import PluginKind, build_registry\n"
        "registry = build_registry()\n"
        "assert {'opcua', 'modbus'} <= set(registry.names(PluginKind.DRIVER))\n"
        "assert {'opcua_server', 'sparkplug'} <= set(registry.names(PluginKind.SINK))\n"
        "print(' '.join(sorted(m for m in ('asyncua', 'google.protobuf') if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""
