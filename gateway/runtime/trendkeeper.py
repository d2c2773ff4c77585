"""Keeps the store's trend rollups up to date, on a thread and connection of their own.

About once a second (:data:`~gateway.store.trends.ROLL_EVERY_S`) the ``store.trends`` task asks
its :class:`~gateway.store.trends.Roller` to roll up what the store committed since, in chunks
until it has caught up (a backlog, such as a store older than its trends file, is rolled up a
chunk at a time, with the stop looked at between chunks). The roller reads the store as a WAL
reader and writes only its own file, so the store writer never waits for it; its SQL runs in
SQLite's C code with the GIL released. If it fails (disk full, a damaged trends file), it is
logged once, shown on /health, and tried again at the next interval with a new connection:
trends lag, samples are never affected. A trends file deleted or replaced while running is
noticed at the next interval (its identity changed) and made again from the samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from ..store.trends import ROLL_EVERY_S, Roller

__all__ = ["TrendKeeper", "TrendStats"]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


log = structlog.get_logger("gateway.store")


@dataclass
class TrendStats:
    """Counters of the trend roll-up (this run), for /health and tests."""

    rolled: int = 0  # sample ids rolled over this run
    rolled_id: int = 0  # the mark: every sample up to this id is in the rollups
    last_roll_ms: float | None = None  # how long the last roll-up (all its chunks) took
    failing: str | None = None  # why rolling up fails (None: it does not)


class TrendKeeper:
    """Owns a :class:`Roller` and the thread it runs on."""

    def __init__(self, store_path: Path, interval_s: float = ROLL_EVERY_S) -> None:
        self.store_path = store_path
        self.interval_s = interval_s
        self.stats = TrendStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patgw-trends")
        self._roller: Roller | None = None
        self._opened: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._stop = threading.Event()
        self._last_failure_log = 0.0

    async def run(self) -> None:
        """Roll up every interval until cancelled; a roll-up in progress finishes its chunk
        (a transaction of the trends file) before the cancellation ends it."""
        loop = asyncio.get_running_loop()
        while True:
            started = time.perf_counter()
            future = loop.run_in_executor(self._executor, self._catch_up)
            try:
                rolled = await asyncio.shield(future)
            except asyncio.CancelledError:
                self._stop.set()
                await asyncio.wait({future})
                raise
            except Exception as exc:  # StoreError or a bug: trends lag, samples are unaffected
                self._failed(str(exc))
            else:
                self._done(rolled, time.perf_counter() - started)
            await asyncio.sleep(self.interval_s)

    def _catch_up(self) -> int:
        """On the thread: roll up chunk after chunk until caught up or told to stop."""
        roller = self._open()
        total = 0
        try:
            while not self._stop.is_set():
                rolled = roller.roll()
                total += rolled
                if rolled < roller.chunk_rows:
                    break
        except BaseException:
            self._drop()  # the next interval starts again with a new connection
            raise
        self.stats.rolled_id = roller.rolled_id
        return total

    def _open(self) -> Roller:
        """The roller, opened again if its file was deleted or replaced since it was opened."""
        if self._roller is not None and _identity(self._roller.path) != self._opened:
            log.warning("store.trends_file_replaced", trends=str(self._roller.path))
            self._drop()
        if self._roller is None:
            self._roller = Roller(self.store_path)
            self._opened = _identity(self._roller.path)
        return self._roller

    def _drop(self) -> None:
        if self._roller is not None:
            with contextlib.suppress(Exception):
                self._roller.close()
            self._roller = None

    def _done(self, rolled: int, seconds: float) -> None:
        stats = self.stats
        stats.rolled += rolled
        stats.last_roll_ms = round(seconds * 1000, 1)
        if stats.failing is not None:
            log.info("store.trends_resumed", after=stats.failing)
            stats.failing = None

    def _failed(self, reason: str) -> None:
        now = time.monotonic()
        if reason != self.stats.failing or now - self._last_failure_log > 300:
            self._last_failure_log = now
            log.error("store.trends_failing", reason=reason, retry_in_s=self.interval_s)
        self.stats.failing = reason

    async def aclose(self) -> None:
        """Close the roller's connection on its thread, then the thread."""
        self._stop.set()
        loop = asyncio.get_running_loop()
        try:
            if self._roller is not None:
                await loop.run_in_executor(self._executor, self._roller.close)
        finally:
            self._executor.shutdown(wait=True)
