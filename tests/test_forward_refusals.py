"""The forwarder when a sink's destination refuses some samples for good (a
:class:`gateway.SamplesRefusedError`), in a small world: a real store, a real backlog reader and
a sink that refuses one signal. (The same against a real Mosquitto with an ACL:
tests/test_mqtt_e2e.py.)

* the refused samples are given up for that sink, recorded as losses with the reason, never
  counted delivered and never handed over again; everything else is delivered;
* a refusal followed by a failure of the forward (a broker that drops the connection after
  refusing) gives up the refused samples only: the rest is sent again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import wait_for

from gateway import Refusal, Sample, SamplesRefusedError
from gateway.config import SinkConfig
from gateway.model import Signal
from gateway.runtime.forward import BacklogReader, Forwarder, SinkState
from gateway.store.sqlite import Loss, SampleStore
from gateway.timefmt import now_ns

X, Y = "t/c/x", "t/c/y"
COUNT = 100  # samples of each signal, interleaved: x0 y0 x1 y1 ...
REASON = "the destination answered Not authorized"


def make_store(path: Path) -> dict[int, tuple[str, str]]:
    """Committed samples of X and Y, interleaved; returns the names map."""
    store = SampleStore(path)
    try:
        stored = store.define([Signal(X, "1"), Signal(Y, "1")])
        now = now_ns()
        rows = [
            (stored[name].def_id, seq, now, now, 0, float(seq), None)
            for seq in range(COUNT)
            for name in (X, Y)
        ]
        store.commit(rows, {X: COUNT, Y: COUNT})
        return {stored[name].def_id: (name, "1") for name in (X, Y)}
    finally:
        store.close()


class Refusing:
    """A forwarding sink whose destination refuses the samples of the signals in ``denied``;
    ``fail_after_refusal`` first forwards also fail after refusing (a dropped connection)."""

    max_concurrent_forwards = 2

    def __init__(self, denied: set[str], fail_after_refusal: int = 0) -> None:
        self.denied = denied
        self.fail_after_refusal = fail_after_refusal
        self.handed: list[tuple[str, int]] = []  # every sample handed over, in order
        self.received: list[tuple[str, int]] = []  # those the destination took

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        await asyncio.sleep(0)
        self.handed.extend((s.signal, s.seq) for s in samples)
        refused = tuple(i for i, s in enumerate(samples) if s.signal in self.denied)
        if refused and self.fail_after_refusal:
            self.fail_after_refusal -= 1
            failure = "connection to the destination lost"
            raise SamplesRefusedError([Refusal(refused, "signal x", REASON)], failure)
        self.received.extend((s.signal, s.seq) for s in samples if s.signal not in self.denied)
        if refused:
            raise SamplesRefusedError([Refusal(refused, "signal x", REASON)])


async def run_until(forwarder: Forwarder, condition: Callable[[], object], what: str) -> None:
    task = asyncio.create_task(forwarder.run(), name="test.forwarder")
    try:
        await wait_for(condition, within=10.0, what=what)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def forward_everything(tmp_path: Path, sink: Refusing) -> Forwarder:
    """A forwarder of the store's 2 x COUNT samples to ``sink`` (pages of 10), run until its
    cursor is at the end and the sink is up (a refused signal is quarantined, not the sink)."""
    names = make_store(tmp_path / "s.sqlite")
    reader = BacklogReader(tmp_path / "s.sqlite")
    config = SinkConfig(
        id="up",
        type="x",
        start_from="earliest",
        batch_max_samples=10,
        retry={"initial_s": 0.01, "max_s": 0.05},
    )
    forwarder = Forwarder("up", sink, config, names, reader)  # type: ignore[arg-type]
    forwarder.start(None, 2 * COUNT)
    try:
        await run_until(
            forwarder,
            lambda: forwarder.cursor == 2 * COUNT and forwarder.stats.state is SinkState.UP,
            "the cursor at the end, the sink up",
        )
    finally:
        await reader.aclose()
    return forwarder


def lost_seqs(losses: Sequence[Loss], signal: str) -> int:
    return sum(loss.count for loss in losses if loss.signal == signal)


@pytest.mark.asyncio
@pytest.mark.parametrize("fail_after_refusal", [0, 3], ids=["refused", "refused-then-failed"])
async def test_refused_samples_are_given_up_once_and_everything_else_is_delivered(
    tmp_path: Path, fail_after_refusal: int
) -> None:
    sink = Refusing({X}, fail_after_refusal)
    forwarder = await forward_everything(tmp_path, sink)
    stats = forwarder.stats
    # Everything else was delivered, once each (no failure sends anything twice here but the
    # batches that failed after a refusal).
    assert sorted(set(sink.received)) == [(Y, seq) for seq in range(COUNT)], sink.received
    assert stats.delivered == len(sink.received)
    # No refused sample was handed over twice: no batch republished in a loop.
    twice = [key for key, n in Counter(sink.handed).items() if key[0] == X and n > 1]
    assert not twice, f"samples of the refused signal handed over again: {twice[:5]}"
    # Every sample of X was given up for this sink, recorded with the destination's reason.
    update = forwarder.take_delivery()
    assert update is not None
    losses = update.losses
    assert lost_seqs(losses, X) == COUNT == stats.refused, losses
    assert lost_seqs(losses, Y) == 0, losses
    assert all(x.reason == f"refused by sink 'up' (signal x): {REASON}" for x in losses), losses
    assert update.delivery.cursor == 2 * COUNT
    assert list(stats.quarantined) == [X]  # probed later
    if fail_after_refusal:
        # (Two forwards failing together count as one failure.)
        assert 1 <= stats.failures <= fail_after_refusal, stats


class FailingOnceInAWindow(Refusing):
    """Refuses the samples of ``denied`` (no failure); the first backlog forward of other
    samples after a refusal fails outright (a dropped connection): a backlog window whose parts
    gave up some samples is then sent again."""

    def __init__(self, denied: set[str]) -> None:
        super().__init__(denied)
        self.refusals = 0
        self.failed = False

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        refusing = any(s.signal in self.denied for s in samples)
        if self.refusals and not refusing and historical and not self.failed:
            self.failed = True
            await asyncio.sleep(0)
            self.handed.extend((s.signal, s.seq) for s in samples)
            raise ConnectionError("connection to the destination lost")
        self.refusals += refusing
        await super().forward(samples, historical)


@pytest.mark.asyncio
async def test_samples_given_up_in_a_window_that_fails_are_recorded_lost_once(
    tmp_path: Path,
) -> None:
    """A backlog window (8 pages regrouped by signal: X's parts, then Y's) whose X samples are
    refused or withheld (X is quarantined) and one of whose Y parts then fails is sent again:
    its X samples are not given up (nor recorded lost) a second time."""
    sink = FailingOnceInAWindow({X})
    forwarder = await forward_everything(tmp_path, sink)
    assert sink.failed, "no forward failed: the case was not exercised"
    stats = forwarder.stats
    assert stats.failures == 1, stats
    assert sorted(set(sink.received)) == [(Y, seq) for seq in range(COUNT)], sink.received
    update = forwarder.take_delivery()
    assert update is not None
    by_seq = Counter(
        seq
        for loss in update.losses
        if loss.signal == X
        for seq in range(loss.first_seq, loss.last_seq + 1)
    )
    twice = sorted(seq for seq, n in by_seq.items() if n > 1)
    assert not twice, f"samples of X recorded lost more than once: {twice}"
    assert sorted(by_seq) == list(range(COUNT)) and stats.refused == COUNT, update.losses
    assert lost_seqs(update.losses, Y) == 0, update.losses
