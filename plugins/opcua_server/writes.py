"""Writes from OPC UA clients: only to declared targets, only through the gateway's write path.

The variable of a signal declared in ``writes:`` is writable (``AccessLevel`` CurrentWrite); a
client's Write of its Value is not applied to the address space but handed to the gateway's
controlled write path (role, limits, step, rate, audit, execution by the driver, read-back), as
a request by the session's user. The variable then shows the device's value as the gateway reads
it, like any other signal. Every other variable stays read-only; other attributes are never
writable.

OPC UA's Write carries no reason: the request's reason records the interface and the client
(``written over OPC UA by <client>``). A target that needs an electronic signature cannot be
written here (refused: use ``patgw write`` or the local API).

Outcome → the Write's status code: done ``Good``; refused for the role ``BadUserAccessDenied``,
for the limits/step/rate ``BadOutOfRange``, for a signature ``BadUserAccessDenied``; instrument
down ``BadNoCommunication``; audit trail unavailable ``BadResourceUnavailable``; the device
failed or read back another value ``BadDeviceFailure``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole

from gateway import GatewayError
from gateway.control import Access, WriteOutcome, WriteRequest

from ._ua import AttributeIds, StatusCodes, status

__all__ = ["WriteHandler"]

log = structlog.get_logger("plugins.opcua_server")

_BY_RULE = {
    "role": StatusCodes.BadUserAccessDenied,
    "signature": StatusCodes.BadUserAccessDenied,
    "reason": StatusCodes.BadUserAccessDenied,
    "limit": StatusCodes.BadOutOfRange,
    "step": StatusCodes.BadOutOfRange,
    "rate": StatusCodes.BadOutOfRange,
    "instrument-down": StatusCodes.BadNoCommunication,
    "audit-unavailable": StatusCodes.BadResourceUnavailable,
    "not-declared": StatusCodes.BadNotWritable,
}

Write = Callable[[ua.WriteParameters, User], Awaitable[list[ua.StatusCode]]]


class WriteHandler:
    """Replaces the server's attribute-service write (see the module docstring)."""

    def __init__(
        self,
        access: Access,
        identities: Mapping[str, Any],
        namespace: Callable[[], int | None],
        original: Write,
    ) -> None:
        self._access = access
        self._identities = identities
        self._namespace = namespace
        self._original = original

    async def __call__(
        self, params: ua.WriteParameters, user: User | None = None
    ) -> list[ua.StatusCode]:
        if user is None or user.role is UserRole.Admin:
            # The server itself (internal writes; asyncua's default user is its Admin).
            return await self._original(params, user or User(role=UserRole.Admin))
        results = []
        for item in params.NodesToWrite:
            results.append(status(await self._one(item, user)))
        return results

    async def _one(self, item: ua.WriteValue, user: User) -> int:
        target = self._target_of(item.NodeId)
        name = user.name or ""
        if target is None or item.AttributeId != AttributeIds.Value:
            what = target or item.NodeId.to_string()
            self._access.note_refusal(
                name,
                what,
                _raw(item.Value),
                "not-declared",
                f"attribute {item.AttributeId} of {what} is not a declared write target",
                "opcua",
            )
            return int(StatusCodes.BadUserAccessDenied)
        identity = self._identities.get(name)
        if identity is None:
            return int(StatusCodes.BadUserAccessDenied)
        value = _number(item.Value)
        if value is None:
            self._access.note_refusal(
                name, target, _raw(item.Value), "value", "the value is not a finite number", "opcua"
            )
            return int(StatusCodes.BadTypeMismatch)
        request = WriteRequest(
            target,
            value,
            identity,
            f"written over OPC UA by {user.name}",
            "opcua",
        )
        try:
            outcome = await self._access.write(request)
        except GatewayError as exc:
            log.warning("opcua_server.write_refused", target=target, reason=str(exc))
            return int(StatusCodes.BadResourceUnavailable)
        return _status(outcome)

    def _target_of(self, node_id: ua.NodeId) -> str | None:
        if node_id.NamespaceIndex != self._namespace():
            return None
        identifier = node_id.Identifier
        if isinstance(identifier, str) and identifier in self._access.targets:
            return identifier
        return None


def _raw(value: ua.DataValue | None) -> object:
    variant = value.Value if value is not None else None
    return variant.Value if variant is not None else None


def _number(value: ua.DataValue | None) -> float | None:
    variant = value.Value if value is not None else None
    raw = variant.Value if variant is not None else None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    number = float(raw)
    return number if math.isfinite(number) else None


def _status(outcome: WriteOutcome) -> int:
    if outcome.outcome == "done":
        return int(StatusCodes.Good)
    if outcome.outcome == "refused":
        return int(_BY_RULE.get(outcome.rule, StatusCodes.BadUserAccessDenied))
    return int(StatusCodes.BadDeviceFailure)
