"""What a plugin that takes logins or writes (the OPC UA server) is handed: :class:`Access`."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import GatewayError
from ..security import Authority
from .path import WriteOutcome, WritePath, WriteRequest, WriteTarget

__all__ = ["Access"]


class Access:
    """The configuration's user base and declared write targets; writes are submitted once
    the runtime has bound its :class:`WritePath` (while the gateway runs)."""

    def __init__(self, authority: Authority, targets: Mapping[str, WriteTarget]) -> None:
        self.authority = authority
        self.targets = dict(targets)
        self._path: WritePath | None = None

    def bind(self, path: WritePath | None) -> None:
        self._path = path

    @property
    def path(self) -> WritePath | None:
        return self._path

    async def write(self, request: WriteRequest) -> WriteOutcome:
        """Submit ``request`` to the write path (see :class:`WritePath`)."""
        if self._path is None:
            raise GatewayError("writes are not possible: the gateway is not running")
        return await self._path.submit(request)
