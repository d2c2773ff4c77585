"""Device identities of the running instruments: kept in the store, audited, told to sinks.

A driver calls ``io.identify(identity)`` once per session (the runner, :mod:`.instrument`,
hands it on with the time it was seen). The keeper's task (``instrument.identities``) records
each one in the store beside the signal definitions (:meth:`SampleStore.record_identity`, on
the writer's thread: never on the sample path), and notes in the audit trail the first device
an instrument was (``device.identified``) and every change of device (``device.identity_changed``,
old and new identity: a swapped instrument, a firmware update). Sinks that show identities
(``device_identified``) are told at once, when an instrument's identity is new or changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from ..api import DeviceIdentity
from ..audit import AuditEvent
from ..errors import GatewayError
from ..store.sqlite import IdentityRecord, SampleStore
from ..store.writer import StoreWriter

__all__ = ["IdentityKeeper"]

log = structlog.get_logger("gateway.identity")

SinkListener = Callable[[str, DeviceIdentity], None]
_Seen = tuple[str, DeviceIdentity, str, int]


class IdentityKeeper:
    """Records identifications; :meth:`offer` is the runners' ``on_identity``."""

    def __init__(
        self,
        writer: StoreWriter,
        note: Callable[[AuditEvent], None] | None,
        sinks: Sequence[tuple[str, SinkListener]] = (),
    ) -> None:
        self._writer = writer
        self._note = note
        self._sinks = tuple(sinks)
        self._told: dict[str, DeviceIdentity] = {}
        self._queue: asyncio.Queue[_Seen | None] = asyncio.Queue()
        self.recorded = 0
        self.changes = 0

    def offer(self, instrument: str, identity: DeviceIdentity, source: str, seen_ns: int) -> None:
        """Queue one identification for the store and the trail; tell the sinks if it is new."""
        self._queue.put_nowait((instrument, identity, source, seen_ns))
        if self._told.get(instrument) == identity:
            return
        self._told[instrument] = identity
        for sink_id, tell in self._sinks:
            try:
                tell(instrument, identity)
            except Exception as exc:  # one sink's bug costs its display, not the others'
                log.error(
                    "sink.identity_failed", sink=sink_id, instrument=instrument, error=repr(exc)
                )

    async def run(self) -> None:
        """Record what is offered until :meth:`close` (then what was queued before it)."""
        while (seen := await self._queue.get()) is not None:
            await self._record(*seen)

    def close(self) -> None:
        """Let :meth:`run` record what is queued, then return."""
        self._queue.put_nowait(None)

    async def _record(
        self, instrument: str, identity: DeviceIdentity, source: str, seen_ns: int
    ) -> None:
        def record(store: SampleStore) -> tuple[bool, IdentityRecord | None]:
            return store.record_identity(instrument, identity, source, seen_ns)

        try:
            started, previous = await self._writer.call(record)
        except GatewayError as exc:
            log.error("instrument.identity_not_stored", instrument=instrument, reason=str(exc))
            return
        self.recorded += 1
        if not started or self._note is None:
            return
        details = {"source": source, "seen_ns": seen_ns}
        if previous is None:
            self._note(
                AuditEvent(
                    action="device.identified",
                    target=instrument,
                    new=identity.fields(),
                    details=details,
                )
            )
            return
        self.changes += 1
        log.warning(
            "instrument.identity_changed",
            instrument=instrument,
            old=previous.identity.label(),
            new=identity.label(),
        )
        self._note(
            AuditEvent(
                action="device.identity_changed",
                target=instrument,
                old=previous.identity.fields(),
                new=identity.fields(),
                details={
                    **details,
                    "previous_source": previous.source,
                    "previous_first_seen_ns": previous.first_seen_ns,
                    "previous_last_seen_ns": previous.last_seen_ns,
                },
            )
        )
