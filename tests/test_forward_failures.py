"""The forwarder and the writer when things go wrong underneath: read errors, a sink that
cancels itself, a shutdown while a retention policy holds samples back. (Found by review; each
failed before its fix.)"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from gateway import Sample
from gateway.config import SinkConfig, StoreConfig
from gateway.model import Signal
from gateway.runtime.forward import BacklogReader, Forwarder
from gateway.store.sqlite import SampleStore
from gateway.store.writer import StoreWriter
from gateway.timefmt import now_ns

# --- helpers ---------------------------------------------------------------------------------


def make_store(path: Path, count: int) -> dict[int, tuple[str, str]]:
    """A store holding ``count`` committed samples of one signal; returns the names map."""
    store = SampleStore(path)
    try:
        stored = store.define([Signal("t/c/x", "1")])
        def_id = stored["t/c/x"].def_id
        now = now_ns()
        rows = [(def_id, i, now, now, 0, float(i), None) for i in range(count)]
        store.commit(rows, {"t/c/x": count})
        return {def_id: ("t/c/x", "1")}
    finally:
        store.close()


class Recorder:
    """A forwarding sink that records what it acknowledges, or fails while ``up`` is false."""

    max_concurrent_forwards = 1

    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self.received: list[Sample] = []

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if not self.up:
            raise ConnectionError("down")
        self.received.extend(samples)


async def run_until(forwarder: Forwarder, condition: Callable[[], object], what: str) -> None:
    """Run ``forwarder`` until ``condition`` holds (failing after 5 s), then stop it."""
    task = asyncio.create_task(forwarder.run(), name="test.forwarder")
    try:
        await wait_for(condition, within=5.0, what=what)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run_for(forwarder: Forwarder, seconds: float) -> None:
    """Run ``forwarder`` for a fixed window (to count what it does in that time)."""
    task = asyncio.create_task(forwarder.run(), name="test.forwarder")
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def fail_definitions_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """SampleStore._definitions raises a raw sqlite3 error once (it runs outside the try of
    between() and runs(), so it is not translated to StoreError)."""
    real = SampleStore._definitions
    calls = [0]

    def flaky(self: SampleStore) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self)

    monkeypatch.setattr(SampleStore, "_definitions", flaky)
    return calls


# --- a raw sqlite3 error while reading a backlog page: the page is retried -------------------


@pytest.mark.asyncio
async def test_backlog_page_is_retried_after_a_transient_read_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = make_store(tmp_path / "s.sqlite", 10)
    fail_definitions_once(monkeypatch)
    reader = BacklogReader(tmp_path / "s.sqlite")
    sink = Recorder()
    config = SinkConfig(id="up", type="x", start_from="earliest", retry={"initial_s": 0.01})
    forwarder = Forwarder("up", sink, config, names, reader)  # type: ignore[arg-type]
    forwarder.start(None, 10)
    try:
        await run_until(forwarder, lambda: len(sink.received) == 10, "all 10 delivered")
    finally:
        await reader.aclose()
    # The reader works again after one error: all 10 committed samples should be delivered.
    assert len(sink.received) == 10, (
        f"delivered {len(sink.received)}, backlog {forwarder.stats.backlog},"
        f" busy {forwarder._busy!r}, failures {forwarder.stats.failures}"
    )


# --- the retention task survives a read error ---------------------------------------------


@pytest.mark.asyncio
async def test_retention_keeps_running_after_a_transient_read_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = make_store(tmp_path / "s.sqlite", 100)
    reader = BacklogReader(tmp_path / "s.sqlite")
    sink = Recorder()
    sink.up = False
    config = SinkConfig(
        id="up",
        type="x",
        start_from="earliest",
        retention={"max_samples": 10, "policy": "drop_oldest"},
        retry={"initial_s": 5, "max_s": 5},  # no probe during the test: retention may act
    )
    forwarder = Forwarder("up", sink, config, names, reader)  # type: ignore[arg-type]
    forwarder.start(None, 100)
    # The first probe fails at once (sink down) and leaves the forwarder idle and DOWN. Then
    # one retention read fails with a raw sqlite3 error (as _definitions() in runs() would).
    real_runs = SampleStore.runs
    calls = [0]

    def flaky_runs(self: SampleStore, ranges: Any, reason: str) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_runs(self, ranges, reason)

    monkeypatch.setattr(SampleStore, "runs", flaky_runs)
    try:
        await run_until(forwarder, lambda: forwarder.stats.dropped == 90, "90 dropped")
    finally:
        await reader.aclose()
    assert forwarder.stats.dropped == 90, (
        f"dropped {forwarder.stats.dropped}: the housekeeping task died on the first error"
    )


# --- a sink that raises CancelledError itself: a failure, with backoff ---------------------


@pytest.mark.asyncio
async def test_a_sink_raising_cancelled_error_is_a_failure_with_backoff(
    tmp_path: Path,
) -> None:
    names = make_store(tmp_path / "s.sqlite", 10)
    reader = BacklogReader(tmp_path / "s.sqlite")

    class Cancelling(Recorder):
        async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
            self.calls += 1
            # e.g. awaiting a future that the client library cancels on disconnect
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future

    sink = Cancelling()
    config = SinkConfig(
        id="up", type="x", start_from="earliest", retry={"initial_s": 0.2, "max_s": 0.2}
    )
    forwarder = Forwarder("up", sink, config, names, reader)  # type: ignore[arg-type]
    forwarder.start(None, 10)
    try:
        await run_for(forwarder, 0.5)
    finally:
        await reader.aclose()
    assert forwarder.stats.failures >= 1 and sink.calls <= 5, (
        f"{sink.calls} forwards in 0.5 s, failures={forwarder.stats.failures},"
        f" state={forwarder.stats.state}"
    )
    assert forwarder.stats.last_error == "forward cancelled by the sink"


@pytest.mark.asyncio
async def test_a_sink_that_never_acknowledges_is_one_failure_that_says_how_long(
    tmp_path: Path,
) -> None:
    """A forward still unanswered at send_timeout_s is one failure whose reason names the
    time, not a bare ``TimeoutError()`` (nor two failures, nor a "cancelled by the sink")."""
    names = make_store(tmp_path / "s.sqlite", 10)
    reader = BacklogReader(tmp_path / "s.sqlite")

    class Silent(Recorder):
        async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
            self.calls += 1
            await asyncio.Event().wait()  # a broker that accepted the publish and went quiet

    sink = Silent()
    config = SinkConfig(
        id="up",
        type="x",
        start_from="earliest",
        send_timeout_s=0.1,
        retry={"initial_s": 30, "max_s": 30},
    )
    forwarder = Forwarder("up", sink, config, names, reader)  # type: ignore[arg-type]
    forwarder.start(None, 10)
    try:
        await run_until(forwarder, lambda: forwarder.stats.failures >= 1, "the timeout")
    finally:
        await reader.aclose()
    assert sink.calls == 1
    assert forwarder.stats.failures == 1
    assert forwarder.stats.last_error == "forward not acknowledged within 0.1 s (send_timeout_s)"


# --- retention 'stop' at shutdown: the held samples are committed, not discarded ------------


@pytest.mark.asyncio
async def test_samples_held_by_the_stop_policy_are_committed_at_shutdown(
    tmp_path: Path,
) -> None:
    store = SampleStore(tmp_path / "s.sqlite")
    stored = store.define([Signal("t/c/x", "1")])
    def_id = stored["t/c/x"].def_id

    class Blocking:
        sink_id = "up"

        def take_delivery(self) -> None:
            return None

        def delivery_saved(self, update: Any) -> None:
            pass

        def commit_blocked(self) -> str:
            return "sink 'up' has too many undelivered samples (policy stop)"

    writer = StoreWriter(
        store,
        StoreConfig(path=tmp_path / "s.sqlite", commit_interval_ms=5),
        names={def_id: ("t/c/x", "1")},
        executor=StoreWriter.new_executor(),
    )
    writer.delivery_sources.append(Blocking())  # type: ignore[arg-type]
    now = now_ns()
    writer.pending.extend((def_id, i, now, now, 0, float(i), None) for i in range(50))
    stop = asyncio.Event()
    stop.set()  # shutdown while the sink's retention bound blocks commits
    await writer.run(stop)
    committed = await writer.call(lambda s: [x.seq for x in s.samples()])
    await writer.aclose()
    # At shutdown the policy no longer holds samples back: discarding them would be a loss
    # the store could have avoided.
    assert (writer.stats.dropped, committed) == (0, list(range(50)))
