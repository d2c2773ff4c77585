"""One processor under supervision: feed it its input samples, publish what it derives.

Input samples reach a processor through a *tap* on the input signal's output: the row goes to
the store writer as before and, as a :class:`~gateway.model.Sample`, into the processor's inbox.
Signals nobody reads are not tapped, so the hot path of every other signal is unchanged. The
runner's task (``processor.<id>``) hands the inbox to :meth:`Processor.process` in publication
order; what the processor publishes goes to the store like an instrument's samples.

A processor that raises is contained here: each of its outputs that published nothing for that
input gets a ``bad`` sample with the error as reason (at the input's source time), the error is
logged, and the next sample is processed. An inbox past ``queue_max_samples`` skips its oldest
input (counted and logged). At shutdown the supervisor calls :meth:`ProcessorRunner.drain`
after the instruments stopped (or the run failed) and before the final commit, so every input
published until then is processed; what a driver that ignores being stopped publishes after
that is counted as skipped (:meth:`ProcessorRunner.abandon`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from ..api import Output
from ..audit import AuditEvent
from ..config import BackoffConfig
from ..control import WriteOutcome, WritePath, WriteRequest
from ..errors import GatewayError
from ..loader import ProcessorPlan
from ..model import Quality, Sample, Signal
from ..security import Identity
from ..store.sqlite import Row
from ..units import compile_conversion
from .backoff import Backoff
from .outputs import NullOutput, SignalOutput

if TYPE_CHECKING:
    from .auditing import AuditRecorder

__all__ = ["ProcessorRunner", "tap"]

log = structlog.get_logger("gateway.processor")


def _jsonable(value: Any, depth: int) -> Any:
    """A processor's status as strict JSON can carry it (a plugin may put anything there):
    mappings with string keys, lists, finite numbers, strings, booleans and null; a NaN or
    infinity becomes null, anything else its ``str`` (a datetime, a path), nesting below 16
    levels ``"…"``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= 16:
        return "…"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    if hasattr(value, "__float__") and not isinstance(value, complex):
        try:
            number = float(value)  # numpy scalars and the like
        except (TypeError, ValueError):
            return str(value)
        return number if math.isfinite(number) else None
    return str(value)


_NULL = NullOutput()
_QUALITIES = tuple(sorted(Quality))  # stored int -> member, by index
# Inputs processed before the runner yields to the event loop (instruments keep their pace).
_BATCH = 64
# A batch age stamped more than this after its receipt (a clock ahead) is anchored at receipt.
_AGE_SKEW_NS = 2_000_000_000
#: How long a processor with a batch-age signal waits for its first sample before it starts.
AGE_WAIT_S = 10.0


class ProcessorRunner:
    """Runs one processor; implements the processor-facing ``ProcessorIO``."""

    def __init__(
        self,
        plan: ProcessorPlan,
        outputs: Mapping[str, Output],
        signal_outputs: Sequence[SignalOutput],
    ) -> None:
        self.plan = plan
        self.processor_id = plan.config.id
        self.processed = 0
        self.failures = 0
        self.skipped = 0
        self._status_failed = False  # its status() raised once (logged once)
        self.last_error: str | None = None
        self._max_queued = plan.config.queue_max_samples
        self._outputs = outputs
        self._signal_outputs = signal_outputs
        self._inbox: deque[Sample] = deque()
        self._wake = asyncio.Event()
        self._log = log.bind(processor=self.processor_id, type=plan.config.type)
        # Time base: process hours = origin + (ts - origin's ts) * scale.
        base = plan.config.time_base
        self._h_per_ns = base.time_scale / 3.6e12
        self._origin_h = 0.0
        self._origin_ns = time.time_ns()
        self._age_to_h = compile_conversion(plan.age.unit, "h") if plan.age is not None else None
        self._age_skewed = False
        # With a batch-age signal, inputs wait (queued) for its first sample, up to
        # AGE_WAIT_S: process time counted from the gateway's start until then would jump to
        # the batch's age when it came (by the whole age: a gateway restarted mid-batch).
        self._age_seen = asyncio.Event()
        if self._age_to_h is None:
            self._age_seen.set()
        # Acting: the write path and the audit trail while the gateway runs (see attach).
        self._path: WritePath | None = None
        self._audit: AuditRecorder | None = None
        self.identity = Identity(
            self.processor_id,
            plan.config.description or f"processor {self.processor_id}",
            frozenset({plan.config.role}),
            frozenset(),
        )
        self._controls = frozenset(plan.controls)
        self._claimed: set[str] = set()
        self.restarts = 0

    # -- ProcessorIO ---------------------------------------------------------------------------
    def output(self, channel: str) -> Output:
        return self._outputs.get(channel, _NULL)

    def process_time_h(self, ts_ns: int) -> float:
        return self._origin_h + (ts_ns - self._origin_ns) * self._h_per_ns

    def note(
        self,
        action: str,
        *,
        outcome: str = "ok",
        target: str = "",
        old: Any = None,
        new: Any = None,
        reason: str = "",
        why: str = "",
        details: Mapping[str, Any] | None = None,
        user: str | None = None,
    ) -> None:
        event = self._event(action, outcome, target, old, new, reason, why, details, user)
        if self._audit is None:
            self._log.warning("processor.audit_unavailable", action=action, target=target)
            return
        self._audit.note(event)

    async def record(
        self,
        action: str,
        *,
        outcome: str = "ok",
        target: str = "",
        old: Any = None,
        new: Any = None,
        reason: str = "",
        why: str = "",
        details: Mapping[str, Any] | None = None,
        user: str | None = None,
    ) -> int:
        event = self._event(action, outcome, target, old, new, reason, why, details, user)
        if self._audit is None:
            raise GatewayError("the audit trail is not open: the gateway is not running")
        return await self._audit.record(event)

    async def write(self, target: str, value: float, reason: str) -> WriteOutcome:
        path = self._acting(target)
        request = WriteRequest(target, value, self.identity, reason, "controller")
        return await path.submit(request)

    def claim(self, target: str) -> None:
        self._acting(target).claim(target, self.processor_id)
        self._claimed.add(target)

    def release(self, target: str) -> None:
        self._claimed.discard(target)
        if self._path is not None:
            self._path.release(target, self.processor_id)

    async def heartbeat(self, target: str, value: float) -> None:
        await self._acting(target).heartbeat(target, value, self.identity)

    # -- acting ----------------------------------------------------------------------------------
    def attach(self, path: WritePath | None, audit: AuditRecorder | None) -> None:
        """The running gateway's write path and audit trail (``None``, ``None`` at the stop)."""
        if path is not None:
            permissions = path.authority.role_permissions(self.plan.config.role)
            self.identity = Identity(
                self.identity.name, self.identity.full_name, self.identity.roles, permissions
            )
        elif self._path is not None:
            for target in self._claimed:
                self._path.release(target, self.processor_id)
            self._claimed.clear()
        self._path = path
        self._audit = audit

    def _acting(self, target: str) -> WritePath:
        if target not in self._controls:
            raise GatewayError(
                f"processor {self.processor_id!r} does not control {target!r} (its controls:"
                f" {', '.join(sorted(self._controls)) or 'none'})"
            )
        if self._path is None:
            raise GatewayError("writes are not possible: the gateway is not running")
        return self._path

    def _event(
        self,
        action: str,
        outcome: str,
        target: str,
        old: Any,
        new: Any,
        reason: str,
        why: str,
        details: Mapping[str, Any] | None,
        user: str | None,
    ) -> AuditEvent:
        extra: dict[str, Any] = {"processor": self.processor_id}
        if why:
            extra["why"] = why
        if details:
            extra.update(details)
        return AuditEvent(
            action, user or self.processor_id, target, old, new, reason, outcome, extra
        )

    def offer_age(self, sample: Sample) -> None:
        """A sample of the time base's batch-age signal (called from its tap)."""
        value = sample.value
        if sample.quality is Quality.BAD or not isinstance(value, (int, float)):
            return
        assert self._age_to_h is not None
        origin_ns = sample.source_ts
        skew_ns = origin_ns - sample.gateway_ts
        skewed = skew_ns > _AGE_SKEW_NS
        if skewed:
            # Stamped after its receipt: the source's clock is ahead (a DCU's own clock), and
            # anchored at that time the age would shift process time by the skew times the
            # time scale (to a negative age). Anchor it at its receipt instead. (An older
            # source time may be a late delivery: it stands.)
            origin_ns = sample.gateway_ts
            if not self._age_skewed:
                self._log.warning(
                    "processor.age_clock_skew",
                    age_signal=sample.signal,
                    skew_s=round(skew_ns / 1e9, 3),
                    hint="the age is anchored at its receipt: check the source's clock",
                )
        self._age_skewed = skewed
        self._origin_h = self._age_to_h(float(value))
        self._origin_ns = origin_ns
        self._age_seen.set()

    async def _await_time_base(self) -> None:
        """Until the batch age is first seen (at most AGE_WAIT_S): the time base is known."""
        if self._age_seen.is_set():
            return
        try:
            async with asyncio.timeout(AGE_WAIT_S):
                await self._age_seen.wait()
        except TimeoutError:
            self._log.warning(
                "processor.age_not_seen",
                age_signal=self.plan.age.id if self.plan.age is not None else None,
                waited_s=AGE_WAIT_S,
                hint="process time counts from the gateway's start until the age comes",
            )
            self._age_seen.set()

    @property
    def owned(self) -> list[str]:
        """The targets it owns now (a controller in automatic mode)."""
        return sorted(self._claimed)

    @property
    def has_task(self) -> bool:
        """Whether the processor has a ``run`` of its own (timers, heartbeats)."""
        return callable(getattr(self.plan.processor, "run", None))

    async def run_own(self) -> None:
        """The processor's own ``run(io)``, started again after a backoff if it raises."""
        run = self.plan.processor.run  # type: ignore[attr-defined]
        backoff = Backoff(BackoffConfig(initial_s=1.0, max_s=30.0))
        await self._await_time_base()
        while True:
            try:
                await run(self)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts += 1
                self.last_error = f"run failed: {exc!r}"
                delay = backoff.next_delay()
                self._log.error(
                    "processor.run_failed", restarts=self.restarts, retry_in_s=delay, exc_info=exc
                )
                await asyncio.sleep(delay)

    # -- commands and status (local API) --------------------------------------------------------
    def commands(self) -> Mapping[str, Any]:
        commands = getattr(self.plan.processor, "commands", None)
        return dict(commands()) if callable(commands) else {}

    def status(self) -> dict[str, Any]:
        status = getattr(self.plan.processor, "status", None)
        own: dict[str, Any] = {}
        status_error = None
        if callable(status):
            try:
                own = _jsonable(dict(status()), 0)
            except Exception as exc:  # the plugin's bug: its document is served without it
                status_error = repr(exc)[:300]
                if not self._status_failed:
                    self._status_failed = True
                    log.error(
                        "processor.status_failed", processor=self.processor_id, error=status_error
                    )
        return {
            "id": self.processor_id,
            "type": self.plan.config.type,
            "processed": self.processed,
            "failures": self.failures,
            "skipped": self.skipped,
            "last_error": self.last_error,
            "controls": sorted(self._controls),
            "owns": self.owned,
            "commands": {
                name: {"permission": str(c.permission), "description": c.description}
                for name, c in self.commands().items()
            },
            "status": own,
            "status_error": status_error,
        }

    # -- feeding ---------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Input samples waiting to be processed."""
        return len(self._inbox)

    def offer(self, sample: Sample) -> None:
        """Queue one input sample (called from an input signal's tap)."""
        inbox = self._inbox
        if len(inbox) >= self._max_queued:
            inbox.popleft()
            self.skipped += 1
            if self.skipped & (self.skipped - 1) == 0:  # 1st, 2nd, 4th, 8th... time
                self._log.warning(
                    "processor.input_skipped",
                    skipped=self.skipped,
                    queue_max_samples=self._max_queued,
                    hint="the processor is slower than its inputs",
                )
        inbox.append(sample)
        self._wake.set()

    async def run(self) -> None:
        """Process inputs as they arrive, until cancelled."""
        await self._await_time_base()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._inbox:
                self._process_some(_BATCH)
                if self._inbox:
                    await asyncio.sleep(0)

    def drain(self) -> None:
        """Process everything queued, now (at shutdown, with the instruments stopped)."""
        while self._inbox:
            self._process_some(len(self._inbox))

    def abandon(self) -> None:
        """Give up what is still queued (after the final commit: inputs a driver published
        while being stopped), counting it as skipped."""
        left = len(self._inbox)
        if left:
            self._inbox.clear()
            self.skipped += left
            self._log.warning("processor.inputs_abandoned", count=left, why="after final commit")

    def _process_some(self, count: int) -> None:
        inbox = self._inbox
        process = self.plan.processor.process
        outputs = self._signal_outputs
        for _ in range(min(count, len(inbox))):
            sample = inbox.popleft()
            published = [output.seq for output in outputs]
            try:
                process(sample, self)
            except Exception as exc:  # a processor bug must not stop the others
                self._failed(sample, exc, published)
            self.processed += 1

    def _failed(self, sample: Sample, exc: Exception, published: list[int]) -> None:
        """Report ``exc``; mark ``bad`` the outputs that published nothing for ``sample``
        (``published``: their ``seq`` before it), so no output gets two verdicts on one input."""
        self.failures += 1
        reason = f"processor error: {exc!r}"
        if reason != self.last_error or self.failures & (self.failures - 1) == 0:
            self._log.error(
                "processor.failed",
                input=sample.signal,
                seq=sample.seq,
                failures=self.failures,
                exc_info=exc,
            )
        self.last_error = reason
        for output, seq in zip(self._signal_outputs, published, strict=True):
            if output.seq == seq:
                output.publish(None, sample.source_ts, Quality.BAD, reason)


def tap(output: SignalOutput, signal: Signal, offer: Callable[[Sample], None]) -> None:
    """Make every row ``output`` publishes also reach ``offer`` as a :class:`Sample`."""
    append = output._append
    name, unit = signal.id, signal.unit
    qualities = _QUALITIES

    def tapped(row: Row) -> None:
        append(row)
        offer(Sample(name, row[5], unit, row[2], row[3], qualities[row[4]], row[1], row[6]))

    output.redirect(tapped)
