"""The one controlled write path to the instruments.

Every write — from the local API (and the CLI through it), the northbound OPC UA server, or a
controller inside the gateway — is a :class:`WriteRequest` handed to :meth:`WritePath.submit`,
which goes, in this order:

1. **declared** — the target is in ``writes:``; not a heartbeat (those only a controller beats,
   :meth:`WritePath.heartbeat`); not **owned** by another identity (a controller in automatic
   mode owns its target: :meth:`WritePath.claim`);
2. **authorised** — the identity may ``write`` and qualifies for the target's role;
3. **reason** given; **signature** (meaning; a witness's for ``witnessed`` targets) if required;
4. **limits** — finite, within ``min``..``max``;
5. **instrument up**, then the current value read from the device (the *old* value);
   **step** and **rate** checked against it;
6. ``write.requested`` recorded in the audit trail — if that fails, nothing is written (fail
   closed);
7. **executed** by the driver (``write.executed`` or ``write.failed``);
8. **read back** from the device and compared (``write.read_back``: ``ok`` or ``mismatch``).

A refusal at any step changes nothing on the device and is recorded as ``write.refused`` with
the rule that refused it. Writes to one target are serialised, so two requests cannot both pass
the step check against the same old value.

A device command (``commands:``; :meth:`WritePath.submit_command`) goes the same way without
the value's steps: declared, authorised, reason, signature, its arguments checked against the
driver's declaration, instrument up, ``command.requested`` (fail closed), executed
(``command.executed`` with what the device reported, bounded, or ``command.failed``, also for
a driver that does not answer within :data:`DEVICE_TIMEOUT_S`, raises what its contract does
not name, or is cut by the gateway's stop); refusals are ``command.refused``. Writes and
commands to one instrument are serialised with each other: a tare never runs while a setpoint
is being written and read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from ..api import CommandDriver, WritableDriver
from ..errors import GatewayError, InstrumentError, WriteRefusedError
from ..security import AuthenticationError, Authority, Identity, Permission
from ..units import Conversion
from .commands import CommandOutcome, CommandRequest, CommandTarget, check_arguments
from .config import WriteTargetConfig

if TYPE_CHECKING:
    from ..audit import AuditEvent

__all__ = [
    "Signature",
    "WriteOutcome",
    "WritePath",
    "WriteRequest",
    "WriteTarget",
]

log = structlog.get_logger("gateway.control")

_T = TypeVar("_T")

MAX_REASON_CHARS = 2000
"""The longest reason a write or a command may give (an OPC UA Call could carry 4 MB of it
into every record of the audit trail)."""

DEVICE_TIMEOUT_S = 60.0
"""How long a driver may take to answer a write, a read or a command before it counts as not
answering (an ``InstrumentError``: the outcome unknown) and the instrument is free for the next
write or command: one driver that hangs must not hold its instrument's lock for good."""


@dataclass(frozen=True, slots=True)
class WriteTarget:
    """A declared target resolved against the configuration: where it goes and in what unit."""

    config: WriteTargetConfig
    unit: str
    instrument: str
    channel: str
    to_device: Conversion  # the target's (signal's) unit -> the channel's
    from_device: Conversion  # the channel's unit -> the target's


@dataclass(frozen=True, slots=True)
class Signature:
    """An electronic signature on a write: the signer re-entered their password (the request
    was authenticated with it) and states its ``meaning`` (e.g. "performed", "approved")."""

    meaning: str
    witness: Identity | None = None
    witness_meaning: str = ""


@dataclass(frozen=True, slots=True)
class WriteRequest:
    target: str
    value: float
    identity: Identity
    reason: str
    interface: str  # "api", "opcua", "cli", "controller"
    signature: Signature | None = None


@dataclass(slots=True)
class WriteOutcome:
    """What became of a request. ``outcome``: ``done`` (written and read back equal),
    ``mismatch`` (written, read back another value), ``failed`` (the device did not take it),
    ``refused`` (nothing written; ``rule`` says which rule)."""

    outcome: str
    message: str
    target: str
    value: float
    unit: str = ""
    old: float | None = None
    read_back: float | None = None
    rule: str = ""
    records: list[int] = field(default_factory=list)  # audit record numbers

    @property
    def ok(self) -> bool:
        return self.outcome == "done"

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "message": self.message,
            "target": self.target,
            "value": recordable(self.value),
            "unit": self.unit,
            "old": self.old,
            "read_back": self.read_back,
            "rule": self.rule or None,
            "audit_records": self.records,
        }


@dataclass(slots=True)
class _BeatState:
    beats: int = 0
    failures: int = 0  # beats failed in a row


class _Refused(Exception):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


Record = Callable[["AuditEvent"], Awaitable[int]]
"""Append one audit record durably; return its number; raise (AuditError) if it cannot."""


class WritePath:
    """Checks, executes, reads back and audits writes to the declared targets."""

    def __init__(
        self,
        targets: Mapping[str, WriteTarget],
        authority: Authority,
        record: Record,
        devices: Mapping[str, WritableDriver],
        is_up: Callable[[str], bool],
        clock: Callable[[], float] = time.monotonic,
        commands: Mapping[str, CommandTarget] | None = None,
        commanded: Mapping[str, CommandDriver] | None = None,
        device_timeout_s: float = DEVICE_TIMEOUT_S,
    ) -> None:
        self.targets = dict(targets)
        self.commands = dict(commands or {})
        self._commanded = dict(commanded or {})
        # Writes and commands to one instrument, one at a time (taken inside a target's lock).
        self._instrument_locks: dict[str, asyncio.Lock] = {}
        self.authority = authority
        self._record = record
        self._devices = devices
        self._is_up = is_up
        self._clock = clock
        self.device_timeout_s = device_timeout_s
        self._locks: dict[str, asyncio.Lock] = {t: asyncio.Lock() for t in self.targets}
        self._last: dict[str, tuple[float, float]] = {}  # target -> (monotonic time, value)
        self._inflight: set[asyncio.Task[Any]] = set()
        self.counts: dict[str, int] = {}
        self._owners: dict[str, str] = {}  # target -> the identity that owns it (a controller)
        self._beats: dict[str, _BeatState] = {}  # heartbeat target -> its state

    async def submit(self, request: WriteRequest) -> WriteOutcome:
        """Run ``request`` through every rule; never raises for a refusal or a device failure
        (the outcome says), only if the audit trail cannot record the outcome of a write that
        was executed (then the outcome is in the log).

        The write runs in a task of its own (``write.<target>``, owned here): a caller that is
        cancelled — an HTTP connection closed, the API stopping — does not cut a write between
        its execution and its read-back; it finishes and is recorded (see :meth:`drain`)."""
        task = asyncio.get_running_loop().create_task(
            self._submit(request), name=f"write.{request.target[:64]}"
        )
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    def claim(self, target: str, owner: str) -> None:
        """Make ``owner`` the only identity whose writes to ``target`` pass (a controller in
        automatic mode); ``GatewayError`` if another owns it or it is not declared."""
        if target not in self.targets:
            raise GatewayError(f"{target!r} is not a writable target")
        holder = self._owners.get(target)
        if holder is not None and holder != owner:
            raise GatewayError(f"{target} is owned by {holder!r}")
        self._owners[target] = owner
        if holder is None:
            log.info("write.target_claimed", target=target, owner=owner)

    def release(self, target: str, owner: str) -> None:
        """``owner`` gives ``target`` up (nothing happens if it does not own it)."""
        if self._owners.get(target) == owner:
            del self._owners[target]
            log.info("write.target_released", target=target, owner=owner)

    def owner(self, target: str) -> str | None:
        """Who owns ``target`` now, if anyone."""
        return self._owners.get(target)

    async def heartbeat(self, target: str, value: float, identity: Identity) -> None:
        """Write ``value`` to the heartbeat target ``target``, as ``identity``.

        Checked like a write (declared, a heartbeat target, the identity qualifies, the
        instrument up) but not read back and not recorded per beat: the first beat, the first
        failure of a run of failures and the recovery from it are. Raises
        ``WriteRefusedError`` (nothing sent) or ``InstrumentError`` (the device did not answer).
        """
        resolved = self.targets.get(target)
        if resolved is None or not resolved.config.heartbeat:
            raise WriteRefusedError(f"{target!r} is not a heartbeat target under writes:")
        if not self.qualifies(identity, resolved.config.role):
            raise WriteRefusedError(
                f"{identity.name!r} may not beat {target}: it needs the role"
                f" {resolved.config.role!r}"
            )
        state = self._beats.setdefault(target, _BeatState())
        try:
            if not self._is_up(resolved.instrument):
                raise InstrumentError(f"instrument {resolved.instrument!r} is not connected")
            device = self._devices[resolved.instrument]
            async with self._locks[target]:
                beat = device.write(resolved.channel, resolved.to_device(value))
                await self._answer(beat, "beat")
        except (InstrumentError, WriteRefusedError) as exc:
            state.failures += 1
            if state.failures == 1:
                await self._beat_record(
                    "heartbeat.failed", target, identity, "failed", str(exc), state
                )
            raise
        state.beats += 1
        if state.beats == 1 or state.failures:
            action = "heartbeat.started" if state.beats == 1 else "heartbeat.recovered"
            await self._beat_record(action, target, identity, "ok", "", state)
            state.failures = 0

    async def _beat_record(
        self,
        action: str,
        target: str,
        identity: Identity,
        outcome: str,
        why: str,
        state: _BeatState,
    ) -> None:
        from ..audit import AuditEvent

        details: dict[str, Any] = {"interface": "controller", "beats": state.beats}
        if why:
            details["why"] = why
        if state.failures:
            details["failed_beats"] = state.failures
        try:
            await self._record(
                AuditEvent(action, identity.name, target, outcome=outcome, details=details)
            )
        except GatewayError as exc:  # a beat keeps the pump safe; it is not refused for this
            log.error("write.heartbeat_not_audited", target=target, reason=str(exc))

    async def drain(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, for the writes under way (at the stop, once no new
        write can start, before the instruments stop)."""
        if self._inflight:
            _, late = await asyncio.wait(set(self._inflight), timeout=timeout_s)
            for task in late:
                log.error("write.unfinished_at_stop", task=task.get_name())
                task.cancel()
            if late:  # each records what it had done (a moment: the audit trail's queue)
                await asyncio.wait(late, timeout=timeout_s)

    async def _submit(self, request: WriteRequest) -> WriteOutcome:
        target = self.targets.get(request.target)
        unit = target.unit if target is not None else ""
        outcome = WriteOutcome("refused", "", request.target, request.value, unit)
        try:
            if target is None:
                known = ", ".join(sorted(self.targets)) or "none"
                raise _Refused(
                    "not-declared",
                    f"{request.target!r} is not a writable target (declared: {known})",
                )
            async with self._locks[request.target], self._instrument_lock(target.instrument):
                await self._run(request, target, outcome)
        except _Refused as refusal:
            outcome.outcome, outcome.rule = "refused", refusal.rule
            outcome.message = refusal.message
            await self._refused(request, outcome)
        self.counts[outcome.outcome] = self.counts.get(outcome.outcome, 0) + 1
        log.info(
            "write.outcome",
            target=request.target,
            user=request.identity.name,
            interface=request.interface,
            outcome=outcome.outcome,
            rule=outcome.rule or None,
            value=request.value,
            old=outcome.old,
            read_back=outcome.read_back,
        )
        return outcome

    async def _answer(self, call: Awaitable[_T], what: str) -> _T:
        """``call``'s result; ``InstrumentError`` if the driver gives none within
        :attr:`device_timeout_s` (see :data:`DEVICE_TIMEOUT_S`)."""
        bound = asyncio.timeout(self.device_timeout_s)
        try:
            async with bound:
                return await call
        except TimeoutError as exc:
            if not bound.expired():
                raise  # the driver's own
            raise InstrumentError(
                f"no answer to the {what} within {self.device_timeout_s:g} s"
            ) from exc

    def _instrument_lock(self, instrument: str) -> asyncio.Lock:
        lock = self._instrument_locks.get(instrument)
        if lock is None:
            lock = self._instrument_locks[instrument] = asyncio.Lock()
        return lock

    async def submit_command(self, request: CommandRequest) -> CommandOutcome:
        """Run a device command through every rule (see the module); like :meth:`submit`, in
        a task of its own (``command.<target>``) that a cancelled caller does not cut, and
        never raising for a refusal or a device failure."""
        task = asyncio.get_running_loop().create_task(
            self._submit_command(request), name=f"command.{request.target[:64]}"
        )
        self._inflight.add(task)  # drained with the writes
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def _submit_command(self, request: CommandRequest) -> CommandOutcome:
        # As given, until checked: bounded, for a refusal's record of what was asked.
        outcome = CommandOutcome(
            "refused", "", request.target, _bounded(request.arguments, recordable)
        )
        target = self.commands.get(request.target)
        try:
            if target is None:
                known = ", ".join(sorted(self.commands)) or "none"
                raise _Refused(
                    "not-declared",
                    f"{request.target!r} is not a declared command (declared: {known})",
                )
            self._authorise(request, target.config.role, target.config.signature)
            try:
                outcome.arguments = check_arguments(target.command, request.arguments)
            except ValueError as exc:
                raise _Refused("arguments", str(exc)) from exc
            async with self._instrument_lock(target.instrument):
                await self._run_command(request, target, outcome)
        except _Refused as refusal:
            outcome.outcome, outcome.rule = "refused", refusal.rule
            outcome.message = refusal.message
            try:
                outcome.records.append(
                    await self._record(
                        _command_event(
                            "command.refused",
                            request,
                            "refused",
                            outcome.arguments,
                            why=outcome.message,
                            details={"rule": outcome.rule},
                        )
                    )
                )
            except GatewayError as exc:
                log.error("command.refusal_not_audited", target=request.target, reason=str(exc))
        self.counts[f"command.{outcome.outcome}"] = (
            self.counts.get(f"command.{outcome.outcome}", 0) + 1
        )
        log.info(
            "command.outcome",
            target=request.target,
            user=request.identity.name,
            interface=request.interface,
            outcome=outcome.outcome,
            rule=outcome.rule or None,
            arguments=outcome.arguments,
            result=outcome.result,
        )
        return outcome

    async def _run_command(
        self, request: CommandRequest, target: CommandTarget, outcome: CommandOutcome
    ) -> None:
        device = self._commanded.get(target.instrument)
        if device is None or not self._is_up(target.instrument):
            raise _Refused(
                "instrument-down",
                f"instrument {target.instrument!r} is not connected: nothing was sent",
            )
        arguments = outcome.arguments
        try:
            outcome.records.append(
                await self._record(
                    _command_event(
                        "command.requested",
                        request,
                        "accepted",
                        arguments,
                        details=_signature_details(request),
                    )
                )
            )
        except GatewayError as exc:
            raise _Refused(
                "audit-unavailable",
                f"the audit trail cannot be written ({exc}): nothing was sent",
            ) from exc
        name = target.command.name
        try:
            result = await self._answer(device.command(name, arguments), name)
            reported = _bounded(dict(result or {}), _reported)
        except asyncio.CancelledError:
            # The gateway stops while the device is asked: what it did is not known, and says so.
            why = "the gateway stopped before the device answered"
            outcome.outcome = "failed"
            outcome.message = f"{name} failed, its outcome unknown: {why}"
            outcome.records.append(
                await asyncio.shield(
                    self._record(
                        _command_event("command.failed", request, "unknown", arguments, why=why)
                    )
                )
            )
            raise
        except WriteRefusedError as exc:  # nothing was done
            why = _short(str(exc))
            outcome.outcome, outcome.message = "failed", f"the device refused {name}: {why}"
            outcome.records.append(
                await self._record(
                    _command_event("command.failed", request, "refused", arguments, why=why)
                )
            )
            return
        except Exception as exc:
            # InstrumentError: it may have reached the device. Anything else is the driver's bug
            # (a result that is no mapping, an exception it did not translate): the device may
            # have acted all the same, and the request on record must not stay without outcome.
            why = _short(str(exc) or type(exc).__name__)
            outcome.outcome = "failed"
            outcome.message = f"{name} failed, its outcome unknown: {why}"
            outcome.records.append(
                await self._record(
                    _command_event("command.failed", request, "unknown", arguments, why=why)
                )
            )
            return
        outcome.outcome, outcome.result = "done", reported
        shown = ", ".join(f"{k} {v}" for k, v in reported.items())
        outcome.message = f"{request.target} done" + (f": {shown}" if shown else "")
        outcome.records.append(
            await self._record(
                _command_event(
                    "command.executed", request, "ok", arguments, details={"result": reported}
                )
            )
        )

    async def _run(self, request: WriteRequest, target: WriteTarget, outcome: WriteOutcome) -> None:
        config = target.config
        if config.heartbeat:
            raise _Refused(
                "heartbeat",
                f"{request.target} is a heartbeat: only the controller that beats it writes it",
            )
        owner = self._owners.get(request.target)
        if owner is not None and owner != request.identity.name:
            raise _Refused(
                "owner",
                f"{request.target} is controlled by {owner!r} in automatic mode: switch it to"
                " manual first",
            )
        self._authorise(request, config.role, config.signature)
        value = request.value
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Refused("limit", f"{value!r} is not a finite number")
        if not config.min <= value <= config.max:
            raise _Refused(
                "limit",
                f"{value:g} {target.unit} is outside the limits {config.min:g}..{config.max:g}"
                f" {target.unit} of {request.target}",
            )
        if not self._is_up(target.instrument):
            raise _Refused(
                "instrument-down",
                f"instrument {target.instrument!r} is not connected: nothing was written",
            )
        device = self._devices[target.instrument]
        try:
            old = target.from_device(await self._answer(device.read_back(target.channel), "read"))
        except (InstrumentError, WriteRefusedError) as exc:
            raise _Refused(
                "instrument-down",
                f"the current value of {request.target} could not be read ({exc}):"
                " nothing was written",
            ) from exc
        outcome.old = old
        self._check_change(request, target, old)
        signature = _signature_details(request)
        # Fail closed: without the request on record, nothing is written.
        try:
            outcome.records.append(
                await self._record(
                    _event(
                        "write.requested",
                        request,
                        "accepted",
                        old=old,
                        new=value,
                        details={"unit": target.unit, **signature},
                    )
                )
            )
        except GatewayError as exc:
            raise _Refused(
                "audit-unavailable",
                f"the audit trail cannot be written ({exc}): nothing was written",
            ) from exc
        device_value = target.to_device(value)
        try:
            await self._answer(device.write(target.channel, device_value), "write")
        except asyncio.CancelledError:
            # The gateway stops while the device is asked: the request is on record, and so is
            # that its outcome is unknown (no read: the stop's bound is a moment).
            why = "the gateway stopped before the device answered"
            outcome.outcome, outcome.message = (
                "failed",
                f"the write failed, its outcome unknown ({why})",
            )
            outcome.records.append(
                await asyncio.shield(
                    self._record(
                        _event("write.failed", request, "unknown", old=old, new=value, why=why)
                    )
                )
            )
            raise
        except WriteRefusedError as exc:  # refused by the driver or the device: nothing changed
            outcome.outcome, outcome.message = "failed", f"the device refused the write: {exc}"
            outcome.records.append(
                await self._record(
                    _event("write.failed", request, "refused", old=old, new=value, why=str(exc))
                )
            )
            return
        except InstrumentError as exc:
            # The request may have reached the device: what it holds now is read, if it can be.
            holds: float | None = None
            with contextlib.suppress(InstrumentError, WriteRefusedError):
                holds = target.from_device(
                    await self._answer(device.read_back(target.channel), "read")
                )
            outcome.outcome, outcome.read_back = "failed", holds
            outcome.message = (
                f"the write failed, its outcome unknown ({exc}); the device reads {holds}"
            )
            outcome.records.append(
                await self._record(
                    _event(
                        "write.failed",
                        request,
                        "unknown",
                        old=old,
                        new=value,
                        why=str(exc),
                        details={"read_back": holds},
                    )
                )
            )
            return
        self._last[request.target] = (self._clock(), value)
        outcome.records.append(
            await self._record(
                _event(
                    "write.executed",
                    request,
                    "ok",
                    old=old,
                    new=value,
                    details={"device_value": device_value},
                )
            )
        )
        try:
            if config.readback_delay_s:
                await asyncio.sleep(config.readback_delay_s)
            read = target.from_device(await self._answer(device.read_back(target.channel), "read"))
        except asyncio.CancelledError:
            # The gateway stops (its bound leaves writes under way a moment, not a read-back
            # delay): the write is on record, so is that it was never verified.
            why = "the gateway stopped before the read-back"
            outcome.outcome, outcome.message = "failed", f"written, but {why}"
            outcome.records.append(
                await asyncio.shield(
                    self._record(
                        _event("write.read_back", request, "failed", old=old, new=value, why=why)
                    )
                )
            )
            raise
        except (InstrumentError, WriteRefusedError) as exc:
            outcome.outcome = "failed"
            outcome.message = f"written, but the read-back failed: {exc}"
            outcome.records.append(
                await self._record(
                    _event("write.read_back", request, "failed", old=old, new=value, why=str(exc))
                )
            )
            return
        outcome.read_back = read
        equal = abs(read - value) <= config.tolerance_for(value)
        outcome.outcome = "done" if equal else "mismatch"
        outcome.message = (
            f"{request.target} set to {value:g} {target.unit} (was {old:g}), read back {read:g}"
            if equal
            else f"{request.target}: wrote {value:g} {target.unit} but the device reads back"
            f" {read:g} {target.unit} (was {old:g})"
        )
        outcome.records.append(
            await self._record(
                _event(
                    "write.read_back",
                    request,
                    "ok" if equal else "mismatch",
                    old=old,
                    new=value,
                    details={"read_back": read},
                )
            )
        )

    def _authorise(
        self, request: WriteRequest | CommandRequest, role: str, needs_signature: str
    ) -> None:
        identity = request.identity
        verb = "write" if isinstance(request, WriteRequest) else "run"
        if not self.qualifies(identity, role):
            raise _Refused(
                "role",
                f"user {identity.name!r} (roles: {', '.join(sorted(identity.roles)) or 'none'})"
                f" may not {verb} {request.target}: it needs the role {role!r}",
            )
        if not request.reason.strip():
            raise _Refused(
                "reason", f"a {'write' if verb == 'write' else 'command'} needs a reason"
            )
        if len(request.reason) > MAX_REASON_CHARS:
            raise _Refused(
                "reason",
                f"a reason is at most {MAX_REASON_CHARS} characters, not {len(request.reason)}",
            )
        if needs_signature == "none":
            return
        signature = request.signature
        if signature is None or not signature.meaning.strip():
            raise _Refused(
                "signature",
                f"{request.target} needs an electronic signature: give its meaning"
                " (e.g. 'performed')",
            )
        if needs_signature == "witnessed":
            witness = signature.witness
            if witness is None:
                raise _Refused("signature", f"{request.target} needs a second person's signature")
            if witness.name == identity.name:
                raise _Refused("signature", "the witness must be another person")
            if not self.qualifies(witness, role):
                raise _Refused(
                    "signature",
                    f"witness {witness.name!r} may not sign for {request.target}: it needs"
                    f" the role {role!r}",
                )

    def qualifies(self, identity: Identity, role: str) -> bool:
        """Whether ``identity`` may write targets that need ``role``."""
        if not identity.may(Permission.WRITE):
            return False
        if role in identity.roles:
            return True
        needed = self.authority.role_permissions(role)
        return bool(needed) and needed <= identity.permissions

    def _check_change(self, request: WriteRequest, target: WriteTarget, old: float) -> None:
        config, value = target.config, request.value
        change = abs(value - old)
        if config.max_step is not None and change > config.max_step:
            raise _Refused(
                "step",
                f"a change of {change:g} {target.unit} (from {old:g} to {value:g}) is more"
                f" than the largest step, {config.max_step:g} {target.unit}",
            )
        last = self._last.get(request.target)
        if config.max_rate_per_s is not None and last is not None:
            waited = self._clock() - last[0]
            needed = change / config.max_rate_per_s
            if waited < needed:
                raise _Refused(
                    "rate",
                    f"a change of {change:g} {target.unit} needs {needed:.1f} s after the last"
                    f" write at {config.max_rate_per_s:g} {target.unit}/s; try again in"
                    f" {needed - waited:.1f} s",
                )

    async def _refused(self, request: WriteRequest, outcome: WriteOutcome) -> None:
        try:
            outcome.records.append(
                await self._record(
                    _event(
                        "write.refused",
                        request,
                        "refused",
                        old=outcome.old,
                        new=request.value,
                        why=outcome.message,
                        details={"rule": outcome.rule},
                    )
                )
            )
        except GatewayError as exc:
            log.error("write.refusal_not_audited", target=request.target, reason=str(exc))


def recordable(value: object) -> object:
    """A requested value as the audit trail's JSON can hold it: numbers, text and None as they
    are; NaN, the infinities (refused, but recorded) and anything else as short text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return _short(_storable(value), 200)
    if value is None or isinstance(value, (int, float)):
        return value
    return _repr(value)


_KEYS = 32  # of a device's report or a refused command's arguments, kept in the audit trail
_TEXT = 500  # characters of a value, a name or a message kept


def _repr(value: object) -> str:
    """``value`` as short text, also nested deeper than repr can follow (a JSON body of 2 KB)."""
    try:
        return _short(repr(value), 200)
    except RecursionError:
        return f"<{type(value).__name__} nested too deep to show>"


def _storable(text: str) -> str:
    """``text`` with a lone surrogate (JSON's ``"\\ud800"``: no UTF-8, so no SQLite) written
    as its escape, so that a refusal of it can be recorded."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _short(text: str, limit: int = _TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _bounded(values: Mapping[Any, Any], convert: Callable[[object], object]) -> dict[str, Any]:
    """``values`` as the audit trail keeps them: at most :data:`_KEYS` names of at most 100
    characters, each value by ``convert`` (a device or a caller may send
    megabytes; the trail keeps what tells what happened, not all of it)."""
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if len(kept) == _KEYS:
            kept["…"] = f"{len(values) - _KEYS} more"
            break
        kept[_short(_storable(str(key)), 100)] = convert(value)
    return kept


def _reported(value: object) -> object:
    """A value a device reported, as the audit trail keeps it: JSON as it is (lists and objects
    too) if short, anything else (or NaN) as short text."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _repr(value)
    return value if len(text) <= _TEXT else _short(text)


def _signature_details(request: WriteRequest | CommandRequest) -> dict[str, Any]:
    signature = request.signature
    if signature is None:
        return {}
    signed: dict[str, Any] = {
        "signature": {
            "name": request.identity.full_name,
            "user": request.identity.name,
            "meaning": signature.meaning,
            "ts": time.time_ns(),
        }
    }
    if signature.witness is not None:
        signed["witness"] = {
            "name": signature.witness.full_name,
            "user": signature.witness.name,
            "meaning": signature.witness_meaning or "witnessed",
            "ts": time.time_ns(),
        }
    return signed


def _event(
    action: str,
    request: WriteRequest,
    outcome: str,
    *,
    old: float | None,
    new: float,
    why: str = "",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    from ..audit import AuditEvent

    return AuditEvent(
        action=action,
        user=request.identity.name,
        target=request.target,
        old=old,
        new=recordable(new),
        reason=_short(request.reason, MAX_REASON_CHARS),
        outcome=outcome,
        details={
            "interface": request.interface,
            **({"why": why} if why else {}),
            **(details or {}),
        },
    )


def _command_event(
    action: str,
    request: CommandRequest,
    outcome: str,
    arguments: Mapping[str, Any],
    *,
    why: str = "",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    from ..audit import AuditEvent

    return AuditEvent(
        action=action,
        user=request.identity.name,
        target=request.target,
        new={str(k): recordable(v) for k, v in arguments.items()},
        reason=_short(request.reason, MAX_REASON_CHARS),
        outcome=outcome,
        details={
            "interface": request.interface,
            **({"why": why} if why else {}),
            **(details or {}),
        },
    )


def authenticate_witness(
    authority: Authority, name: str, password: str, interface: str, peer: str = ""
) -> Identity:
    """The witness of a signature, authenticated with purpose ``signature``."""
    try:
        return authority.authenticate(
            name, password, interface=interface, peer=peer, purpose="signature"
        )
    except AuthenticationError as exc:
        raise AuthenticationError(f"witness: {exc}") from exc
