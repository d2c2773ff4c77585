"""The ``commands:`` section: the device commands (tare, zero, start, stop) the gateway may run.

Nothing is runnable unless declared here, as ``<area>/<instrument>/<command>`` (e.g.
``reactor1/feed_pump/start``): the instrument's driver must offer the command
(:class:`~gateway.api.CommandDriver`). A command runs through the same path as a write (see
:class:`~gateway.control.WritePath`): authorised, a reason, a signature if declared, the
instrument up, ``command.requested`` on record before the driver is asked.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..api import CommandArgument, CommandDriver, DeviceCommand
from ..security import Identity

if TYPE_CHECKING:
    from ..loader import InstrumentPlan
    from .path import Signature

__all__ = [
    "CommandOutcome",
    "CommandRequest",
    "CommandTarget",
    "CommandTargetConfig",
    "check_arguments",
    "resolve_commands",
]

_ROLE = r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$"


class CommandTargetConfig(BaseModel):
    """One device command that may be run, and who may run it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Annotated[str, Field(min_length=5, max_length=200)] = Field(
        description="'<area>/<instrument id>/<command>', e.g. 'reactor1/feed_pump/start': the"
        " command the instrument's driver offers (`patgw plugins` lists drivers; `patgw check`"
        " names the commands of one that lacks it)."
    )
    role: Annotated[str, Field(pattern=_ROLE, max_length=64)] = Field(
        default="operator",
        description="Role a user needs to run it: holding it, or a role with at least its"
        " permissions (and the 'write' permission).",
    )
    signature: Literal["none", "required", "witnessed"] = Field(
        default="none",
        description="'required': an electronic signature (password re-entered, with its"
        " meaning); 'witnessed': also a second person's, who must qualify too.",
    )
    description: str = Field(default="", max_length=500, description="What it does here.")


@dataclass(frozen=True, slots=True)
class CommandTarget:
    """A declared command resolved against its instrument's driver."""

    config: CommandTargetConfig
    instrument: str
    command: DeviceCommand


@dataclass(frozen=True, slots=True)
class CommandRequest:
    target: str
    identity: Identity
    reason: str
    interface: str  # "api", "console", "opcua"
    arguments: Mapping[str, Any] = field(default_factory=dict)
    signature: Signature | None = None


@dataclass(slots=True)
class CommandOutcome:
    """What became of a command. ``outcome``: ``done`` (the device acknowledged; ``result`` is
    what it reported), ``failed`` (the device refused it or did not answer: ``message`` says
    whether it may have acted), ``refused`` (nothing sent; ``rule`` says which rule)."""

    outcome: str
    message: str
    target: str
    arguments: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
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
            "arguments": self.arguments,
            "result": self.result,
            "rule": self.rule or None,
            "audit_records": self.records,
        }


def resolve_commands(
    commands: Sequence[CommandTargetConfig],
    area: str,
    instruments: Sequence[InstrumentPlan],
    known_roles: Sequence[str],
    problems: list[str],
    unloaded: Collection[str] = (),
    taken: Collection[str] = (),
) -> dict[str, CommandTarget]:
    """Each declared command, resolved; a ``"commands[i].field: message"`` line in
    ``problems`` for each that cannot be (unknown instrument or command, a driver without
    commands, an unknown role, a duplicate, an id that is also a write target in ``taken``).
    Commands of ``unloaded`` instruments (their own problem is reported) are left out."""
    by_id = {inst.config.id: inst for inst in instruments}
    targets: dict[str, CommandTarget] = {}
    for i, config in enumerate(commands):
        where = f"commands[{i}]"
        parts = config.target.split("/")
        if len(parts) != 3 or not all(parts):
            problems.append(
                f"{where}.target: {config.target!r} is not '<area>/<instrument>/<command>'"
            )
            continue
        if config.target in targets:
            problems.append(f"{where}.target: {config.target!r} is declared twice")
            continue
        if config.target in taken:
            problems.append(f"{where}.target: {config.target!r} is also a target under writes:")
            continue
        if config.role not in known_roles:
            problems.append(
                f"{where}.role: unknown role {config.role!r} (roles: {', '.join(known_roles)})"
            )
            continue
        target_area, instrument_id, name = parts
        if target_area != area:
            problems.append(
                f"{where}.target: {config.target!r} is not in this gateway's area {area!r}"
            )
            continue
        inst = by_id.get(instrument_id)
        if inst is None:
            if instrument_id not in unloaded:
                known = ", ".join(sorted(by_id)) or "none"
                problems.append(
                    f"{where}.target: no enabled instrument {instrument_id!r} (instruments:"
                    f" {known})"
                )
            continue
        driver = inst.driver
        if not isinstance(driver, CommandDriver):
            problems.append(
                f"{where}.target: driver {inst.config.driver!r} of instrument {instrument_id!r}"
                " offers no commands (it does not implement gateway.CommandDriver)"
            )
            continue
        offered = {c.name: c for c in driver.commands()}
        command = offered.get(name)
        if command is None:
            known = ", ".join(sorted(offered)) or "none"
            problems.append(
                f"{where}.target: driver {inst.config.driver!r} of instrument {instrument_id!r}"
                f" has no command {name!r} (commands: {known})"
            )
            continue
        targets[config.target] = CommandTarget(config, instrument_id, command)
    return targets


def check_arguments(command: DeviceCommand, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` checked against ``command``'s and converted (an integer given as 2.0 is
    2); ``ValueError`` naming the argument if one is unknown, missing, of the wrong kind or out
    of its range."""
    declared = {a.name: a for a in command.arguments}
    unknown = sorted(set(arguments) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        name = unknown[0] if len(unknown[0]) <= 100 else f"{unknown[0][:100]}…"  # a caller's text
        raise ValueError(f"{command.name} takes no argument {name!r} (arguments: {known})")
    checked: dict[str, Any] = {}
    for name, argument in declared.items():
        if name not in arguments or arguments[name] is None:
            if argument.required:
                raise ValueError(f"{command.name} needs the argument {name!r}")
            continue
        checked[name] = _argument(command.name, argument, arguments[name])
    return checked


def _argument(command: str, argument: CommandArgument, value: object) -> object:
    where = f"{command}: argument {argument.name!r}"
    if argument.kind == "text":
        if not isinstance(value, str) or len(value) > 200:
            raise ValueError(f"{where} must be text (at most 200 characters)")
        try:
            value.encode("utf-8")  # JSON's "\ud800" has no UTF-8: the audit trail could not keep it
        except UnicodeEncodeError:
            raise ValueError(f"{where} is not valid Unicode text (a lone surrogate)") from None
        return value
    if argument.kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits (JSON takes 4300)
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{where} must be a finite number")
    if argument.kind == "integer" and not number.is_integer():
        raise ValueError(f"{where} must be a whole number")
    if argument.min is not None and number < argument.min:
        raise ValueError(f"{where}: {number:g} is below {argument.min:g} {argument.unit}".rstrip())
    if argument.max is not None and number > argument.max:
        raise ValueError(f"{where}: {number:g} is above {argument.max:g} {argument.unit}".rstrip())
    return int(number) if argument.kind == "integer" else number
