"""What a plugin that takes logins or writes (the OPC UA server) is handed: :class:`Access`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..audit import AuditEvent
from ..errors import GatewayError
from ..security import Authority
from .commands import CommandOutcome, CommandRequest, CommandTarget
from .path import WriteOutcome, WritePath, WriteRequest, WriteTarget, recordable

__all__ = ["Access"]


class Access:
    """The configuration's user base and declared write targets; writes are submitted once
    the runtime has bound its :class:`WritePath` (while the gateway runs)."""

    def __init__(
        self,
        authority: Authority,
        targets: Mapping[str, WriteTarget],
        commands: Mapping[str, CommandTarget] | None = None,
    ) -> None:
        self.authority = authority
        self.targets = dict(targets)
        self.commands = dict(commands or {})
        self._path: WritePath | None = None
        self._note: Callable[[AuditEvent], None] | None = None

    def bind(
        self, path: WritePath | None, note: Callable[[AuditEvent], None] | None = None
    ) -> None:
        """The running gateway's write path, and where refusals an interface decides alone
        are recorded (the audit recorder's non-blocking ``note``); None at the stop."""
        self._path = path
        self._note = note

    def note_refusal(
        self,
        user: str,
        target: str,
        value: object,
        rule: str,
        why: str,
        interface: str,
        action: str = "write.refused",
    ) -> None:
        """Record a write (or, with ``action="command.refused"``, a command) an interface
        refused before it reached the write path (an OPC UA Write of a node that is no target,
        of a string, by a viewer): it changed nothing."""
        if self._note is None:
            return
        self._note(
            AuditEvent(
                action=action,
                user=user[:64],
                target=target[:200],
                new=recordable(value),
                outcome="refused",
                details={"interface": interface, "why": why, "rule": rule},
            )
        )

    def owner(self, target: str) -> str | None:
        """The processor that owns ``target`` now (a controller in automatic mode), if any."""
        return None if self._path is None else self._path.owner(target)

    async def write(self, request: WriteRequest) -> WriteOutcome:
        """Submit ``request`` to the write path (see :class:`WritePath`)."""
        if self._path is None:
            raise GatewayError("writes are not possible: the gateway is not running")
        return await self._path.submit(request)

    async def command(self, request: CommandRequest) -> CommandOutcome:
        """Submit a device command to the write path (see :meth:`WritePath.submit_command`)."""
        if self._path is None:
            raise GatewayError("commands are not possible: the gateway is not running")
        return await self._path.submit_command(request)
