"""The supervisor: starts everything in order, runs it in one TaskGroup, stops it in order.

Start: open the store and look up signal definitions and counters → enter emulators → attach
the sinks to the store (each resuming from its saved cursor if it forwards from the store) →
run the store writer, one runner per instrument, one per processor, one feeder or forwarder per
sink and the live view as named tasks (``gateway.running``). The sinks are entered *beside*
the instruments, one task each: a sink slow to start (the OPC UA server builds its address
space) delays no reading; until it is up, what is committed waits for it (in its bounded queue,
or in the store for a store-and-forward sink) and it catches up once entered. ``started`` is
set (``gateway.started``; ``/health/ready``) once every sink is up. A sink that cannot start
stops the run, in order, and its error ends it.

Stop (``stop`` event, ``--for`` elapsed, SIGINT/SIGTERM via the CLI), bounded by
``STOP_BOUND_S`` whatever the load: the live view stops → the instruments are cancelled
(waiting at most ``STOP_TIMEOUT_S`` for drivers to close) → the processors process what they
were given, in configuration order → the writer commits what is left → the sinks get what was
committed until the bound's sink deadline → feeders, forwarders stop → the forwarders' progress
is saved → sinks exit (together, within ``SINK_EXIT_S``) → emulators exit → anything a driver that
ignored its cancellation published after the final commit is recorded in the store as a loss
(signal, seq range, reason) → the store closes. The writer's final commit also runs when the
run ends by an error, so an exception never silently discards published samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from ..api import CommandDriver, Output, WritableDriver
from ..config import HttpConfig, SinkConfig
from ..console import Console
from ..control import WritePath
from ..errors import GatewayError
from ..http import serve_http
from ..loader import ComponentPlan, Plan, SignalPlan
from ..localapi import LocalApi
from ..model import SignalKind
from ..store.prune import Pruner
from ..store.sqlite import Row, SampleStore
from ..store.writer import StoreWriter, WriterStats
from .auditing import (
    ANCHOR_TIMEOUT_S,
    AnchorSink,
    AuditRecorder,
    LossTally,
    clock_event,
    close_recorder,
    open_recorder,
    pruned_event,
    started_event,
    stopped_event,
)
from .budget import BudgetKeeper
from .clock import ClockStep, ClockWatch
from .forward import BacklogReader, Forwarder
from .identity import IdentityKeeper
from .instrument import InstrumentRunner, InstrumentState
from .outputs import FanOut, SignalOutput, SpectrumOutput
from .processors import ProcessorRunner, tap
from .sinks import SinkFeeder
from .trendkeeper import TrendKeeper
from .view import run_view

__all__ = ["SINK_EXIT_S", "STOP_BOUND_S", "STOP_TIMEOUT_S", "Gateway", "RunSummary"]

log = structlog.get_logger("gateway.runtime")

T = TypeVar("T")

STOP_BOUND_S = 5.0
"""A stop ends within this many seconds of being asked for, whatever the load: drivers closed,
everything published committed (or recorded as a loss), sinks given what time is left, the
store closed. Emulators run in the same process (the demo) stop after, on their own time."""
STOP_TIMEOUT_S = 2.0
"""Of which the drivers get at most this long to close once cancelled (and writes under way at
most half of it to finish before)."""
SINK_EXIT_S = 1.0
"""What the sinks get to exit (together), at the end of the bound."""
_LAST_ANCHOR_S = 0.5  # the audit trail's last anchor upstream, before the sinks exit
_CLOSE_S = 1.0  # after the sinks: the store's and the audit trail's close, the process's exit


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run did, for the CLI's last log line and for tests."""

    committed: int
    dropped: int
    instruments: dict[str, dict[str, Any]]
    sinks: dict[str, dict[str, int]]
    processors: dict[str, dict[str, int]]


class Gateway:
    """A configured gateway, run once with :meth:`run`."""

    def __init__(self, plan: Plan, *, interactive: bool = False) -> None:
        self.plan = plan
        self.interactive = interactive
        self.runners: list[InstrumentRunner] = []
        self.processors: list[ProcessorRunner] = []
        self.outputs: list[SignalOutput] = []
        self.feeders: list[SinkFeeder] = []
        self.forwarders: list[Forwarder] = []
        self.first_seq: dict[str, int] = {}  # seq of each signal when this run started
        self.writer: StoreWriter | None = None
        self._reader: BacklogReader | None = None
        self.budget: BudgetKeeper | None = None  # the store budget's pruner, if configured
        self.trends: TrendKeeper | None = None  # the trend roll-up (store.trends)
        self.identities: IdentityKeeper | None = None  # device identities, once started
        self.http_address: tuple[str, int] | None = None  # where /health and /metrics answer
        self.started = asyncio.Event()
        self.stopping = False  # set once the run begins to stop (for /health)
        self.audit: AuditRecorder | None = None  # the audit trail, while the run lasts
        self.write_path: WritePath | None = None  # the controlled write path, once started
        self.clock = ClockWatch(self._clock_step)
        self._anchor_sinks: list[AnchorSink] = []
        self._delivery: dict[str, SinkFeeder | Forwarder] = {}  # by sink id
        # How long each step of the stop took (s), for the last log line and tests.
        self.stop_phases: dict[str, float] = {}
        self._after_close_logged = False
        self._late_refused = False

    @property
    def stats(self) -> WriterStats:
        """The store writer's counters (only valid once :attr:`started` is set)."""
        assert self.writer is not None
        return self.writer.stats

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> RunSummary:
        """Run until ``stop`` is set or ``duration_s`` has passed; return what was done.

        The audit trail opens first and closes last: a gateway whose trail cannot be opened
        does not start; the start (with the configuration's hash) and the stop (with the run's
        summary, or the error that ended it) are its first and last records of the run."""
        audit = await open_recorder(self.plan)
        self.audit = audit
        self.plan.access.authority.bind_audit(audit.note)
        recorder = asyncio.create_task(audit.run(), name="audit.recorder")
        summary: RunSummary | None = None
        error: BaseException | None = None
        try:
            summary = await self._run(stop, duration_s)
            return summary
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.plan.access.bind(None)
            await _uncancellable(close_recorder(audit, recorder, stopped_event(summary, error)))
            self.plan.access.authority.bind_audit(None)

    async def _run(self, stop: asyncio.Event, duration_s: float | None) -> RunSummary:
        writer, stored = await self._open_store()
        self.writer = writer
        writer_stop = asyncio.Event()
        writer_task: asyncio.Task[None] | None = None
        http_task: asyncio.Task[None] | None = None
        sinks = _SinkStarts(self.plan.sinks)
        try:
            if self.plan.config.http is not None:
                # Before anything else starts: a port in use is a clean error at start-up.
                http_task = await self._serve_http(self.plan.config.http)
            async with contextlib.AsyncExitStack() as stack:
                for emulator in self.plan.emulators:
                    await _enter(stack, emulator, "emulator")
                    log.info("emulator.started", emulator=emulator.id, type=emulator.type)
                for sink in self.plan.sinks:
                    bind = getattr(sink.instance, "bind", None)
                    if callable(bind):
                        # Optional: a sink that publishes an address space (OPC UA) learns
                        # every signal before the first sample arrives.
                        bind(self.plan.signals)
                    # Fed from now on; it sends once entered (beside the instruments, below).
                    self._delivery[sink.id] = await self._attach(sink, writer)
                # Exited last (after the sinks have had what the stop left them), and also
                # when the run ends by an error.
                stack.push_async_callback(sinks.aclose)
                self._build_runners(stored, writer)
                self.identities = self._identity_keeper(writer)
                if self.plan.config.store.budget is not None:
                    self.budget = self._budget_keeper(writer)
                if self.plan.config.store.trends:
                    self.trends = TrendKeeper(self.plan.config.store.path)
                assert self.audit is not None
                path = self._write_path()
                self.plan.access.bind(path, self.audit.note)
                for processor in self.processors:
                    processor.attach(path, self.audit)
                # The writer is in no TaskGroup: whatever ends the run, it is stopped by us and
                # commits what is left, instead of being cancelled mid-commit.
                writer_task = asyncio.create_task(writer.run(writer_stop), name="store.writer")
                log.info(
                    "gateway.running",
                    instruments=len(self.runners),
                    processors=len(self.processors),
                    signals=len(self.outputs),
                    sinks=len(self.feeders) + len(self.forwarders),
                    store=str(self.plan.config.store.path),
                )
                assert self.audit is not None
                await self.audit.record(started_event(self.plan))
                sinks.start(self._entered, self.started)
                await self._supervise(stop, duration_s, writer_stop, writer_task, sinks)
        finally:
            try:
                if writer_task is not None:
                    # A run ended by an error or a cancellation: what the processors were
                    # given is still derived before the final commit (a no-op after a stop).
                    self._drain_processors()
                    await _final_commit(writer_stop, writer_task)
                self._refuse_late_samples()
                # What the sinks acknowledged, and the losses of samples a driver published
                # after the final commit (with their seq counters): saved before the store
                # closes. A no-op if there is nothing new; again for what came meanwhile.
                for _ in range(2):
                    await _uncancellable(writer.flush())
                    if not writer.unsaved_losses:
                        break
                self._refuse_after_close()
                writer.abandon("the store closed before they could be recorded")
            finally:
                try:
                    if self.budget is not None:
                        await _uncancellable(self.budget.aclose())
                    if self.trends is not None:
                        await _uncancellable(self.trends.aclose())
                    if self._reader is not None:
                        await _uncancellable(self._reader.aclose())
                finally:
                    try:
                        await _uncancellable(writer.aclose())
                    finally:
                        if http_task is not None:  # last: /health says "stopping" until here
                            http_task.cancel()
                            await asyncio.wait({http_task})
        if sinks.failure is not None:
            raise sinks.failure
        summary = RunSummary(
            committed=writer.stats.committed,
            dropped=writer.stats.dropped,
            instruments={
                r.instrument_id: {"sessions": r.sessions, "failures": r.failures}
                for r in self.runners
            },
            processors={
                p.processor_id: {
                    "processed": p.processed,
                    "failures": p.failures,
                    "skipped": p.skipped,
                }
                for p in self.processors
            },
            sinks={
                **{f.sink_id: {"delivered": f.delivered, "lost": f.lost} for f in self.feeders},
                **{
                    f.sink_id: {
                        "delivered": f.stats.delivered,
                        "historical": f.stats.delivered_historical,
                        "backlog": f.stats.backlog,
                        "dropped": f.stats.dropped,
                        "refused": f.stats.refused,
                        "failures": f.stats.failures,
                        "resent": f.stats.resent,
                    }
                    for f in self.forwarders
                },
            },
        )
        log.info(
            "gateway.stopped",
            committed=summary.committed,
            dropped=summary.dropped,
            sinks=summary.sinks,
            stop=self.stop_phases,
        )
        return summary

    async def _serve_http(self, config: HttpConfig) -> asyncio.Task[None]:
        """Start the health and metrics endpoint; return its task once it listens."""
        listening: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

        def bound(host: str, port: int) -> None:
            if not listening.done():
                listening.set_result((host, port))

        audit = self.plan.config.audit.resolved(
            self.plan.config.store.path, self.plan.config.data_dir
        )
        api = (
            LocalApi(
                self.plan.access,
                audit.path,
                lambda: {p.processor_id: p for p in self.processors},
            )
            if config.api
            else None
        )
        console = (
            Console(
                self,
                self.plan.access,
                idle_timeout_s=config.console_idle_timeout_s,
                secure=config.tls is not None,
                note=self.audit.note if self.audit is not None else None,
                audit=audit,
            )
            if config.serves_console
            else None
        )
        task = asyncio.create_task(
            serve_http(self, config, on_listening=bound, api=api, console=console), name="http"
        )
        waiting: set[asyncio.Future[Any]] = {task, listening}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            listening.cancel()
            task.result()  # the bind failed: GatewayError naming the address
            raise GatewayError("the HTTP endpoint stopped at start-up")
        self.http_address = listening.result()
        return task

    async def _attach(self, sink: ComponentPlan, writer: StoreWriter) -> SinkFeeder | Forwarder:
        """Feed the sink from the store (a forwarding sink) or live batches (any other), from
        the next commit on; it is given them once it has been entered (:meth:`_entered`)."""
        instance = sink.instance
        config = sink.config
        assert isinstance(config, SinkConfig)
        if not callable(getattr(instance, "forward", None)):
            feeder = SinkFeeder(
                sink.id,
                instance,
                writer.names,
                max_queued=config.queue_max_samples,
                send_timeout_s=config.send_timeout_s,
            )
            self.feeders.append(feeder)
            writer.on_commit.append(feeder.offer)
            return feeder
        if self._reader is None:
            self._reader = BacklogReader(self.plan.config.store.path)
        forwarder = Forwarder(sink.id, instance, config, writer.names, self._reader)
        delivery, last_id = await writer.call(lambda s: (s.delivery(sink.id), s.last_id()))
        forwarder.start(delivery, last_id)
        await forwarder.read_oldest()
        self.forwarders.append(forwarder)
        writer.on_commit.append(forwarder.offer)
        writer.delivery_sources.append(forwarder)
        return forwarder

    def _entered(self, sink: ComponentPlan, instance: Any) -> Coroutine[Any, Any, None] | None:
        """``sink`` is up: what ``__aenter__`` returned is what its feeder or forwarder
        sends to, and what carries the audit anchor upstream (optional). Returns what is left
        to do once it is fed: publish the latest anchor, if the trail was signed while the
        sink was starting."""
        self._delivery[sink.id].sink = instance
        publish_anchor = getattr(instance, "publish_anchor", None)
        if not callable(publish_anchor):
            return None
        self._anchor_sinks.append(publish_anchor)
        latest = self.audit.last_anchor if self.audit is not None else None
        if latest is None:
            return None

        async def publish() -> None:
            try:
                async with asyncio.timeout(ANCHOR_TIMEOUT_S):
                    await publish_anchor(latest)
            except Exception as exc:  # TimeoutError included: its copy only, as in sign()
                log.warning("audit.anchor_not_published", sink=sink.id, reason=repr(exc))

        return publish()

    def _budget_keeper(self, writer: StoreWriter) -> BudgetKeeper:
        """The store budget's pruner: it reads on a connection of its own and deletes on the
        writer's thread, between commits (no lock to wait for)."""
        config = self.plan.config.store
        assert config.budget is not None

        def write(fn: Callable[[sqlite3.Connection], T]) -> T:
            return writer.call_blocking(lambda store: store.write(fn), pruner.stop)

        # Only store-and-forward sinks hold samples back; at-most-once ones never do.
        holders = [f.sink_id for f in self.forwarders]
        pruner = Pruner(config.path, config.budget, holders, write=write)
        audit = self.audit
        return BudgetKeeper(
            pruner,
            config.budget.check_interval_s,
            on_pruned=None if audit is None else lambda report: audit.note(pruned_event(report)),
        )

    def _write_path(self) -> WritePath:
        """The controlled write path over the running instruments (see gateway.control)."""
        assert self.audit is not None
        runners = {r.instrument_id: r for r in self.runners}

        def is_up(instrument: str) -> bool:
            runner = runners.get(instrument)
            return runner is not None and runner.state is InstrumentState.CONNECTED

        devices = {
            r.instrument_id: r.plan.driver
            for r in self.runners
            if isinstance(r.plan.driver, WritableDriver)
        }
        commanded = {
            r.instrument_id: r.plan.driver
            for r in self.runners
            if isinstance(r.plan.driver, CommandDriver)
        }
        path = WritePath(
            self.plan.access.targets,
            self.plan.access.authority,
            self.audit.record,
            devices,
            is_up,
            commands=self.plan.access.commands,
            commanded=commanded,
        )
        self.write_path = path
        return path

    def _clock_step(self, step: ClockStep) -> None:
        if self.audit is not None:
            self.audit.note(clock_event(step))

    async def _audit_ticks(self) -> None:
        """Sign the audit trail's head every ``audit.sign_interval_s`` and record what was
        lost since the last tick, as summaries."""
        assert self.audit is not None
        losses = LossTally()
        while True:
            await asyncio.sleep(self.plan.config.audit.sign_interval_s)
            for event in losses.changes(self):
                self.audit.note(event)
            await self.audit.sign(self._anchor_sinks)

    def _refuse_late_samples(self) -> None:
        """After the final commit, anything still published (by a driver that ignored its
        cancellation) is dropped and recorded as a loss with its seq range — saved by the
        writer's last flush, before the store closes — not kept in a list nobody will commit."""
        writer = self.writer
        assert writer is not None
        if self._late_refused:
            return
        self._late_refused = True
        reason = "published after the final commit (the driver ignored its stop)"

        def late(row: Row) -> None:
            if writer.stats.dropped_late == 0:
                log.error(
                    "store.sample_after_final_commit",
                    def_id=row[0],
                    seq=row[1],
                    detail="recorded as a loss",
                )
            writer.stats.dropped_late += 1
            writer.lose([row], reason)

        for output in self.outputs:
            output.redirect(late)
        if writer.pending:  # published between the final commit and now
            for row in list(writer.pending):
                late(row)
            writer.pending.clear()
        writer.abandon("published after the final commit")
        for processor in self.processors:
            processor.abandon()

    def _refuse_after_close(self) -> None:
        """Once the last flush is done, nothing more can be recorded in the store: a sample
        published still later is counted, and its signal and seq logged (once per run)."""
        writer = self.writer
        assert writer is not None

        def unrecorded(row: Row) -> None:
            writer.stats.dropped += 1
            writer.stats.dropped_late += 1
            if not self._after_close_logged:
                self._after_close_logged = True
                log.error(
                    "store.sample_after_close",
                    def_id=row[0],
                    seq=row[1],
                    detail="the store is closing: counted, not recorded in it",
                )

        for output in self.outputs:
            output.redirect(unrecorded)

    def _drain_processors(self) -> None:
        """Process every queued input, in configuration order (a later processor may read an
        earlier one's outputs)."""
        for processor in self.processors:
            processor.drain()

    async def _open_store(self) -> tuple[StoreWriter, Mapping[str, Any]]:
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
        writer = StoreWriter(store, config.store, names=names, executor=executor)
        return writer, stored

    async def _supervise(
        self,
        stop: asyncio.Event,
        duration_s: float | None,
        writer_stop: asyncio.Event,
        writer_task: asyncio.Task[None],
        sinks: _SinkStarts,
    ) -> None:
        # Instrument tasks are owned here rather than by the TaskGroup: a driver that ignores
        # cancellation must not hold up the final commit (the group would wait for it forever).
        instruments = [
            asyncio.create_task(runner.run(), name=f"instrument.{runner.instrument_id}")
            for runner in self.runners
        ]
        try:
            async with asyncio.TaskGroup() as group:
                all_sinks: tuple[SinkFeeder | Forwarder, ...] = (*self.feeders, *self.forwarders)
                feeders = [
                    group.create_task(
                        sinks.deliver(sink.sink_id, sink.run()), name=f"sink.{sink.sink_id}"
                    )
                    for sink in all_sinks
                ]
                processors = [
                    group.create_task(p.run(), name=f"processor.{p.processor_id}")
                    for p in self.processors
                ]
                # Processors that act (controllers) run timers of their own.
                acting = [
                    group.create_task(p.run_own(), name=f"processor.{p.processor_id}.run")
                    for p in self.processors
                    if p.has_task
                ]
                view = group.create_task(run_view(self, interactive=self.interactive), name="view")
                if self.budget is not None:
                    # Stopped with the sinks, below: the final save of their cursors comes after.
                    feeders.append(group.create_task(self.budget.run(), name="store.budget"))
                if self.trends is not None:
                    feeders.append(group.create_task(self.trends.run(), name="store.trends"))
                identities = None
                if self.identities is not None:
                    identities = group.create_task(
                        self.identities.run(), name="instrument.identities"
                    )
                feeders.append(group.create_task(self._audit_ticks(), name="audit.signer"))
                feeders.append(group.create_task(self.clock.run(), name="clock.watch"))
                stopper = group.create_task(stop.wait(), name="stop")
                failed = group.create_task(sinks.failed.wait(), name="sinks.failed")
                done, _ = await asyncio.wait(
                    {stopper, writer_task, failed},
                    timeout=duration_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                stopper.cancel()
                failed.cancel()
                if writer_task in done:
                    # Only a bug ends the writer early; stop rather than run unstored.
                    log.error("gateway.writer_stopped_unexpectedly")
                loop = asyncio.get_running_loop()
                began = loop.time()
                phases = self.stop_phases

                def phase(name: str) -> None:
                    phases[name] = round(loop.time() - began, 3)

                self.stopping = True
                self.plan.access.bind(None)  # no write starts once the stop has begun
                log.info("gateway.stopping")
                # A convenience (thousands of summary lines with many signals) must not compete
                # with the stop for the loop.
                view.cancel()
                for task in acting:
                    task.cancel()
                if acting:
                    await asyncio.wait(acting, timeout=STOP_TIMEOUT_S)
                for processor in self.processors:
                    processor.attach(None, self.audit)
                if self.write_path is not None:
                    # Writes under way finish (and are recorded) while their instruments run.
                    await self.write_path.drain(STOP_TIMEOUT_S / 4)
                for task in instruments:
                    task.cancel()
                # A configuration of emulators only has no instrument to wait for.
                stuck: set[asyncio.Task[None]] = set()
                if instruments:
                    _, stuck = await asyncio.wait(instruments, timeout=STOP_TIMEOUT_S)
                if stuck:
                    log.error("gateway.stop_timeout", tasks=sorted(t.get_name() for t in stuck))
                if identities is not None and self.identities is not None:
                    # What the drivers reported is in the store before the final commit.
                    self.identities.close()
                    await asyncio.wait({identities}, timeout=STOP_TIMEOUT_S / 4)
                    identities.cancel()
                phase("instruments_s")
                for task in processors:
                    task.cancel()
                if processors:
                    await asyncio.wait(processors, timeout=STOP_TIMEOUT_S)
                self._drain_processors()
                await _final_commit(writer_stop, writer_task)
                self._refuse_late_samples()
                phase("final_commit_s")
                # The sinks get what was committed until what the bound leaves after their exit
                # (a sink still starting gets nothing more; what a forwarding one did not take
                # stays in the store for the next run).
                exit_at = began + STOP_BOUND_S - _CLOSE_S - SINK_EXIT_S
                sink_deadline = exit_at - _LAST_ANCHOR_S
                running = [f for f in all_sinks if sinks.is_up(f.sink_id)]
                if running:
                    deadline = min(
                        loop.time() + max(f.send_timeout_s for f in running), sink_deadline
                    )
                    for sink in running:
                        await sink.drain(deadline)
                if self.audit is not None:
                    # The last anchor upstream, while the sinks still run (the stop record
                    # itself is anchored in the anchor file only); within the same deadline.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(max(exit_at, loop.time() + 0.1)):
                            await self.audit.sign(self._anchor_sinks)
                phase("sinks_drained_s")
                for task in (*feeders, view):
                    task.cancel()
                await asyncio.wait((*feeders, view))
                for feeder in self.feeders:
                    feeder.close()
                if self.forwarders:
                    # What the sinks acknowledged while draining: saved now, before the sinks
                    # exit (a sink slow to close must not cost the record of its progress).
                    assert self.writer is not None
                    await _uncancellable(self.writer.flush())
                phase("sinks_stopped_s")
                sinks.exit_by = exit_at + SINK_EXIT_S
        finally:
            for task in instruments:
                task.cancel()

    def _build_runners(self, stored: Mapping[str, Any], writer: StoreWriter) -> None:
        for ip in self.plan.instruments:
            channels, signal_outputs = self._outputs_for(ip.signals, stored, writer)
            self.runners.append(InstrumentRunner(ip, channels, signal_outputs))
        by_id = {output.signal.id: output for output in self.outputs}
        for pp in self.plan.processors:
            channels, signal_outputs = self._outputs_for(pp.signals, stored, writer)
            runner = ProcessorRunner(pp, channels, signal_outputs)
            for signal in pp.inputs.values():
                tap(by_id[signal.id], signal, runner.offer)
            if pp.age is not None:
                tap(by_id[pp.age.id], pp.age, runner.offer_age)
            by_id.update((output.signal.id, output) for output in signal_outputs)
            self.processors.append(runner)

    def _identity_keeper(self, writer: StoreWriter) -> IdentityKeeper:
        sinks = []
        for sink in self.plan.sinks:
            tell = getattr(sink.instance, "device_identified", None)
            if callable(tell):
                sinks.append((sink.id, tell))
        keeper = IdentityKeeper(writer, self.audit.note if self.audit is not None else None, sinks)
        for runner in self.runners:
            runner.on_identity = keeper.offer
        return keeper

    def _outputs_for(
        self, signals: Sequence[SignalPlan], stored: Mapping[str, Any], writer: StoreWriter
    ) -> tuple[dict[str, Output], list[SignalOutput]]:
        """An output per published signal, and what each channel publishes through."""
        append = writer.pending.append
        by_channel: dict[str, list[SignalOutput]] = defaultdict(list)
        signal_outputs = []
        for sp in signals:
            info = stored[sp.signal.id]
            output: SignalOutput
            if sp.signal.kind is SignalKind.SPECTRUM:
                output = SpectrumOutput(
                    sp.signal, sp.conversion, info.def_id, info.next_seq, append
                )
            else:
                output = SignalOutput(sp.signal, sp.conversion, info.def_id, info.next_seq, append)
            self.first_seq[sp.signal.id] = info.next_seq
            by_channel[sp.channel].append(output)
            signal_outputs.append(output)
        channels: dict[str, Output] = {
            ch: outs[0] if len(outs) == 1 else FanOut(outs) for ch, outs in by_channel.items()
        }
        self.outputs.extend(signal_outputs)
        return channels, signal_outputs


class _SinkStarts:
    """Enters the sinks beside the running instruments (one task each, so a slow one delays
    no other), lets each one's feeder or forwarder send once it is up, and exits them
    together within the stop's bound."""

    def __init__(self, sinks: Sequence[ComponentPlan]) -> None:
        self._sinks = tuple(sinks)
        self._up = {sink.id: asyncio.Event() for sink in sinks}
        self._entered: dict[str, Any] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None
        self.exit_by: float | None = None  # loop time by which the sinks should have exited

    def start(
        self,
        on_entered: Callable[[ComponentPlan, Any], Coroutine[Any, Any, None] | None],
        all_up: asyncio.Event,
    ) -> None:
        """Enter every sink now, each in its own task; set ``all_up`` when all are."""
        loop = asyncio.get_running_loop()
        began = loop.time()

        def everything_up() -> None:
            log.info("gateway.started", sinks=len(self._sinks))
            all_up.set()

        async def enter(sink: ComponentPlan) -> None:
            try:
                instance = await sink.instance.__aenter__()
            except (OSError, GatewayError) as exc:
                error = GatewayError(f"sink {sink.id!r} ({sink.type}) cannot start: {exc}")
                error.__cause__ = exc
                self._fail(error)
                return
            except Exception as exc:  # a sink's bug: reported as such, after the stop
                self._fail(exc)
                return
            self._entered[sink.id] = instance
            then = on_entered(sink, instance)
            self._up[sink.id].set()
            log.info(
                "sink.started", sink=sink.id, type=sink.type, after_s=round(loop.time() - began, 3)
            )
            if all(up.is_set() for up in self._up.values()):
                everything_up()
            if then is not None:
                await then

        for sink in self._sinks:
            self._tasks[sink.id] = asyncio.create_task(enter(sink), name=f"sink.{sink.id}.start")

        if not self._sinks:
            everything_up()

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
            log.error("sink.start_failed", error=str(error))
        self.failed.set()

    def is_up(self, sink_id: str) -> bool:
        return self._up[sink_id].is_set()

    async def deliver(self, sink_id: str, run: Coroutine[Any, Any, None]) -> None:
        """Run a sink's feeder or forwarder (``run``) once the sink is up."""
        try:
            await self._up[sink_id].wait()
        except BaseException:
            run.close()  # never started
            raise
        await run

    async def aclose(self) -> None:
        """Stop the starts still under way; exit the entered sinks, all at once, by the stop's
        bound (``exit_by``) or within ``SINK_EXIT_S`` if that leaves less."""
        loop = asyncio.get_running_loop()
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            # A start cancelled half-way cleans up after itself (its __aenter__'s business).
            await asyncio.wait(self._tasks.values(), timeout=SINK_EXIT_S)
        # Never less than a moment to close cleanly, even when the steps before overran.
        deadline = max(self.exit_by or 0.0, loop.time() + SINK_EXIT_S / 2)

        async def leave(sink: ComponentPlan) -> None:
            try:
                async with asyncio.timeout_at(deadline):
                    await sink.instance.__aexit__(None, None, None)
            except TimeoutError:
                log.error("sink.exit_timeout", sink=sink.id)
            except Exception as exc:  # one sink's failure to close must not skip the others
                log.error("sink.exit_failed", sink=sink.id, error=repr(exc))
            else:
                log.info("sink.stopped", sink=sink.id)

        entered = [sink for sink in reversed(self._sinks) if sink.id in self._entered]
        self._entered.clear()
        if entered:
            await asyncio.wait(
                [asyncio.create_task(leave(sink), name=f"sink.{sink.id}.exit") for sink in entered]
            )


async def _final_commit(writer_stop: asyncio.Event, writer_task: asyncio.Task[None]) -> None:
    """Let the writer commit what is left and finish, even if we are cancelled meanwhile
    (repeatedly); our cancellation is passed on only once the writer is done."""
    writer_stop.set()
    await _uncancellable(writer_task)


async def _uncancellable(awaitable: Awaitable[None]) -> None:
    """Await ``awaitable`` to its end even through repeated cancellation; report a failure of
    it in the log; re-raise our own cancellation afterwards."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = cancelled or not task.done()
        except Exception:
            break  # reported below
    if task.cancelled():
        cancelled = True
    elif task.exception() is not None:
        log.error("gateway.shutdown_step_failed", error=repr(task.exception()))
    if cancelled:
        raise asyncio.CancelledError


async def _enter(stack: contextlib.AsyncExitStack, component: ComponentPlan, what: str) -> Any:
    """Enter an emulator or sink; a failure to start is a clear error naming it."""
    try:
        return await stack.enter_async_context(component.instance)
    except (OSError, GatewayError) as exc:
        raise GatewayError(
            f"{what} {component.id!r} ({component.type}) cannot start: {exc}"
        ) from exc
