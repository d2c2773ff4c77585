"""Store-and-forward: each forwarding sink is fed from the store through a durable cursor.

See docs/decisions/0006-store-and-forward.md. For every sink that implements
:class:`~gateway.api.ForwardingSink`, a :class:`Forwarder`:

- keeps the set of sample ids the sink has acknowledged (``delivered``, a few id ranges),
  saved by the store writer in the same transaction as the next commit — together with the
  record of anything the retention policy gave up, so a cursor never passes a silent loss;
- sends *live* batches (handed over by the writer right after each commit) at once while the
  sink is up, and reads the *backlog* (every committed id not yet delivered: an outage, a
  restart, a live queue that overflowed) from the store on the reader's own thread, in commit
  order, flagged ``historical``: one page at a time while probing a sink that is down, and
  while it is up in windows of :data:`_WINDOW_PAGES` pages forwarded regrouped by signal
  (:meth:`Forwarder._window`). Live batches go first; the backlog uses the sink's remaining
  concurrency and, optionally, a rate cap;
- on a failed forward: marks the sink down, forgets the live queue (those samples are in the
  store: they become backlog), hands the sink nothing more that was begun before the failure
  (a window's next part, a live batch whose task had not run yet: on a new connection it
  would arrive before the failed forward is sent again), and probes again after a jittered
  exponential backoff — or at once, if the sink can tell that its destination came back
  (``reachable``, checked every :data:`REACHABLE_CHECK_S` while it is down and once
  unreachable: a backlog starts draining within a fraction of a second of a broker's return,
  not up to ``retry.max_s`` later);
- applies the retention bound to what is undelivered: ``drop_oldest`` gives the oldest up for
  this sink (counted, logged, recorded as losses), ``stop`` makes the writer refuse commits;
- quarantines what the destination refuses (``forward`` raised
  :class:`~gateway.errors.SamplesRefusedError`): the refused samples are given up for this sink
  (counted, recorded as losses with the destination's reason, logged once per target), the
  rest of the batch counts as delivered, and the refused signals' next samples are given up
  the same way, except one batch's worth sent as a probe on a jittered exponential backoff
  (the sink's ``retry``), until the destination takes one: then the signal flows again. A
  refused sample is never counted as delivered.

A sample whose forward was in flight when the sink failed, or acknowledged after the last save
before a crash, is sent again: consumers de-duplicate on ``(signal, seq)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from ..api import ForwardingSink
from ..config import SinkConfig
from ..errors import SamplesRefusedError
from ..model import Sample
from ..store.sqlite import Delivery, Loss, Row, SampleStore
from ..timefmt import now_ns
from .backoff import Backoff
from .ranges import IdRanges
from .sinks import samples_of

__all__ = [
    "BacklogReader",
    "DeliveryUpdate",
    "Forwarder",
    "ForwarderStats",
    "Quarantined",
    "SinkState",
]

log = structlog.get_logger("gateway.sink")

_HOUSEKEEPING_S = 0.5  # retention is checked this often
_WINDOW_PAGES = 8  # pages (of batch_max_samples) per backlog window while the sink is up
REACHABLE_CHECK_S = 0.25
"""While a sink with a ``reachable`` check is down, it is called this often between retries."""


class SinkState(StrEnum):
    """A forwarding sink's connection state, for the live view, /health and metrics."""

    STARTING = "starting"  # no forward has completed yet
    UP = "up"  # the last forward was acknowledged
    DOWN = "down"  # the last forward failed; retrying with backoff
    STOPPED = "stopped"


@dataclass(eq=False)
class Quarantined:
    """A signal whose samples the sink's destination refuses: they are given up for the sink,
    and one batch of them is sent as a probe at ``probe_at`` (loop time)."""

    target: str  # what the destination refused (e.g. "topic pat/site/area/pump/flow")
    reason: str  # the reason of the losses recorded for it
    backoff: Backoff
    probe_at: float
    refused: int = 0  # samples given up while quarantined (this time)
    probing: bool = False  # a probe is in flight


@dataclass
class ForwarderStats:
    """Counters of one forwarding sink (this run), read by the view, /health and /metrics."""

    state: SinkState = SinkState.STARTING
    delivered: int = 0  # samples acknowledged by the sink, both lanes
    delivered_historical: int = 0  # of which from the backlog (flagged historical)
    resent: int = 0  # samples handed over again after a failure: possible duplicates upstream
    dropped: int = 0  # undelivered samples given up by the retention policy (drop_oldest)
    refused: int = 0  # samples given up because the destination refused them (quarantine)
    quarantined: dict[str, Quarantined] = field(default_factory=dict)  # by signal id
    failures: int = 0  # failed forwards (connection lost, timeout, refused...)
    sessions: int = 0  # times the sink came up (first success, and after each failure)
    # These two are always set together, from one moment (Forwarder._backlog_changed): None
    # exactly when the backlog is 0. While the oldest sample's time is being read from the
    # store, it is that of an older one (the age errs high, briefly, never low).
    backlog: int = 0  # samples committed but not yet acknowledged by this sink
    oldest_undelivered_ns: int | None = None  # gateway_ts of the oldest of them (None: none)
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryUpdate:
    """A forwarder's unsaved progress, for the writer to save with its next commit."""

    delivery: Delivery
    losses: tuple[Loss, ...]
    token: tuple[int, int]


class BacklogReader:
    """Reads committed samples for the forwarders on its own thread and read-only connection,
    so a backlog being read never delays a commit (SQLite's WAL lets both run at once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patgw-reader")
        self._store: SampleStore | None = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _opened(self) -> SampleStore:
        if self._store is None:
            self._store = SampleStore(self.path, read_only=True)
        return self._store

    async def page(self, first: int, last: int) -> tuple[list[int], list[Sample]]:
        """The committed samples with ids ``first..last`` and their ids, in commit order."""
        return await self._call(lambda: self._opened().page(first, last))  # type: ignore[no-any-return]

    async def runs(self, ranges: Sequence[tuple[int, int]], reason: str) -> list[Loss]:
        return await self._call(lambda: self._opened().runs(ranges, reason))  # type: ignore[no-any-return]

    async def gateway_ts(self, sample_id: int) -> int | None:
        return await self._call(lambda: self._opened().gateway_ts(sample_id))  # type: ignore[no-any-return]

    async def last_before(self, first: int, last: int, cutoff_ns: int) -> int:
        """The largest id in ``first..last`` whose gateway_ts is before ``cutoff_ns`` (``first
        - 1`` if none), by bisection: gateway_ts follows commit order (within clock steps)."""

        def search() -> int:
            store = self._opened()
            low, high = first, last  # invariant: answer in [low - 1, high]
            while low <= high:
                mid = (low + high) // 2
                ts = store.gateway_ts(mid)
                if ts is not None and ts < cutoff_ns:
                    low = mid + 1
                else:
                    high = mid - 1
            return high

        return await self._call(search)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        def close() -> None:
            if self._store is not None:
                self._store.close()
                self._store = None

        try:
            await self._call(close)
        finally:
            self._executor.shutdown(wait=True)


class Forwarder:
    """Delivers every committed sample to one :class:`~gateway.api.ForwardingSink`."""

    def __init__(
        self,
        sink_id: str,
        sink: ForwardingSink,
        config: SinkConfig,
        names: Mapping[int, tuple[str, str]],
        reader: BacklogReader,
    ) -> None:
        self.sink_id = sink_id
        self.sink = sink
        self.config = config
        self.stats = ForwarderStats()
        self.send_timeout_s = config.send_timeout_s
        self._names = names
        self._reader = reader
        self._concurrency = max(1, int(getattr(sink, "max_concurrent_forwards", 1)))
        self._delivered = IdRanges()
        self._busy = IdRanges()  # queued live batches and sends in flight
        self._live: deque[tuple[int, int, Sequence[Row]]] = deque()
        self._live_count = 0
        self._horizon = 0  # the last committed id the forwarder knows of
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog_tasks = 0  # backlog forwards in flight (pages and windows' parts)
        self._windows = 0  # window tasks running (they forward nothing themselves)
        self._window_open = False  # a window is reading or handing its parts to the sink
        self._freed = asyncio.Event()  # a task ended: a window waiting for a slot looks again
        self._backlog_ready_at = 0.0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._backoff = Backoff(config.retry)
        self._retry_at = 0.0
        # The sink's optional cheap check (see ForwardingSink): was the destination seen away
        # since the last attempt, when the next check is due, and the check in progress.
        self._reachable = getattr(sink, "reachable", None)
        self._seen_away = False
        self._check_at = 0.0
        self._check: asyncio.Task[None] | None = None
        self._epoch = 0  # increases with every failure; a send remembers the epoch it began in
        self._draining = False
        self._version = 0
        self._saved_version = 0
        self._unsaved_losses: list[Loss] = []
        self._last_loss_log = 0.0
        self._oldest: tuple[int, int] | None = None  # (id, gateway_ts) of a sample, once known
        self._oldest_asked = 0  # the id whose gateway_ts was last asked of the store
        self._oldest_stale = asyncio.Event()  # the oldest undelivered id has an unknown time
        self._log = log.bind(sink=sink_id)

    # -- set-up, from the supervisor ------------------------------------------------------------
    def start(self, delivery: Delivery | None, last_id: int) -> None:
        """Resume from what the store says was delivered (or start as configured)."""
        self._horizon = last_id
        if delivery is None:
            if self.config.start_from == "latest" and last_id > 0:
                self._delivered.add(1, last_id)
            self._version = 1  # the first commit saves the new cursor
        else:
            self._delivered.add(1, delivery.cursor)
            for first, last in delivery.ranges:
                self._delivered.add(first, last)
        self._backlog_changed()
        self._log.info(
            "sink.resume",
            cursor=self._delivered.prefix_end(),
            backlog=self.stats.backlog,
            new=delivery is None,
        )

    async def read_oldest(self) -> None:
        """Read the time of the oldest undelivered sample from the store (before :meth:`run`,
        so that the first report of a backlog left by the last run has its age)."""
        gap = next(self._delivered.gaps(1, self._horizon), None)
        if gap is not None:
            self._oldest_asked = gap[0]
            ts = await self._reader.gateway_ts(gap[0])
            # Not if, meanwhile, all was delivered and a newer batch became the oldest.
            if ts is not None and (self._oldest is None or self._oldest[0] <= gap[0]):
                self._oldest = (gap[0], ts)
        self._backlog_changed()

    @property
    def cursor(self) -> int:
        """Every sample id up to this one is delivered (or given up by retention)."""
        return self._delivered.prefix_end()

    # -- the writer's side ----------------------------------------------------------------------
    def offer(self, first_id: int, rows: Sequence[Row]) -> None:
        """A batch was committed with ids ``first_id...``: queue it live, or leave it to the
        backlog while the sink is down. Never blocks."""
        if not rows:
            return
        self._horizon = max(self._horizon, first_id + len(rows) - 1)
        if self.stats.backlog == 0:  # the first of these rows is the oldest undelivered
            self._oldest = (first_id, rows[0][3])
        self._backlog_changed()
        if self.stats.state in (SinkState.UP, SinkState.STARTING) and not self._draining:
            step = self.config.batch_max_samples
            for at in range(0, len(rows), step):
                chunk = rows[at : at + step] if len(rows) > step else rows
                first = first_id + at
                last = first + len(chunk) - 1
                self._live.append((first, last, chunk))
                self._busy.add(first, last)
                self._live_count += len(chunk)
            while self._live_count > self.config.queue_max_samples and len(self._live) > 1:
                # Slower than the data: these go back to the store and come as backlog.
                first, last, chunk = self._live.popleft()
                self._live_count -= len(chunk)
                self._busy.remove(first, last)
        self._idle.clear()
        self._wake.set()

    def take_delivery(self) -> DeliveryUpdate | None:
        """Progress not saved yet (None if there is none), for the writer's next commit."""
        if self._version == self._saved_version:
            return None
        cursor = self._delivered.prefix_end()
        delivery = Delivery(self.sink_id, cursor, tuple(self._delivered.above(cursor)))
        losses = tuple(self._unsaved_losses)
        return DeliveryUpdate(delivery, losses, (self._version, len(losses)))

    def delivery_saved(self, update: DeliveryUpdate) -> None:
        """The writer committed ``update``."""
        version, losses = update.token
        self._saved_version = max(self._saved_version, version)
        del self._unsaved_losses[:losses]

    def commit_blocked(self) -> str | None:
        """Why the writer must not commit now (retention policy ``stop``), or None."""
        retention = self.config.retention
        if retention.policy != "stop":
            return None
        # The text becomes the reason of recorded losses: no changing numbers in it, so that
        # the records of one outage merge.
        backlog = self._undelivered()
        if retention.max_samples is not None and backlog > retention.max_samples:
            return (
                f"sink {self.sink_id!r} has more than {retention.max_samples} undelivered"
                " samples, its retention bound (policy stop)"
            )
        oldest = self.stats.oldest_undelivered_ns
        max_age_s = retention.max_age_s
        if max_age_s is not None and oldest is not None and backlog:
            too_old = (now_ns() - oldest) / 1e9 > max_age_s
            if too_old:
                return (
                    f"sink {self.sink_id!r} has undelivered samples older than its retention"
                    f" bound of {max_age_s} s (policy stop)"
                )
        return None

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Forward until cancelled."""
        housekeeping = asyncio.create_task(
            self._housekeeping(), name=f"sink.{self.sink_id}.retention"
        )
        try:
            while True:
                self._wake.clear()
                timeout = self._schedule()
                if not self._tasks and not self._live:
                    self._idle.set()
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            housekeeping.cancel()
            for task in self._tasks:
                task.cancel()
            check = self._check
            if check is not None:
                check.cancel()
            await asyncio.gather(
                housekeeping, *self._tasks, *([check] if check else []), return_exceptions=True
            )
            self.stats.state = SinkState.STOPPED

    async def drain(self, deadline: float) -> None:
        """Stop starting backlog pages; wait (until loop time ``deadline``) for the live queue
        and every forward in flight. What is left stays in the store for the next run."""
        self._draining = True
        self._wake.set()
        try:
            async with asyncio.timeout_at(deadline):
                while self._live or self._tasks:
                    self._idle.clear()
                    self._wake.set()
                    await self._idle.wait()
        except TimeoutError:
            self._log.error(
                "sink.drain_timeout", queued=self._live_count, in_flight=len(self._tasks)
            )

    def _schedule(self) -> float | None:
        """Start what may start now; return how long to sleep at most before looking again."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.stats.state is SinkState.DOWN and now < self._retry_at:
            return self._wait_for_retry(now)
        probing = self.stats.state is not SinkState.UP
        limit = 1 if probing else self._concurrency
        live = self._live
        while len(self._tasks) - self._windows < limit and live:
            first, last, rows = live.popleft()
            # Batches that queued up while the sink was busy go together (up to a batch): a
            # busy sink gets fewer, larger forwards — for MQTT, fewer messages — and catches
            # up, instead of paying per batch; an idle one still gets each commit at once.
            batch = list(rows)
            while (
                live
                and live[0][0] == last + 1
                and len(batch) + len(live[0][2]) <= self.config.batch_max_samples
            ):
                _, last, more = live.popleft()
                batch += more
            self._live_count -= len(batch)
            samples = samples_of(batch, self._names)
            send = self._send(first, last, samples, historical=False, epoch=self._epoch)
            self._spawn(send, "send")
        if self._draining or self._live:
            return None
        backlog_limit = limit if probing else max(1, limit - 1)  # one slot stays for live data
        while len(self._tasks) - self._windows < limit and self._backlog_tasks < backlog_limit:
            if now < self._backlog_ready_at:
                return self._backlog_ready_at - now
            if not probing and self._window_open:
                return None  # the next window starts once this one's parts are all sent
            if probing and (self._windows or self._busy):
                # A failed epoch's window or part has not settled yet: its range is busy, so
                # a probe now would take the range after it and send later samples first
                # (each signal's order broken for a consumer). It wakes us when it ends.
                return None
            gap = next(self._delivered.gaps(1, self._horizon, self._busy), None)
            if gap is None:
                return None
            first = gap[0]
            pages = 1 if probing else _WINDOW_PAGES
            last = min(gap[1], first + pages * self.config.batch_max_samples - 1)
            self._busy.add(first, last)
            rate = self.config.backlog_max_rate
            if rate is not None:
                start = max(now, self._backlog_ready_at)
                self._backlog_ready_at = start + (last - first + 1) / rate
            if probing:
                self._backlog_tasks += 1
                self._spawn(self._backlog(first, last), "backlog")
            else:
                self._window_open = True
                self._windows += 1
                self._spawn(self._window(first, last, backlog_limit), "backlog")
        return None

    def _wait_for_retry(self, now: float) -> float:
        """Down, before the next retry: check whether the destination is back, if the sink
        can tell; how long to sleep at most."""
        wait = self._retry_at - now
        if self._reachable is None or self._draining:
            return wait
        if self._check is None and now >= self._check_at:
            self._check_at = now + REACHABLE_CHECK_S
            self._check = asyncio.create_task(
                self._check_reachable(self._epoch), name=f"sink.{self.sink_id}.reachable"
            )
        return min(wait, max(0.0, self._check_at - now))

    async def _check_reachable(self, epoch: int) -> None:
        """Retry at once if the destination answers after having been seen away since the last
        attempt. A destination that answers but refuses the attempt (bad credentials) is not
        seen away again, so it is retried on the backoff, never every check."""
        assert self._reachable is not None
        try:
            async with asyncio.timeout(self.send_timeout_s):
                answers = bool(await self._reachable())
        except Exception:  # a failing check is a destination not answering
            answers = False
        finally:
            self._check = None
        if epoch != self._epoch or self.stats.state is not SinkState.DOWN:
            return  # an attempt was made meanwhile: this answer is about the time before it
        if not answers:
            self._seen_away = True
        elif self._seen_away:
            self._seen_away = False
            self._retry_at = asyncio.get_running_loop().time()
            self._log.info("sink.reachable", retry="now", backlog=self.stats.backlog)
        self._wake.set()

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro, name=f"sink.{self.sink_id}.{what}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        # A done callback runs after the task's last line: look again only now that the task
        # has left the set (the drain waits for an empty one).
        self._tasks.discard(task)
        self._freed.set()
        self._wake.set()

    async def _backlog(self, first: int, last: int) -> None:
        epoch = self._epoch
        try:
            try:
                ids, samples = await self._reader.page(first, last)
            except Exception as exc:  # StoreError, or anything else: retry later, never strand
                self._busy.remove(first, last)
                self._failed(f"reading the backlog: {exc!r}", epoch, 0)
                self._wake.set()
                return
            await self._send(first, last, samples, historical=True, epoch=epoch, ids=ids)
        finally:
            self._backlog_tasks -= 1

    async def _window(self, first: int, last: int, slots: int) -> None:
        """Forward the backlog ``first..last`` (up to :data:`_WINDOW_PAGES` pages) regrouped by
        signal: parts of at most ``batch_max_samples``, each signal's samples in commit order
        and split only between consecutive parts, started in order as backlog slots (at most
        ``slots``) free up. With a topic per signal, a page in commit order holds every signal:
        regrouped, a part is a few long arrays instead of one short array per signal.

        Once every part has been handed to the sink, the next window may read (so reading
        overlaps this one's acknowledgements; its parts are handed over after these, which
        keeps each signal's order). The window counts as delivered once every part is; if
        one fails, all of it is sent again (parts already acknowledged become duplicates,
        counted as ``resent``)."""
        epoch = self._epoch
        step = self.config.batch_max_samples
        parts: list[asyncio.Task[None]] = []
        sent: list[int | None] = []  # per part: samples delivered, None until acknowledged
        is_open = True  # this window holds _window_open (no other may read until it is False)
        try:
            try:
                ids, samples = await self._reader.page(first, last)
            except Exception as exc:  # StoreError, or anything else: retry later, never strand
                self._failed(f"reading the backlog: {exc!r}", epoch, 0)
                return
            if self._delivered.count(first, last):
                # Samples given up inside this range already (refused, then the forward
                # failed: marked done one by one) are not sent, nor recorded lost, again.
                done = self._delivered.contains
                keep = [i for i, sample_id in enumerate(ids) if not done(sample_id)]
                ids = [ids[i] for i in keep]
                samples = [samples[i] for i in keep]
            by_signal: dict[str, list[int]] = {}
            for position, sample in enumerate(samples):
                group = by_signal.get(sample.signal)
                if group is None:
                    by_signal[sample.signal] = [position]
                else:
                    group.append(position)
            order = list(itertools.chain.from_iterable(by_signal.values()))
            for at in range(0, len(order), step):
                while self._backlog_tasks >= slots or len(self._tasks) - self._windows >= (
                    slots + 1
                ):
                    self._freed.clear()
                    await self._freed.wait()
                if epoch != self._epoch or self._draining:
                    break  # failed (sent again from the store) or stopping: start no more
                chunk = order[at : at + step]
                self._backlog_tasks += 1
                part = self._part(first, last, samples, ids, chunk, epoch, sent, len(sent))
                sent.append(None)
                task = asyncio.create_task(part, name=f"sink.{self.sink_id}.backlog.part")
                self._tasks.add(task)
                task.add_done_callback(self._done)
                parts.append(task)
            await asyncio.sleep(0)  # the parts' first steps hand their samples to the sink
            self._window_open = is_open = False
            self._wake.set()
            if parts:
                await asyncio.wait(parts)
            if len(parts) * step >= len(order) and all(n is not None for n in sent):
                self._mark(first, last)
            else:
                # Sent again with the rest of the window: possible duplicates upstream.
                self.stats.resent += sum(n for n in sent if n is not None)
        finally:
            self._busy.remove(first, last)
            if is_open:
                self._window_open = False
            self._windows -= 1
            self._wake.set()

    async def _part(
        self,
        first: int,
        last: int,
        samples: list[Sample],
        ids: list[int],
        chunk: list[int],
        epoch: int,
        sent: list[int | None],
        index: int,
    ) -> None:
        """Part ``index`` of a :meth:`_window`: its samples at ``chunk``'s positions; how many
        were delivered goes to ``sent[index]``."""
        try:
            sent[index] = await self._send(
                first,
                last,
                [samples[p] for p in chunk],
                historical=True,
                epoch=epoch,
                ids=[ids[p] for p in chunk],
                in_window=True,
            )
        finally:
            self._backlog_tasks -= 1

    async def _send(
        self,
        first: int,
        last: int,
        samples: list[Sample],
        *,
        historical: bool,
        epoch: int | None = None,
        ids: Sequence[int] | None = None,
        in_window: bool = False,
    ) -> int | None:
        """Forward ``samples`` (ids ``first..last``, or ``ids`` if given) and settle the outcome:
        how many were delivered, None if the forward failed or was not made (it was begun
        in an ``epoch`` that has failed since). ``in_window``: one part of
        :meth:`_window`, which settles ``first..last`` and ``_busy`` itself."""
        epoch = self._epoch if epoch is None else epoch
        was_up = self.stats.state is SinkState.UP
        withheld: list[tuple[Sample, Quarantined]] = []
        probes: list[Quarantined] = []
        kept: list[int] | None = None  # positions of the samples sent, if some were withheld
        if self.stats.quarantined:
            kept, withheld, probes = self._screen(samples)
            samples = [samples[position] for position in kept]
        deadline: asyncio.Timeout | None = None
        try:
            if epoch != self._epoch:
                # Begun before a failure, but its task runs only now: on a new connection it
                # would be acknowledged before the failed forward is sent again, and a
                # consumer would see later samples of a signal first. Not handed over: its
                # range (its window) is sent again from the store. From this check to the
                # sink's call nothing suspends, so no failure can come in between.
                return None
            if samples:
                async with asyncio.timeout(self.send_timeout_s) as deadline:
                    await self.sink.forward(samples, historical)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            # The sink (or its library) raised CancelledError on its own: a failure like any
            # other, with backoff — not a reason to resend at once, forever.
            self._failed("forward cancelled by the sink", epoch, len(samples) if was_up else 0)
        except SamplesRefusedError as exc:
            refused = self._refused(exc, samples)
            if refused is None:
                reason = f"the sink reported refusals of samples it was not given: {exc}"
                self._failed(reason, epoch, len(samples) if was_up else 0)
            elif exc.failure is None:
                delivered = len(samples) - len(refused)
                if not in_window:
                    self._mark(first, last)
                else:  # the window may be sent again: what it gave up must not be, nor lost again
                    self._mark_given_up(first, last, ids, kept, refused)
                self._count(delivered, historical, epoch, True)
                self._quarantine(samples, refused, probes, withheld, taken=True)
                self.stats.last_error = str(exc)
                return delivered
            else:
                # Then the forward failed (a broker that drops the connection after refusing a
                # message): only the refused are done; the rest is sent again, as backlog.
                self._mark_given_up(first, last, ids, kept, refused, withheld=False)
                self._quarantine(samples, refused, probes, [], taken=False)
                self._failed(str(exc), epoch, len(samples) - len(refused) if was_up else 0)
        except Exception as exc:  # any failure of the sink: retry from the store, never crash
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                reason = (
                    f"forward not acknowledged within {self.send_timeout_s:g} s (send_timeout_s)"
                )
            else:
                reason = str(exc) or f"{type(exc).__name__} (without a message) from the sink"
            self._failed(reason, epoch, len(samples) if was_up else 0)
        else:
            if not in_window:
                self._mark(first, last)
            elif withheld:
                self._mark_given_up(first, last, ids, kept, {})
            self._count(len(samples), historical, epoch, bool(samples))
            if probes or withheld:
                self._quarantine(samples, {}, probes, withheld, taken=True)
            return len(samples)
        finally:
            for probe in probes:
                probe.probing = False
            if not in_window:
                self._busy.remove(first, last)
            self._wake.set()
        return None

    def _mark(self, first: int, last: int) -> None:
        """``first..last`` is done (delivered, or given up by the caller)."""
        self._delivered.add(first, last)
        self._version += 1
        self._backlog_changed()

    def _mark_given_up(
        self,
        first: int,
        last: int,
        ids: Sequence[int] | None,
        kept: list[int] | None,
        refused: dict[int, tuple[str, str]],
        *,
        withheld: bool = True,
    ) -> None:
        """Mark done, one by one, the samples of a batch (ids ``first..last``, or ``ids``) given
        up: those ``refused`` (positions among the samples sent, ``kept``) and, if
        ``withheld``, those not sent because their signal is quarantined. The rest of the
        range may be sent again (a failed forward, or another part of its window failed);
        these are then not sent, nor recorded lost, a second time."""
        every = range(first, last + 1) if ids is None else ids
        done = [every[index if kept is None else kept[index]] for index in refused]
        if withheld and kept is not None:
            sent = set(kept)
            done += [sample_id for at, sample_id in enumerate(every) if at not in sent]
        if not done:
            return
        add = self._delivered.add
        for sample_id in done:
            add(sample_id, sample_id)
        self._version += 1
        self._backlog_changed()

    def _count(self, count: int, historical: bool, epoch: int, answered: bool) -> None:
        """``count`` samples delivered; ``answered``: the sink was given something and
        answered (so it is up)."""
        self.stats.delivered += count
        if historical:
            self.stats.delivered_historical += count
        if answered and epoch == self._epoch and self.stats.state is not SinkState.UP:
            self.stats.state = SinkState.UP
            self.stats.sessions += 1
            self._backoff.reset()
            self._seen_away = False
            self._log.info("sink.up", sessions=self.stats.sessions, backlog=self.stats.backlog)

    # -- quarantine of what the destination refuses ---------------------------------------------
    def _screen(
        self, samples: list[Sample]
    ) -> tuple[list[int], list[tuple[Sample, Quarantined]], list[Quarantined]]:
        """Split a batch: the positions of the samples to send, those withheld (their signal is
        quarantined and not due for a probe) and the quarantines this batch probes."""
        quarantined = self.stats.quarantined
        now = asyncio.get_running_loop().time()
        kept: list[int] = []
        withheld: list[tuple[Sample, Quarantined]] = []
        probes: list[Quarantined] = []
        for position, sample in enumerate(samples):
            entry = quarantined.get(sample.signal)
            if entry is not None and not (entry.probing and entry in probes):
                if entry.probing or now < entry.probe_at:
                    withheld.append((sample, entry))
                    continue
                entry.probing = True  # this batch is the probe (all its samples of the signal)
                probes.append(entry)
            kept.append(position)
        return kept, withheld, probes

    @staticmethod
    def _refused(
        exc: SamplesRefusedError, samples: list[Sample]
    ) -> dict[int, tuple[str, str]] | None:
        """Position → (target, reason) of each refused sample; None if a position is not one of
        ``samples`` (a broken sink: the batch then counts as failed, and is sent again)."""
        refused: dict[int, tuple[str, str]] = {}
        for refusal in exc.refusals:
            for index in refusal.indices:
                if not 0 <= index < len(samples):
                    return None
                refused[index] = (refusal.target, refusal.reason)
        return refused

    def _quarantine(
        self,
        sent: list[Sample],
        refused: dict[int, tuple[str, str]],
        probes: list[Quarantined],
        withheld: list[tuple[Sample, Quarantined]],
        *,
        taken: bool,
    ) -> None:
        """Give up the refused and withheld samples (recorded as losses with the next commit),
        quarantine the signals refused, and (if the destination ``taken`` the rest) release
        those whose probe was not refused."""
        quarantined = self.stats.quarantined
        loop_time = asyncio.get_running_loop().time()
        lost: dict[tuple[str, str], list[int]] = {}  # (signal, reason) → seqs given up
        refused_signals: set[str] = set()
        for index, (target, why) in refused.items():
            sample = sent[index]
            refused_signals.add(sample.signal)
            entry = quarantined.get(sample.signal)
            reason = f"refused by sink {self.sink_id!r} ({target}): {why}"
            if entry is None:
                known = any(e.target == target for e in quarantined.values())
                entry = Quarantined(target, reason, Backoff(self.config.retry), loop_time)
                quarantined[sample.signal] = entry
                entry.probe_at = loop_time + entry.backoff.next_delay()
                if not known:  # logged once per target, until the destination takes it again
                    self._log.error(
                        "sink.refused",
                        target=target,
                        reason=why,
                        signal=sample.signal,
                        probe_in_s=round(entry.probe_at - loop_time, 2),
                    )
            elif entry in probes:
                entry.reason = reason
            self._lose(lost, sample, entry.reason)
            entry.refused += 1
        for entry in probes:  # refused again: probe later; else the destination takes it again
            if any(quarantined.get(signal) is entry for signal in refused_signals):
                entry.probe_at = loop_time + entry.backoff.next_delay()
        for signal in [s for s, e in quarantined.items() if taken and e in probes]:
            if signal not in refused_signals:
                entry = quarantined.pop(signal)
                self._log.info(
                    "sink.refusal_cleared",
                    target=entry.target,
                    signal=signal,
                    refused=entry.refused,
                )
        for sample, entry in withheld:
            # Given up with the refusal it was withheld for (even if a probe in flight meanwhile
            # was taken: this sample was not sent, and the cursor moves on).
            self._lose(lost, sample, entry.reason)
            entry.refused += 1
        count = 0
        for (signal, reason), seqs in lost.items():
            # One record per run of consecutive seqs: a record never spans a sample that was
            # delivered (a signal's refused and taken samples may alternate).
            seqs.sort()
            start = 0
            for at in range(1, len(seqs) + 1):
                if at == len(seqs) or seqs[at] != seqs[at - 1] + 1:
                    first_seq, last_seq = seqs[start], seqs[at - 1]
                    self._unsaved_losses.append(
                        Loss(signal, first_seq, last_seq, at - start, reason)
                    )
                    start = at
            count += len(seqs)
        self.stats.refused += count

    @staticmethod
    def _lose(lost: dict[tuple[str, str], list[int]], sample: Sample, reason: str) -> None:
        lost.setdefault((sample.signal, reason), []).append(sample.seq)

    def _failed(self, reason: str, epoch: int, resent: int) -> None:
        """A forward failed; ``resent`` samples of it were in flight on a working connection
        and may have arrived: they are sent again (possible duplicates upstream)."""
        self.stats.resent += resent
        self.stats.last_error = reason
        if epoch != self._epoch:
            return  # a send begun before the failure already counted
        self._epoch += 1
        self.stats.failures += 1
        was = self.stats.state
        self.stats.state = SinkState.DOWN
        delay = self._backoff.next_delay()
        self._retry_at = asyncio.get_running_loop().time() + delay
        for first, last, _ in self._live:
            self._busy.remove(first, last)
        self._live.clear()
        self._live_count = 0
        event = "sink.down" if was is not SinkState.DOWN else "sink.retry_failed"
        self._log.warning(
            event, reason=reason, retry_in_s=round(delay, 2), backlog=self._undelivered()
        )

    def _undelivered(self) -> int:
        return self._horizon - self._delivered.count(1, self._horizon)

    def _backlog_changed(self) -> None:
        """Set ``stats.backlog`` and ``stats.oldest_undelivered_ns`` together, now (nothing
        awaits in between, so no reader of the stats sees one without the other)."""
        stats = self.stats
        backlog = self._undelivered()
        if backlog == 0:
            stats.backlog, stats.oldest_undelivered_ns = 0, None
            return
        oldest = next(self._delivered.gaps(1, self._horizon))[0]
        known = self._oldest
        if known is not None and known[0] <= oldest:
            ts = known[1]  # exact, or an older sample's time until the store has answered
        else:  # not known yet (a backlog at start-up before read_oldest): from now on
            ts = now_ns() if stats.oldest_undelivered_ns is None else stats.oldest_undelivered_ns
        if (known is None or known[0] != oldest) and oldest != self._oldest_asked:
            self._oldest_stale.set()
        stats.backlog, stats.oldest_undelivered_ns = backlog, ts

    # -- retention -------------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        """Check retention every :data:`_HOUSEKEEPING_S`; in between, read the time of the
        oldest undelivered sample as soon as it is a sample whose time is not known."""
        loop = asyncio.get_running_loop()
        check_at = loop.time()
        while True:
            self._oldest_stale.clear()
            try:
                if loop.time() >= check_at:
                    check_at = loop.time() + _HOUSEKEEPING_S
                    await self._check_retention()
                else:
                    await self.read_oldest()
            except Exception as exc:  # a read error must not end retention for the run
                self._log.error("sink.retention_check_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(check_at):
                    await self._oldest_stale.wait()

    async def _check_retention(self) -> None:
        retention = self.config.retention
        await self.read_oldest()
        backlog = self._undelivered()
        oldest = next(self._delivered.gaps(1, self._horizon), None)
        if oldest is None:
            return
        ts = self.stats.oldest_undelivered_ns
        if retention.policy != "drop_oldest":
            return
        if self.stats.state is not SinkState.UP and self._tasks:
            # A probe holds the oldest page: it may yet be delivered. Drop next time, so that
            # what is dropped is always the oldest.
            return
        if retention.max_samples is not None and backlog > retention.max_samples:
            await self._give_up(
                self._oldest_free(backlog - retention.max_samples),
                f"retention bound of {retention.max_samples} undelivered samples",
            )
        if retention.max_age_s is not None and ts is not None:
            cutoff = now_ns() - int(retention.max_age_s * 1e9)
            if ts < cutoff:
                boundary = await self._reader.last_before(oldest[0], self._horizon, cutoff)
                ranges = list(self._delivered.gaps(oldest[0], boundary, self._busy))
                await self._give_up(ranges, f"retention bound of {retention.max_age_s} s")
                await self.read_oldest()

    def _oldest_free(self, count: int) -> list[tuple[int, int]]:
        """The ``count`` oldest undelivered ids that are not being sent, as ranges."""
        ranges = []
        for first, last in self._delivered.gaps(1, self._horizon, self._busy):
            take = min(count, last - first + 1)
            ranges.append((first, first + take - 1))
            count -= take
            if count <= 0:
                break
        return ranges

    async def _give_up(self, ranges: list[tuple[int, int]], bound: str) -> None:
        """Record ``ranges`` as lost to this sink, then count them as delivered."""
        if not ranges:
            return
        for first, last in ranges:
            self._busy.add(first, last)
        try:
            reason = f"not delivered to sink {self.sink_id!r}: {bound} exceeded (drop_oldest)"
            losses = await self._reader.runs(ranges, reason)
        finally:
            for first, last in ranges:
                self._busy.remove(first, last)
        dropped = sum(loss.count for loss in losses)
        for first, last in ranges:
            self._delivered.add(first, last)
        self._unsaved_losses.extend(losses)
        self._version += 1
        self.stats.dropped += dropped
        self._backlog_changed()
        now = time.monotonic()
        if now - self._last_loss_log > 5.0:
            self._last_loss_log = now
            self._log.error(
                "sink.samples_dropped",
                dropped=dropped,
                dropped_total=self.stats.dropped,
                reason=reason,
                losses=[(x.signal, x.first_seq, x.last_seq, x.count) for x in losses[:20]],
            )
        self._wake.set()
