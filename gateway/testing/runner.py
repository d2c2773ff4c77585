"""A whole gateway in process, for a test: start, wait for committed samples, stop, read back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from ..control import CommandOutcome, CommandRequest, Signature
from ..loader import Plan, load_plan
from ..model import Sample
from ..pluginmanager import build_registry
from ..runtime import Gateway, RunSummary
from ..runtime.instrument import InstrumentRunner
from ..store.sqlite import SampleStore
from ._wait import wait_until
from .sinks import RecordingSink, RecordingSinks

__all__ = ["GatewayRun"]


class GatewayRun:
    """``async with GatewayRun(config_path) as run:`` runs the gateway of a configuration file
    (or of a :class:`~gateway.Plan`) as ``patgw run`` would, in this process and event loop,
    until the block ends; then stops it (the final commit included) and keeps its
    :attr:`summary`.

    For a file, the registry holds the installed plugins (``entry_points=False``: none),
    ``plugins`` (plugin objects, e.g. a module with ``@hookimpl`` functions) and the
    :class:`RecordingSinks` plugin, so the configuration may use ``type: recording`` sinks
    (:meth:`sink`). A :class:`~gateway.Plan` is run as it is.

    :meth:`wait_for_samples` and :meth:`samples` read the store (read-only, as ``patgw
    export`` does): what they return was committed, not merely published. :meth:`command` runs
    a device command through the running gateway's controlled write path.
    """

    def __init__(
        self,
        config: Path | str | Plan,
        *,
        plugins: Iterable[object] = (),
        entry_points: bool = True,
        duration_s: float | None = None,
    ) -> None:
        self.recorders = RecordingSinks()
        if isinstance(config, Plan):
            self.plan = config
        else:
            registry = build_registry([*plugins, self.recorders], entry_points=entry_points)
            self.plan = load_plan(Path(config), registry)
        self.gateway = Gateway(self.plan)
        self.summary: RunSummary | None = None
        """What the run did, once stopped."""
        self._duration_s = duration_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[RunSummary] | None = None
        self._store: SampleStore | None = None

    async def __aenter__(self) -> Self:
        task = asyncio.create_task(
            self.gateway.run(self._stop, self._duration_s), name="testing.gateway"
        )
        self._task = task
        started = asyncio.create_task(self.gateway.started.wait(), name="testing.started")
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            started.cancel()
            await asyncio.gather(started, return_exceptions=True)
            self.summary = task.result()  # the error that ended the start, if any
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> RunSummary:
        """Stop the gateway (as SIGTERM does) and return its summary; again: the same summary."""
        if self._task is None:
            raise RuntimeError("the gateway was never started")
        self._stop.set()
        try:
            self.summary = await self._task
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None
        return self.summary

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def sink(self, sink_id: str) -> RecordingSink:
        """The ``recording`` sink with id ``sink_id``."""
        try:
            return self.recorders.sinks[sink_id]
        except KeyError:
            known = ", ".join(self.recorders.sinks) or "none"
            raise KeyError(f"no recording sink {sink_id!r} (recording sinks: {known})") from None

    def instrument(self, instrument_id: str) -> InstrumentRunner:
        """The runner of an instrument: its ``state``, ``sessions``, ``failures``,
        ``last_error``."""
        for runner in self.gateway.runners:
            if runner.instrument_id == instrument_id:
                return runner
        raise KeyError(f"no running instrument {instrument_id!r}")

    def samples(self, signal: str | None = None) -> list[Sample]:
        """The committed samples, in commit order; of the signals matching ``signal`` (an id or
        a shell wildcard, ``*/balance/*``) if given. Works during the run and after it."""
        if self.running:
            if self._store is None:
                self._store = SampleStore(self.plan.config.store.path, read_only=True)
            return list(self._store.samples(signal))
        store = SampleStore(self.plan.config.store.path, read_only=True)
        try:
            return list(store.samples(signal))
        finally:
            store.close()

    async def wait_for_samples(self, signal: str, count: int, within: float = 10.0) -> None:
        """Wait until ``count`` samples of ``signal`` (as in :meth:`samples`) are committed.
        Raises ``TimeoutError`` saying how many were and the instruments' states, or the error
        that ended the run."""

        def enough() -> bool:
            if self._task is not None and self._task.done():
                self._task.result()  # the run's error, if it ended by one
                raise RuntimeError(f"the gateway stopped before {count} samples of {signal!r}")
            return len(self.samples(signal)) >= count

        def progress() -> str:
            states = ", ".join(
                f"{r.instrument_id}: {r.state} (last error: {r.last_error})"
                for r in self.gateway.runners
            )
            return (
                f"{len(self.samples(signal))} of {count} samples of {signal!r} committed; {states}"
            )

        await wait_until(enough, within, progress, interval=0.05)

    async def command(
        self,
        target: str,
        *,
        user: str,
        password: str,
        reason: str,
        arguments: Mapping[str, Any] | None = None,
        meaning: str | None = None,
    ) -> CommandOutcome:
        """Run the declared device command ``target`` (``commands:``) as ``user`` (of the
        configuration's ``security.users``, logged in with ``password``), through the same path
        as the local API's (roles, reason, signature with ``meaning``, audit), interface
        ``test``; its outcome (``ok``, ``result``, ``rule``, the audit ``records``)."""
        access = self.plan.access
        identity = await asyncio.to_thread(
            access.authority.authenticate, user, password, interface="test"
        )
        signature = Signature(meaning) if meaning is not None else None
        return await access.command(
            CommandRequest(target, identity, reason, "test", dict(arguments or {}), signature)
        )
