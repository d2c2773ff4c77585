"""One instrument under supervision: run its driver, mark it bad while down, reconnect.

A failure of one instrument — an ``InstrumentError`` from its driver or any unexpected exception
(a driver bug) — is contained here: the instrument's signals get a ``bad`` sample with the reason,
the runner waits a jittered exponential backoff and runs the driver again. Nothing propagates to
the supervisor, so other instruments never notice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum

import structlog

from ..api import DeviceIdentity, Output
from ..errors import InstrumentError
from ..loader import InstrumentPlan
from ..model import Quality
from ..timefmt import now_ns
from .backoff import Backoff
from .outputs import NullOutput, SignalOutput

__all__ = ["IdentityListener", "InstrumentRunner", "InstrumentState"]

log = structlog.get_logger("gateway.instrument")

_NULL = NullOutput()

IdentityListener = Callable[[str, DeviceIdentity, str, int], None]
"""Told ``(instrument_id, identity, source, seen_ns)`` at each identification of a session
(``source``: ``driver`` or ``config``)."""


IDENTITY_FIELD_CHARS = 256
"""Characters of an identity's field that are kept (a serial number is a few dozen)."""


def _storable(identity: DeviceIdentity) -> DeviceIdentity:
    """``identity`` as the store, the audit trail, the console and OPC UA can hold it: each field
    cut to :data:`IDENTITY_FIELD_CHARS` and every character that is not printable (NUL, control
    characters, bidirectional overrides, the lone surrogates of bytes that were not UTF-8)
    replaced by U+FFFD. A device may report anything; a lone surrogate stopped the store's
    writer, and with it the gateway."""
    fields = identity.fields()
    kept = {name: _printable(value) for name, value in fields.items()}
    return identity if kept == fields else DeviceIdentity(**kept)


def _printable(value: str | None) -> str | None:
    if value is None:
        return None
    cut = value[:IDENTITY_FIELD_CHARS]
    text = "".join(c if c.isprintable() else "\ufffd" for c in cut).strip()
    if len(value) > IDENTITY_FIELD_CHARS:
        text += f"… ({len(value)} characters)"
    return text or None


class InstrumentState(StrEnum):
    """Connection state shown in the live view."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DOWN = "down"
    STOPPED = "stopped"


class InstrumentRunner:
    """Runs one driver forever; implements the driver-facing ``InstrumentIO``."""

    def __init__(
        self,
        plan: InstrumentPlan,
        outputs: Mapping[str, Output],
        signal_outputs: Sequence[SignalOutput],
    ) -> None:
        self.plan = plan
        self.instrument_id = plan.config.id
        self.state = InstrumentState.CONNECTING
        self.sessions = 0
        self.failures = 0
        self.last_error: str | None = None
        self.identity: DeviceIdentity | None = None
        """The device of the latest identification (this run), or ``None``."""
        self.identity_source: str | None = None  # "driver" or "config"
        self.on_identity: IdentityListener | None = None
        stated = plan.config.identity
        self._stated = (
            None if stated is None else DeviceIdentity(**stated.model_dump(exclude_none=False))
        )
        self._identified = False  # in the current session
        self._outputs = outputs
        self._signal_outputs = signal_outputs
        self._backoff = Backoff(plan.config.backoff)
        self._log = log.bind(instrument=self.instrument_id, driver=plan.config.driver)

    # -- InstrumentIO -------------------------------------------------------------------------
    def output(self, channel: str) -> Output:
        return self._outputs.get(channel, _NULL)

    def connected(self) -> None:
        if not self._identified and self._stated is not None:
            # A device that reports no identity: the configuration's stands for it.
            self._take_identity(self._stated, "config")
        self.sessions += 1
        self.state = InstrumentState.CONNECTED
        self._backoff.reset()
        self._log.info("instrument.connected", sessions=self.sessions)

    def identify(self, identity: DeviceIdentity) -> None:
        if not isinstance(identity, DeviceIdentity):
            raise TypeError(f"identify() takes a DeviceIdentity, not {type(identity).__name__}")
        self._take_identity(identity.filled_from(self._stated), "driver")

    def _take_identity(self, identity: DeviceIdentity, source: str) -> None:
        identity = _storable(identity)
        self._identified = True
        if identity != self.identity:
            self._log.info("instrument.identified", source=source, **identity.fields())
        self.identity, self.identity_source = identity, source
        if self.on_identity is not None:
            self.on_identity(self.instrument_id, identity, source, now_ns())

    # -- supervision ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Run the driver, recovering from every failure, until cancelled."""
        # This task's context (and the transports its driver opens, whose callbacks run in a
        # copy of it) names the instrument, so library log lines say on whose behalf they were
        # written and are rate-limited per instrument (gateway.logs).
        structlog.contextvars.bind_contextvars(instrument=self.instrument_id)
        try:
            while True:
                self.state = InstrumentState.CONNECTING
                self._identified = False
                reason = await self._run_driver_once()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # The driver turned our cancellation into an error of its own: stop anyway.
                    raise asyncio.CancelledError
                self.failures += 1
                self.last_error = reason
                self.state = InstrumentState.DOWN
                self.mark_bad(f"unreachable: {reason}")
                delay = self._backoff.next_delay()
                self._log.info("instrument.retry", delay_s=round(delay, 3))
                await asyncio.sleep(delay)
        finally:
            self.state = InstrumentState.STOPPED

    async def _run_driver_once(self) -> str:
        """Run the driver until it fails; return why. Only our own cancellation propagates."""
        try:
            await self.plan.driver.run(self)
            reason = "driver returned without being stopped"
            self._log.warning("instrument.down", reason=reason)
        except InstrumentError as exc:
            reason = str(exc) or type(exc).__name__
            self._log.warning("instrument.down", reason=reason)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the supervisor is stopping us
            # A library raised CancelledError on its own (e.g. an internal timeout): a failure
            # of this instrument, not a reason to stop supervising it.
            reason = "driver error: stray CancelledError"
            self._log.error("instrument.driver_crashed", reason=reason)
        except Exception as exc:  # a driver bug must not take the gateway down
            reason = f"driver error: {exc!r}"
            self._log.exception("instrument.driver_crashed", reason=reason)
        return reason

    def mark_bad(self, reason: str) -> None:
        """Publish a ``bad`` sample without value for every signal of this instrument."""
        for output in self._signal_outputs:
            output.publish(None, None, Quality.BAD, reason)
