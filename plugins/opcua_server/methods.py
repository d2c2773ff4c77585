"""Device commands as OPC UA Methods: only declared ones, only through the gateway's write path.

Each command declared under ``commands:`` is a Method of its instrument's object (node id
``<area>/<instrument>/<command>``, browse name the command's), with the input arguments
``Reason`` (String, required: kept in the audit trail) and then the command's own, in their
declared order (Double, Int64, String or Boolean), and one output argument ``Result`` (the
device's report as JSON text). A Call runs the command as the session's user through the
controlled write path (role, reason, audit, serialisation with writes), exactly as the local
API does; a command that needs an electronic signature cannot be run here (refused: use
``patgw command``, the local API or the console).

Outcome → the Call's status: done ``Good``; refused for the role or a signature
``BadUserAccessDenied``, for the reason or the arguments ``BadInvalidArgument``; instrument down
``BadNoCommunication``; audit trail unavailable ``BadResourceUnavailable``; the device failed
``BadDeviceFailure``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog
from asyncua import ua
from asyncua.crypto.permission_rules import UserRole
from asyncua.server.server import Server

from gateway import CommandArgument, GatewayError
from gateway.control import Access, CommandOutcome, CommandRequest, CommandTarget

from ._ua import StatusCodes, status, string_node
from .hardened import calling_user

__all__ = ["add_command_methods"]

log = structlog.get_logger("plugins.opcua_server")

_BY_RULE = {
    "role": StatusCodes.BadUserAccessDenied,
    "signature": StatusCodes.BadUserAccessDenied,
    "reason": StatusCodes.BadInvalidArgument,
    "arguments": StatusCodes.BadInvalidArgument,
    "not-declared": StatusCodes.BadMethodInvalid,
    "instrument-down": StatusCodes.BadNoCommunication,
    "audit-unavailable": StatusCodes.BadResourceUnavailable,
}
_TYPES = {
    "number": ua.VariantType.Double,
    "integer": ua.VariantType.Int64,
    "text": ua.VariantType.String,
    "boolean": ua.VariantType.Boolean,
}


async def add_command_methods(
    server: Server, namespace: int | None, access: Access, identities: Mapping[str, Any]
) -> list[str]:
    """Add a Method per declared command under its instrument's object; the targets added
    (a command whose instrument has no object, as it publishes no signal here, is left out
    and logged)."""
    if namespace is None:
        return []
    added = []
    for name, target in sorted(access.commands.items()):
        area, instrument, _ = name.split("/")
        parent_id = string_node(f"{area}/{instrument}", namespace)
        if parent_id not in server.iserver.aspace:
            log.warning("opcua_server.command_without_object", target=name)
            continue
        handler = _CommandMethod(name, target, access, identities)
        inputs = [_argument("Reason", ua.VariantType.String, "Why: kept in the audit trail")]
        inputs += [_argument(a.name, _TYPES[a.kind], _about(a)) for a in target.command.arguments]
        outputs = [_argument("Result", ua.VariantType.String, "What the device reported (JSON)")]
        await server.get_node(parent_id).add_method(
            string_node(name, namespace),
            ua.QualifiedName(target.command.name, namespace),
            handler.call,  # a bound coroutine function: asyncua awaits it on the loop
            inputs,
            outputs,
        )
        added.append(name)
    return added


def _about(argument: CommandArgument) -> str:
    unit = f" ({argument.unit})" if argument.unit else ""
    return f"{argument.description}{unit}".strip()


def _argument(name: str, vtype: ua.VariantType, description: str) -> ua.Argument:
    argument = ua.Argument()
    argument.Name = ua.String(name)
    argument.DataType = ua.NodeId(ua.Int32(vtype.value))
    argument.ValueRank = ua.Int32(-1)
    argument.Description = ua.LocalizedText(description)
    return argument


class _CommandMethod:
    """One command's Method callback (asyncua calls it with the object's node id and the input
    arguments' variants)."""

    def __init__(
        self, target: str, declared: CommandTarget, access: Access, identities: Mapping[str, Any]
    ) -> None:
        self._target = target
        self._declared = declared
        self._access = access
        self._identities = identities

    async def call(self, parent: ua.NodeId, *values: Any) -> Any:
        user = calling_user()
        name = (user.name or "") if user is not None else ""
        identity = self._identities.get(name) if user is not None else None
        if user is None or user.role is not UserRole.User or identity is None:
            return status(StatusCodes.BadUserAccessDenied)
        raw = [v.Value if isinstance(v, ua.Variant) else v for v in values]
        declared = self._declared.command.arguments
        if len(raw) != 1 + len(declared) or not isinstance(raw[0], str):
            self._access.note_refusal(
                name,
                self._target,
                None,
                "arguments",
                f"a Call of {self._target} takes Reason (text) and"
                f" {len(declared)} argument(s) of the command",
                "opcua",
                action="command.refused",
            )
            return status(StatusCodes.BadArgumentsMissing)
        arguments = {a.name: v for a, v in zip(declared, raw[1:], strict=True)}
        request = CommandRequest(self._target, identity, raw[0], "opcua", arguments)
        try:
            outcome = await self._access.command(request)
        except GatewayError as exc:
            log.warning("opcua_server.command_refused", target=self._target, reason=str(exc))
            return status(StatusCodes.BadResourceUnavailable)
        if outcome.outcome != "done":
            return status(_status(outcome))
        return [ua.Variant(json.dumps(outcome.result), ua.VariantType.String)]


def _status(outcome: CommandOutcome) -> int:
    if outcome.outcome == "refused":
        return int(_BY_RULE.get(outcome.rule, StatusCodes.BadUserAccessDenied))
    return int(StatusCodes.BadDeviceFailure)
