"""The asynchronous side of the store: batch, commit off the event loop, handle a full disk.

Drivers append rows to :attr:`StoreWriter.pending` (a plain list: the cheapest thing the hot
path can do). Every ``commit_interval_ms`` the writer takes what is pending and commits it in one
transaction on a dedicated thread, together with the sequence counters.

When a commit fails (disk full, I/O error) nothing is lost at first: the batch is kept and retried
at the next interval, while new samples keep arriving. Only when more than
``max_pending_samples`` wait does the ``on_full`` policy drop samples — the newest
(``drop_newest``) or the oldest (``drop_oldest``). Every dropped sample is counted in
:class:`WriterStats`, logged, and recorded per signal in the store's ``loss`` table as soon as
the store accepts writes again; the reason names the error the failing commit got (SQLite's
words and code, e.g. ``database or disk is full (SQLITE_FULL)``).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import functools
import operator
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import structlog

from ..config import StoreConfig
from ..errors import StoreError
from ..timefmt import now_ns
from .sqlite import Loss, Row, SampleStore

if TYPE_CHECKING:
    from ..runtime.forward import DeliveryUpdate

__all__ = ["LATENCY_BUCKETS_S", "StoreWriter", "WriterStats"]

log = structlog.get_logger("gateway.store")

_def_id = operator.itemgetter(0)
T = TypeVar("T")


# Upper bounds (seconds) of the commit latency histogram exported as metrics.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DeliverySource(Protocol):
    """A store-and-forward sink's bookkeeping, as the writer sees it."""

    def take_delivery(self) -> DeliveryUpdate | None: ...

    def delivery_saved(self, update: DeliveryUpdate) -> None: ...

    def commit_blocked(self) -> str | None: ...


@dataclass
class WriterStats:
    """Counters of the writer, read by the live view, the benchmark and tests."""

    committed: int = 0
    batches: int = 0
    dropped: int = 0
    failed_commits: int = 0
    repaired: int = 0
    dropped_late: int = 0
    last_error: str | None = None
    commit_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    # Committed samples per signal definition id (the store's def_id; see StoreWriter.names).
    committed_by_def: Counter[int] = field(default_factory=Counter)
    # Dropped samples per def_id: with committed_by_def, what each producer lost (metrics).
    dropped_by_def: Counter[int] = field(default_factory=Counter)
    # Commit latency histogram: counts per LATENCY_BUCKETS_S upper bound (+inf last), and sum.
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        """Record one batch's latency in the list and the histogram."""
        self.commit_latency_ms.append(seconds * 1000)
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds

    def latency_percentile(self, fraction: float) -> float | None:
        """Latency (ms) from a batch's oldest sample arriving to its commit, at ``fraction``."""
        if not self.commit_latency_ms:
            return None
        ordered = sorted(self.commit_latency_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _failure_cause(exc: StoreError) -> str:
    """Why a commit failed, for a loss reason: SQLite's own words (``database or disk is full``)
    and code, without the batch size, so the losses of one outage merge into few records."""
    error = exc.__cause__
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorname", None)
        return f"{error} ({code})" if code else str(error)
    return str(exc)


class StoreWriter:
    """Commits pending rows in batches on ``executor`` (one thread: SQLite's single writer).

    The writer owns the executor and the store: :meth:`aclose` closes both.
    """

    @staticmethod
    def new_executor() -> ThreadPoolExecutor:
        """The single thread all of a store's work runs on."""
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="patgw-store")

    def __init__(
        self,
        store: SampleStore,
        config: StoreConfig,
        *,
        names: Mapping[int, tuple[str, str]],
        executor: ThreadPoolExecutor,
    ) -> None:
        self.store = store
        self.config = config
        self.pending: list[Row] = []
        self.stats = WriterStats()
        self._retry: list[Row] = []
        self._losses: list[Loss] = []
        self.names = names
        # Called with the id of the first row and every committed batch (the sinks' offer);
        # must not block.
        self.on_commit: list[Callable[[int, Sequence[Row]], None]] = []
        # Store-and-forward sinks: their progress is saved with each commit, and any of them
        # may refuse commits (retention policy "stop").
        self.delivery_sources: list[DeliverySource] = []
        self._closing = False
        self._saved_seq: dict[str, int] = {}
        self._executor = executor
        self._last_failure_log = 0.0
        self._last_drop_log = 0.0
        # Why the latest commit failed (None once one succeeds): the cause given for what the
        # bound then drops, so a loss on a full disk says the disk is full.
        self._commit_failure: str | None = None
        # (signal, reason) → index in _losses of the run a new loss may continue
        self._open_runs: dict[tuple[str, str], int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Commit every interval until ``stop`` is set, then commit what is left."""
        interval = self.config.commit_interval_ms / 1000
        loop = asyncio.get_running_loop()
        # A fixed cadence, not a fixed pause after each commit: a sample then waits at most
        # one interval (plus the commit itself) before it is durable.
        deadline = loop.time()
        while not stop.is_set():
            deadline = max(deadline + interval, loop.time())
            try:
                async with asyncio.timeout_at(deadline):
                    await stop.wait()
            except TimeoutError:
                pass
            await self._watched_flush(interval)
        # Shutting down: a sink's retention policy "stop" no longer holds samples back — they
        # would otherwise be discarded, and the store can take them.
        self._closing = True
        await self._watched_flush(interval)
        for _ in range(3):
            if not (self.pending or self._retry or self._losses):
                return
            await asyncio.sleep(interval)
            await self._watched_flush(interval)
        failure = f": {self._commit_failure}" if self._commit_failure else ""
        self.abandon(f"store could not commit before shutdown{failure}")

    async def _watched_flush(self, interval: float) -> None:
        """Flush; while a commit hangs (a stalled disk), keep the waiting samples bounded."""
        commit = asyncio.create_task(self.flush(), name="store.commit")
        while not commit.done():
            await asyncio.wait({commit}, timeout=interval)
            excess = len(self.pending) - self.config.max_pending_samples
            if excess > 0 and not commit.done():
                if self.config.on_full == "drop_newest":
                    dropped = self.pending[-excess:]
                    del self.pending[-excess:]
                else:
                    dropped = self.pending[:excess]
                    del self.pending[:excess]
                self._drop(dropped, "commit does not return")
        commit.result()

    def abandon(self, cause: str) -> None:
        """Count and log what can no longer be committed (shutdown): never a silent loss.

        The sequence counters of these samples are not saved either: the next run may hand out
        the same numbers. That is visible here, and such samples never reached a sink.
        """
        left = self._retry + self.pending
        self._retry, self.pending[:] = [], []
        self._add_losses(self._losses_of(left, cause))
        losses, self._losses = self._losses, []
        self.stats.dropped += len(left)
        self.stats.dropped_by_def.update(map(_def_id, left))
        if left or losses:
            log.error(
                "store.unsaved_at_shutdown",
                samples=len(left),
                losses=[(x.signal, x.first_seq, x.last_seq, x.count, x.reason) for x in losses],
                error=self.stats.last_error,
            )

    def _counters(
        self, batch: Sequence[Row], losses: Sequence[Loss], saved: Mapping[str, int]
    ) -> dict[str, int]:
        """Each signal's next seq after ``batch`` and ``losses`` (those not saved already): one
        past the last seq committed or lost. Every seq an output hands out ends in a row or a
        loss, so this is the outputs' counter, read from the batch (its rows, a fraction of
        the signals at a short interval) rather than from every output at every commit."""
        last: dict[int, int] = {}
        for row in batch:  # in publication order: each def_id's last row has its highest seq
            last[row[0]] = row[1]
        names = self.names
        counters: dict[str, int] = {}
        for def_id, seq in last.items():
            name = names[def_id][0]
            if counters.get(name, 0) <= seq:  # (a signal whose unit changed has two def_ids)
                counters[name] = seq + 1
        for loss in losses:
            if counters.get(loss.signal, 0) <= loss.last_seq:
                counters[loss.signal] = loss.last_seq + 1
        return {k: v for k, v in counters.items() if saved.get(k, -1) < v}

    async def flush(self) -> None:
        """Commit everything pending now, with the losses to record and the sinks' delivery
        progress (one transaction)."""
        taken = [(s, u) for s in self.delivery_sources if (u := s.take_delivery()) is not None]
        updates = [u for _, u in taken]
        if not (self.pending or self._retry or self._losses or updates):
            return
        batch = self._retry + self.pending if self._retry else self.pending[:]
        self.pending.clear()
        blocked = (
            None
            if self._closing
            else next(filter(None, (s.commit_blocked() for s in self.delivery_sources)), None)
        )
        if blocked is not None and batch:
            # A sink's retention policy "stop": hold the samples (bounded) as on a full disk.
            self._retry = self._bound(batch, blocked)
            self._failed(blocked, None)
            batch = []
        elif len(batch) > self.config.max_pending_samples:
            # Commits fail (the batch piled up for a retry), or lag behind the instruments (not
            # failing, just too slow): the same bound, with the cause that applies.
            batch = self._bound(
                batch,
                f"store could not commit: {self._commit_failure}"
                if self._commit_failure
                else "commits lag behind the instruments",
            )
        saved = self._saved_seq
        # Taken out (not copied): a drop while the commit runs must start a new record rather
        # than extend one that is being saved.
        own_losses, self._losses = self._losses, []
        # With the losses too: the seq numbers of dropped samples are never handed out again.
        counters = self._counters(batch, own_losses, saved) if batch or own_losses else {}
        self._open_runs.clear()
        losses = own_losses + [loss for u in updates for loss in u.losses]
        commit = functools.partial(
            self.store.commit,
            batch,
            counters,
            losses=losses,
            deliveries=[u.delivery for u in updates],
        )
        loop = asyncio.get_running_loop()
        try:
            stored = await loop.run_in_executor(self._executor, commit)
        except StoreError as exc:  # disk full, I/O error: keep the batch and retry
            self._restore_losses(own_losses)
            self._commit_failure = _failure_cause(exc)
            self._retry = self._bound(batch, f"store could not commit: {self._commit_failure}")
            self._failed(str(exc), None)
            return
        except Exception as exc:  # a bug: retrying the same batch would fail forever
            self._restore_losses(own_losses)
            self._retry = []
            self._drop(batch, f"commit failed: {exc!r}")
            self._failed(repr(exc), exc)
            return
        self._commit_failure = None
        self._saved_seq.update(counters)
        for source, update in taken:
            source.delivery_saved(update)
        if not batch:
            return
        if self._retry:
            log.info("store.recovered", committed=len(batch), dropped_total=self.stats.dropped)
        self._retry = []
        if stored is not batch:
            repaired = sum(1 for a, b in zip(batch, stored, strict=True) if a is not b)
            self.stats.repaired += repaired
            log.error("store.samples_repaired", samples=repaired)
            batch = list(stored)
        self.stats.committed += len(batch)
        self.stats.batches += 1
        self.stats.last_error = None
        self.stats.observe_latency((now_ns() - batch[0][3]) / 1e9)
        self.stats.committed_by_def.update(map(_def_id, batch))
        first_id = self.store.last_committed_id - len(batch) + 1
        for deliver in self.on_commit:
            deliver(first_id, batch)

    def _restore_losses(self, unsaved: list[Loss]) -> None:
        """Put back losses a failed commit did not record, so later drops extend them."""
        self._losses = unsaved + self._losses
        self._open_runs = {(x.signal, x.reason): i for i, x in enumerate(self._losses)}

    def _failed(self, error: str, exc: BaseException | None) -> None:
        self.stats.failed_commits += 1
        self.stats.last_error = error
        if time.monotonic() - self._last_failure_log > 5.0:  # a full disk fails every interval
            self._last_failure_log = time.monotonic()
            log.error(
                "store.commit_failed",
                error=error,
                waiting=len(self._retry) + len(self.pending),
                max_pending=self.config.max_pending_samples,
                policy=self.config.on_full,
                dropped_total=self.stats.dropped,
                exc_info=exc,
            )

    def _bound(self, batch: list[Row], cause: str) -> list[Row]:
        excess = len(batch) - self.config.max_pending_samples
        if excess <= 0:
            return batch
        if self.config.on_full == "drop_newest":
            kept, dropped = batch[:-excess], batch[-excess:]
        else:
            kept, dropped = batch[excess:], batch[:excess]
        self._drop(dropped, f"{self.config.on_full}: {cause}")
        return kept

    def _drop(self, rows: list[Row], reason: str) -> None:
        """Count, record (as losses) and log rows that will never be committed."""
        if not rows:
            return
        self.stats.dropped += len(rows)
        self.stats.dropped_by_def.update(map(_def_id, rows))
        losses = self._losses_of(rows, reason)
        self._add_losses(losses)
        now = time.monotonic()
        if now - self._last_drop_log > 5.0:
            self._last_drop_log = now
            log.error(
                "store.samples_dropped",
                dropped=len(rows),
                dropped_total=self.stats.dropped,
                reason=reason,
                losses=[(x.signal, x.first_seq, x.last_seq, x.count) for x in losses[:20]],
            )

    def _add_losses(self, losses: list[Loss]) -> None:
        """Append, merging a run that continues the previous one of its signal and reason, so a
        long outage is a few records rather than one per signal per interval."""
        for loss in losses:
            key = (loss.signal, loss.reason)
            index = self._open_runs.get(key)
            if index is not None and index < len(self._losses):
                last = self._losses[index]
                if (last.signal, last.reason) == key and last.last_seq + 1 == loss.first_seq:
                    self._losses[index] = Loss(
                        loss.signal,
                        last.first_seq,
                        loss.last_seq,
                        last.count + loss.count,
                        loss.reason,
                    )
                    continue
            self._open_runs[key] = len(self._losses)
            self._losses.append(loss)

    def _losses_of(self, rows: list[Row], reason: str) -> list[Loss]:
        """Per-signal runs of ``rows`` (contiguous in ``seq``: rows are dropped in order)."""
        runs: dict[int, list[int]] = {}
        for row in rows:
            first_last_count = runs.get(row[0])
            if first_last_count is None:
                runs[row[0]] = [row[1], row[1], 1]
            else:
                first_last_count[1] = row[1]
                first_last_count[2] += 1
        return [
            Loss(self.names.get(def_id, (f"#{def_id}", ""))[0], first, last, count, reason)
            for def_id, (first, last, count) in runs.items()
        ]

    def lose(self, rows: list[Row], reason: str) -> None:
        """Count ``rows`` as dropped and record them as losses (per signal, with their seq
        range), saved by the next :meth:`flush` — for rows that can no longer be committed."""
        self._drop(rows, reason)

    @property
    def unsaved_losses(self) -> int:
        """Loss records waiting for the next commit."""
        return len(self._losses)

    @property
    def waiting(self) -> int:
        """Samples published but not committed yet (pending, and kept for a retry)."""
        return len(self.pending) + len(self._retry)

    async def call(self, fn: Callable[[SampleStore], T]) -> T:
        """Run ``fn(store)`` on the store's thread (reads at start-up, between commits)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self.store)

    def call_blocking(self, fn: Callable[[SampleStore], T], stop: threading.Event) -> T:
        """From another thread: run ``fn(store)`` on the store's thread, between two commits,
        and wait for it. ``StoreError`` if ``stop`` is set while it has not run yet (a stalled
        disk must not hold up a shutdown)."""
        future = self._executor.submit(fn, self.store)
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    future.cancel()
                    raise StoreError("the store did not answer before shutdown") from None

    async def aclose(self) -> None:
        """Stop the writer thread and close the store."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.store.close)
        self._executor.shutdown(wait=True)
