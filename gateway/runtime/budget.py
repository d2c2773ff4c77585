"""Runs the store budget's pruner in the background, on a thread and connection of its own.

Every ``store.budget.check_interval_s`` it asks :class:`~gateway.store.prune.Pruner` to archive
and prune what is over budget and released by every store-and-forward sink. When the archive
cannot be written (folder missing or not writable, disk full) or the store refuses, pruning
*pauses*: nothing of that run is deleted, the reason is logged once and shown on /health, and the
next interval tries again. A sink that holds samples back is shown on /health too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from ..store.prune import ArchiveError, Pruner, PruneReport

__all__ = ["BudgetKeeper", "BudgetStats"]

log = structlog.get_logger("gateway.store")


@dataclass
class BudgetStats:
    """Counters of the store budget (this run), for /health, /metrics and tests."""

    runs: int = 0  # completed checks
    pruned: int = 0  # samples deleted
    archive_files: int = 0  # archive files written
    paused: str | None = None  # why pruning is paused (None: it is not)
    holding: dict[str, int] = field(default_factory=dict)  # sink -> samples it holds back
    last_run_ms: float | None = None  # how long the last check took


class BudgetKeeper:
    """Owns a :class:`Pruner` and the thread it runs on."""

    def __init__(
        self,
        pruner: Pruner,
        interval_s: float,
        on_pruned: Callable[[PruneReport], None] | None = None,
    ) -> None:
        self.pruner = pruner
        self.interval_s = interval_s
        self.on_pruned = on_pruned  # told of each run that pruned (the audit trail)
        self.stats = BudgetStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patgw-prune")
        self._last_pause_log = 0.0

    async def run(self) -> None:
        """Check the budget every interval until cancelled; a run in progress is stopped
        between two chunks (never cut in the middle of one) before the cancellation ends it."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval_s)
            started = time.perf_counter()
            future = loop.run_in_executor(self._executor, self.pruner.prune)
            try:
                report = await asyncio.shield(future)
            except asyncio.CancelledError:
                self.pruner.stop.set()
                await asyncio.wait({future})
                raise
            except ArchiveError as exc:
                self._pause(f"archive: {exc}")
                continue
            except Exception as exc:  # StoreError or a bug: pause, never crash the gateway
                self._pause(f"store: {exc}")
                continue
            self._done(report, time.perf_counter() - started)

    def _done(self, report: PruneReport, seconds: float) -> None:
        stats = self.stats
        stats.runs += 1
        stats.pruned += report.pruned
        stats.archive_files += len(report.files)
        stats.last_run_ms = round(seconds * 1000, 1)
        if stats.holding.keys() != report.holding.keys():
            for sink in report.holding.keys() - stats.holding.keys():
                log.warning(
                    "store.prune_held",
                    sink=sink,
                    samples=report.holding[sink],
                    wanted=report.wanted,
                )
        stats.holding = report.holding
        if stats.paused is not None:
            log.info("store.prune_resumed", after=stats.paused)
            stats.paused = None
        if report.pruned:
            log.info(
                "store.pruned",
                samples=report.pruned,
                files=report.files,
                released_through=report.released,
                ms=stats.last_run_ms,
            )
            if self.on_pruned is not None:
                self.on_pruned(report)

    def _pause(self, reason: str) -> None:
        now = time.monotonic()
        if reason != self.stats.paused or now - self._last_pause_log > 300:
            self._last_pause_log = now
            log.error("store.prune_paused", reason=reason, retry_in_s=self.interval_s)
        self.stats.paused = reason

    async def aclose(self) -> None:
        """Close the pruner's connections on its thread, then the thread."""
        self.pruner.stop.set()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self.pruner.close)
        finally:
            self._executor.shutdown(wait=True)
