"""A hostile peer that floods an OPC UA server with connections that never log in.

For the ``opcua_server`` flood tests and ``benchmarks/opcua_flood.py``. :class:`ConnectionFlood`
holds ``count`` TCP connections open to a server, each of which sends nothing (``silent``) or
only a Hello (``hello``) and then waits; when the server closes one, it is reopened after
``reopen_s``. It counts what it opened and what the server closed. Loopback only, bounded by
``count`` and by the caller's ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Literal

from asyncua import ua
from asyncua.ua.ua_binary import uatcp_to_binary

__all__ = ["ConnectionFlood", "hello", "read_until_closed"]

Kind = Literal["silent", "hello"]


def hello(endpoint_url: str) -> bytes:
    """A well-formed OPC UA Hello message (what every client sends first)."""
    message = ua.Hello()
    message.EndpointUrl = endpoint_url
    return uatcp_to_binary(ua.MessageType.Hello, message)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (a reset included: a server
    closing with unread input resets it, and the reset may overtake the last bytes)."""
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(4096):
            answer += chunk
    return answer


class ConnectionFlood:
    """``count`` connections from ``source`` that never open a session, reopened when closed."""

    def __init__(
        self,
        host: str,
        port: int,
        count: int,
        kind: Kind = "silent",
        reopen_s: float = 0.5,
        source: str = "127.0.0.1",
        endpoint_url: str = "",
    ) -> None:
        self.host, self.port, self.count, self.kind = host, port, count, kind
        self.reopen_s, self.source = reopen_s, source
        self._hello = hello(endpoint_url or f"opc.tcp://{host}:{port}")
        self.opened = 0  # connections the server accepted
        self.closed_by_server = 0
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._all_open = asyncio.Event()
        self._open_now = 0

    async def __aenter__(self) -> ConnectionFlood:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._tasks = [
            self._group.create_task(self._one(), name=f"flood.{index}")
            for index in range(self.count)
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        assert self._group is not None
        await self._group.__aexit__(None, None, None)

    async def all_opened_once(self) -> None:
        """Wait until every connection of the flood has been accepted at least once."""
        await self._all_open.wait()

    async def _one(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((self.source, 0))
                await loop.sock_connect(sock, (self.host, self.port))
            except OSError:
                sock.close()
                await asyncio.sleep(self.reopen_s)
                continue
            self.opened += 1
            if first:
                first = False
                self._open_now += 1
                if self._open_now == self.count:
                    self._all_open.set()
            try:
                if self.kind == "hello":
                    await loop.sock_sendall(sock, self._hello)
                while await loop.sock_recv(sock, 4096):
                    pass  # an ACK, or an error message: the server decides when it ends
                self.closed_by_server += 1
            except OSError:
                self.closed_by_server += 1
            finally:
                with contextlib.suppress(OSError):
                    sock.close()
            await asyncio.sleep(self.reopen_s)
