"""The supervisor: starts everything in order, runs it in one TaskGroup, stops it in order.

Start: open the store and look up signal definitions and counters → enter emulators → enter
sinks → run the store writer, one runner per instrument and the live view as named tasks.
Stop (``stop`` event, ``--for`` elapsed, SIGINT/SIGTERM via the CLI): cancel the instruments and
the view → the writer commits what is left → sinks exit → emulators exit → the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from ..api import Output
from ..errors import GatewayError
from ..loader import ComponentPlan, Plan
from ..store.sqlite import SampleStore
from ..store.writer import StoreWriter, WriterStats
from .instrument import InstrumentRunner
from .outputs import FanOut, SignalOutput
from .view import run_view

__all__ = ["Gateway", "RunSummary"]

log = structlog.get_logger("gateway.runtime")


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run did, for the CLI's last log line and for tests."""

    committed: int
    dropped: int
    instruments: dict[str, dict[str, Any]]


class Gateway:
    """A configured gateway, run once with :meth:`run`."""

    def __init__(self, plan: Plan, *, interactive: bool = False) -> None:
        self.plan = plan
        self.interactive = interactive
        self.runners: list[InstrumentRunner] = []
        self.outputs: list[SignalOutput] = []
        self.writer: StoreWriter | None = None
        self.started = asyncio.Event()

    @property
    def stats(self) -> WriterStats:
        """The store writer's counters (only valid once :attr:`started` is set)."""
        assert self.writer is not None
        return self.writer.stats

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> RunSummary:
        """Run until ``stop`` is set or ``duration_s`` has passed; return what was done."""
        config = self.plan.config
        loop = asyncio.get_running_loop()
        executor = StoreWriter.new_executor()
        try:
            store = await loop.run_in_executor(
                executor,
                lambda: SampleStore(config.store.path, synchronous=config.store.synchronous),
            )
        except BaseException:
            executor.shutdown()
            raise
        try:
            stored = await loop.run_in_executor(executor, store.define, self.plan.signals)
        except BaseException:
            await loop.run_in_executor(executor, store.close)
            executor.shutdown()
            raise
        names = {stored[s.id].def_id: (s.id, s.unit) for s in self.plan.signals}
        writer_stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            for emulator in self.plan.emulators:
                await _enter(stack, emulator, "emulator")
                log.info("emulator.started", emulator=emulator.id, type=emulator.type)
            sinks = []
            for sink in self.plan.sinks:
                sinks.append((sink.id, await _enter(stack, sink, "sink")))
                log.info("sink.started", sink=sink.id, type=sink.type)
            writer = StoreWriter(
                store,
                config.store,
                next_seq=self._next_seq,
                names=names,
                sinks=sinks,
                executor=executor,
            )
            self.writer = writer
            stack.push_async_callback(writer.aclose)
            self._build_runners(stored, writer)
            log.info(
                "gateway.started",
                instruments=len(self.runners),
                signals=len(self.outputs),
                store=str(config.store.path),
            )
            self.started.set()
            async with asyncio.TaskGroup() as group:
                group.create_task(writer.run(writer_stop), name="store.writer")
                tasks = [
                    group.create_task(runner.run(), name=f"instrument.{runner.instrument_id}")
                    for runner in self.runners
                ]
                tasks.append(
                    group.create_task(run_view(self, interactive=self.interactive), name="view")
                )
                try:
                    async with asyncio.timeout(duration_s):
                        await stop.wait()
                except TimeoutError:
                    pass
                log.info("gateway.stopping")
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                writer_stop.set()
        summary = RunSummary(
            committed=writer.stats.committed,
            dropped=writer.stats.dropped,
            instruments={
                r.instrument_id: {"sessions": r.sessions, "failures": r.failures}
                for r in self.runners
            },
        )
        log.info("gateway.stopped", committed=summary.committed, dropped=summary.dropped)
        return summary

    def _build_runners(self, stored: Mapping[str, Any], writer: StoreWriter) -> None:
        append = writer.pending.append
        for ip in self.plan.instruments:
            by_channel: dict[str, list[SignalOutput]] = defaultdict(list)
            signal_outputs = []
            for sp in ip.signals:
                info = stored[sp.signal.id]
                output = SignalOutput(sp.signal, sp.conversion, info.def_id, info.next_seq, append)
                by_channel[sp.channel].append(output)
                signal_outputs.append(output)
            channels: dict[str, Output] = {
                ch: outs[0] if len(outs) == 1 else FanOut(outs) for ch, outs in by_channel.items()
            }
            self.outputs.extend(signal_outputs)
            self.runners.append(InstrumentRunner(ip, channels, signal_outputs))

    def _next_seq(self) -> dict[str, int]:
        return {o.signal.id: o.seq for o in self.outputs}


async def _enter(stack: contextlib.AsyncExitStack, component: ComponentPlan, what: str) -> Any:
    """Enter an emulator or sink; a failure to start is a clear error naming it."""
    try:
        return await stack.enter_async_context(component.instance)
    except (OSError, GatewayError) as exc:
        raise GatewayError(
            f"{what} {component.id!r} ({component.type}) cannot start: {exc}"
        ) from exc
