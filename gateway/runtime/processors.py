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
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import structlog

from ..api import Output
from ..loader import ProcessorPlan
from ..model import Quality, Sample, Signal
from ..store.sqlite import Row
from .outputs import NullOutput, SignalOutput

__all__ = ["ProcessorRunner", "tap"]

log = structlog.get_logger("gateway.processor")

_NULL = NullOutput()
_QUALITIES = tuple(sorted(Quality))  # stored int -> member, by index
# Inputs processed before the runner yields to the event loop (instruments keep their pace).
_BATCH = 64


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
        self.last_error: str | None = None
        self._max_queued = plan.config.queue_max_samples
        self._outputs = outputs
        self._signal_outputs = signal_outputs
        self._inbox: deque[Sample] = deque()
        self._wake = asyncio.Event()
        self._log = log.bind(processor=self.processor_id, type=plan.config.type)

    # -- ProcessorIO ---------------------------------------------------------------------------
    def output(self, channel: str) -> Output:
        return self._outputs.get(channel, _NULL)

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
