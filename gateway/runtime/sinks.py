"""Feeding sinks: each in its own task with a bounded queue, so no sink can stall the store.

The store writer hands every committed batch to :meth:`SinkFeeder.offer`, which only appends to
a queue. The feeder's task turns rows into :class:`~gateway.model.Sample` objects and calls the
sink's ``send`` under a timeout. A sink that is slower than the data, hangs or fails loses
batches *for that sink only* — the store has every sample — and each lost sample is counted and
logged. This is for sinks that show current values (the OPC UA server); a sink that implements
``forward`` is fed from the store at least once instead (:mod:`.forward`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence

import structlog

from ..api import Sink
from ..model import Quality, Sample, sample_of_fields
from ..store.sqlite import Row

__all__ = ["SinkFeeder", "samples_of"]

log = structlog.get_logger("gateway.sink")

_QUALITIES = list(Quality)


def samples_of(rows: Sequence[Row], names: Mapping[int, tuple[str, str]]) -> list[Sample]:
    """Committed rows as the samples a sink is given (names: def_id → (signal, unit))."""
    # Not Sample(...): every committed sample passes here for every sink.
    new = sample_of_fields
    qualities = _QUALITIES
    return [
        new((names[d][0], v, names[d][1], s, g, qualities[q], seq, r))
        for d, seq, s, g, q, v, r in rows
    ]


class SinkFeeder:
    """Delivers committed batches to one sink, in commit order."""

    def __init__(
        self,
        sink_id: str,
        sink: Sink,
        names: Mapping[int, tuple[str, str]],
        *,
        max_queued: int,
        send_timeout_s: float,
    ) -> None:
        self.sink_id = sink_id
        self.sink = sink
        self.max_queued = max_queued
        self.send_timeout_s = send_timeout_s
        self.delivered = 0
        self.lost = 0
        self._names = names
        self._queue: deque[Sequence[Row]] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_loss_log = 0.0
        self._closed = False

    @property
    def queued(self) -> int:
        """Samples waiting for this sink."""
        return self._queued

    def offer(self, first_id: int, rows: Sequence[Row]) -> None:
        """Queue a committed batch; never blocks. Over the bound, the oldest batches go."""
        if self._closed:
            self._lose(len(rows), "the sink had already stopped")
            return
        self._queue.append(rows)
        self._queued += len(rows)
        while self._queued > self.max_queued and len(self._queue) > 1:
            old = self._queue.popleft()
            self._queued -= len(old)
            self._lose(len(old), "queue full: the sink is slower than the data")
        self._idle.clear()
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver queued batches until cancelled."""
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            rows = self._queue.popleft()
            self._queued -= len(rows)
            samples = samples_of(rows, self._names)
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await self.sink.send(samples)
            except asyncio.CancelledError:
                self._lose(len(samples), "the gateway stopped during the send")
                raise
            except TimeoutError:
                self._lose(len(samples), f"send took longer than {self.send_timeout_s} s")
            except Exception as exc:  # a failing sink must not stop the others or the store
                self._lose(len(samples), f"send failed: {exc!r}")
            else:
                self.delivered += len(samples)

    async def drain(self, deadline: float) -> None:
        """Wait (until the loop time ``deadline``) for everything queued to reach the sink."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._idle.wait()
        except TimeoutError:
            log.error("sink.drain_timeout", sink=self.sink_id, queued=self._queued)

    def close(self) -> None:
        """Stop accepting batches; what is still queued is counted as lost to this sink."""
        self._closed = True
        if self._queued:
            self._lose(self._queued, "the gateway stopped before the sink took it")
        self._queue.clear()
        self._queued = 0

    def _lose(self, count: int, reason: str) -> None:
        self.lost += count
        now = time.monotonic()
        if now - self._last_loss_log > 5.0:
            self._last_loss_log = now
            log.error(
                "sink.samples_lost",
                sink=self.sink_id,
                samples=count,
                lost_total=self.lost,
                reason=reason,
            )
