"""The running gateway's side of the audit trail: what it records, when, and the anchors.

* :meth:`AuditRecorder.record` — durable before it returns (a write's request: fail closed);
* :meth:`AuditRecorder.note` — from any thread, without waiting (logins, lock-outs, clock
  steps): queued, and written by the ``audit.recorder`` task in group commits. A note that
  cannot be written is logged as an error with the event (``audit.note_lost``), never dropped
  silently;
* the ``audit.signer`` task signs the chain's head every ``sign_interval_s`` (and at stop),
  appends the anchor to the anchor file, and hands it to every sink that publishes anchors
  upstream (``publish_anchor``); it also records what changed since the last tick as summaries
  (sink losses, store drops), never per sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ..audit import AuditError, AuditEvent, AuditTrail, trail_for
from ..errors import GatewayError
from ..metrics import gateway_version

if TYPE_CHECKING:
    from ..loader import Plan
    from ..store.prune import PruneReport
    from .clock import ClockStep
    from .supervisor import Gateway, RunSummary

__all__ = [
    "AuditRecorder",
    "LossTally",
    "clock_event",
    "close_recorder",
    "file_digests",
    "open_recorder",
    "pruned_event",
    "started_event",
    "stopped_event",
]

log = structlog.get_logger("gateway.audit")

ANCHOR_TIMEOUT_S = 5.0
"""How long one sink may take to publish an anchor (a sink that is down costs this, once)."""

AnchorSink = Callable[[Mapping[str, Any]], Awaitable[None]]


class AuditRecorder:
    """Owns the open trail while the gateway runs."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[AuditEvent | None] = asyncio.Queue()
        self.recorded = 0
        self.lost = 0
        self.last_error: str | None = None
        self.anchors = 0
        self.last_anchor: dict[str, Any] | None = None

    async def record(self, event: AuditEvent) -> int:
        """Append ``event`` durably; its record number. Raises AuditError if it cannot."""
        try:
            record = await self.trail.record(event)
        except GatewayError as exc:
            self.last_error = str(exc)
            raise
        self.recorded += 1
        return int(record.seq)

    def note(self, event: AuditEvent) -> None:
        """Queue ``event`` (from any thread); the recorder task writes it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._queue.put_nowait(event)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
                self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def run(self) -> None:
        """Write queued notes until :meth:`aclose` (``None`` in the queue ends it)."""
        while True:
            event = await self._queue.get()
            if event is None:
                return
            batch = [event]
            while not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    await self._write(batch)
                    return
                batch.append(more)
            await self._write(batch)

    async def _write(self, batch: list[AuditEvent]) -> None:
        results = await asyncio.gather(
            *(self.trail.record(event) for event in batch), return_exceptions=True
        )
        for event, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                self.lost += 1
                self.last_error = str(result)
                log.error(
                    "audit.note_lost",
                    action=event.action,
                    user=event.user,
                    target=event.target,
                    outcome=event.outcome,
                    reason=str(result),
                )
            else:
                self.recorded += 1

    async def sign(self, sinks: Iterable[AnchorSink]) -> None:
        """Sign the head now and publish the anchor to ``sinks`` (failures logged)."""
        try:
            anchor = await self.trail.asign_head()
        except AuditError as exc:
            self.last_error = str(exc)
            log.error("audit.sign_failed", reason=str(exc))
            return
        if anchor is None:
            return
        document = anchor.to_json()
        self.anchors += 1
        self.last_anchor = document
        for publish in sinks:
            try:
                async with asyncio.timeout(ANCHOR_TIMEOUT_S):
                    await publish(document)
            except TimeoutError:
                log.warning(
                    "audit.anchor_not_published",
                    reason=f"not acknowledged within {ANCHOR_TIMEOUT_S} s",
                )
            except Exception as exc:  # a sink's failure costs its copy, not the others'
                log.warning("audit.anchor_not_published", reason=str(exc))

    async def aclose(self) -> None:
        """Write what is queued, then stop the recorder task (it returns)."""
        self._queue.put_nowait(None)

    def health(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "lost": self.lost,
            "anchors": self.anchors,
            "last_anchor": self.last_anchor,
            "last_error": self.last_error,
        }


def file_digests(config_dir: Path, options: Iterable[Any]) -> dict[str, str]:
    """sha256 of every file the plugin ``options`` (raw, as configured) name that exists —
    models, register profiles: what the configuration loaded besides itself. Relative paths
    are relative to ``config_dir``, as plugins resolve them; keys and stores are left out."""
    digests: dict[str, str] = {}

    def walk(value: Any) -> None:
        if isinstance(value, str) and 0 < len(value) < 1024 and "\n" not in value:
            path = config_dir / value
            if path.suffix in _SKIPPED or not _is_file(path):
                return
            with contextlib.suppress(OSError):
                digests[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for option in options:
        walk(option)
    return digests


_SKIPPED = frozenset({".key", ".pem", ".der", ".sqlite", ".tty", ""})


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


async def open_recorder(plan: Plan) -> AuditRecorder:
    """Open the configuration's audit trail (creating it, and the gateway's key, on first
    use); a trail that cannot be opened stops the start with an AuditError."""
    trail = trail_for(plan.config)
    await asyncio.to_thread(trail.open)
    try:
        # Each distinct configuration content is kept once, to compare any two runs' later.
        await asyncio.to_thread(trail.keep_config, plan.source.read_bytes())
    except BaseException:
        await trail.aclose()
        raise
    return AuditRecorder(trail)


async def close_recorder(
    audit: AuditRecorder, task: asyncio.Task[None], stopped: AuditEvent
) -> None:
    """Write the queued notes and the stop record, sign the final head (kept in the anchor
    file and table: the sinks have stopped by now, they got the last anchor before), close the
    trail."""
    await audit.aclose()
    await asyncio.wait({task})
    try:
        await audit.record(stopped)
    except GatewayError as exc:
        log.error("audit.stop_not_recorded", reason=str(exc))
    await audit.sign(())
    await audit.trail.aclose()


def started_event(plan: Plan) -> AuditEvent:
    """``gateway.started``: the software version, the configuration's hash (its content is
    kept once in the trail, to compare with any other run's) and every file it loaded."""
    content = plan.source.read_bytes()
    config_hash = hashlib.sha256(content).hexdigest()
    plan_options = [
        *(i.config.options for i in plan.instruments),
        *(p.config.options for p in plan.processors),
        *(c.config.options for c in plan.emulators),
        *(c.config.options for c in plan.sinks),
    ]
    return AuditEvent(
        action="gateway.started",
        target=str(plan.source),
        new=config_hash,
        details={
            "version": gateway_version(),
            "config_sha256": config_hash,
            "config_kept": True,
            "files": file_digests(plan.source.parent, plan_options),
            "writable_targets": sorted(plan.access.targets),
            "users": sorted(u.name for u in plan.config.security.users),
        },
    )


def stopped_event(summary: RunSummary | None, error: BaseException | None) -> AuditEvent:
    if summary is not None:
        return AuditEvent(
            action="gateway.stopped",
            details={
                "committed": summary.committed,
                "dropped": summary.dropped,
                "sinks": summary.sinks,
            },
        )
    return AuditEvent(
        action="gateway.stopped",
        outcome="failed",
        reason=f"{type(error).__name__}: {error}" if error is not None else "unknown",
    )


def pruned_event(report: PruneReport) -> AuditEvent:
    return AuditEvent(
        action="store.pruned",
        new=report.pruned,
        details={
            "samples": report.pruned,
            "archive_files": report.files,
            "released_through_id": report.released,
        },
    )


def clock_event(step: ClockStep) -> AuditEvent:
    return AuditEvent(
        action="clock.step",
        new=round(step.step_s, 3),
        details={"step_s": round(step.step_s, 3), "wall_ns_after": step.wall_ns},
    )


class LossTally:
    """What was lost since the last look, per sink and in the store (for summaries)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, ...]] = {}

    def changes(self, gateway: Gateway) -> list[AuditEvent]:
        now: dict[str, tuple[int, ...]] = {}
        if gateway.writer is not None:
            now["store"] = (gateway.writer.stats.dropped,)
        for forwarder in gateway.forwarders:
            now[f"sink:{forwarder.sink_id}"] = (forwarder.stats.dropped, forwarder.stats.refused)
        for feeder in gateway.feeders:
            now[f"sink:{feeder.sink_id}"] = (feeder.lost,)
        events = []
        for where, counts in now.items():
            before = self._seen.get(where, (0,) * len(counts))
            deltas = [a - b for a, b in zip(counts, before, strict=True)]
            if any(deltas):
                names = ("dropped",) if len(counts) == 1 else ("dropped", "refused")
                if where.startswith("sink:") and len(counts) == 1:
                    names = ("lost",)
                events.append(
                    AuditEvent(
                        action="data.lost",
                        target=where,
                        new=sum(deltas),
                        outcome="failed",
                        details={
                            **{f"{n}_since_last": d for n, d in zip(names, deltas, strict=True)},
                            **{f"{n}_total": c for n, c in zip(names, counts, strict=True)},
                        },
                    )
                )
        self._seen = now
        return events
