"""The emulator: a balance answering MT-SICS on TCP, with a load on its pan the test sets.

Its framing is its own (it shares no code with the driver, so a bug in one does not hide in
both): it splits what it receives at CR LF, answers ``S``, ``SI``, ``T``, ``TI``, ``Z`` and ``ZI``
as a balance does, and ``ES`` to anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

from pydantic import BaseModel, ConfigDict, Field

from gateway import PluginContext

__all__ = ["BalanceEmulator", "EmulatorOptions"]

_MAX_LINE = 256  # a command longer than this is no MT-SICS command: the balance answers ES


class EmulatorOptions(BaseModel):
    """The emulator's ``options:`` (``patgw emulate mtsics_balance --option load_g=12.5``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Listen address.")
    port: int = Field(default=4305, ge=0, le=65535, description="Listen port; 0 = any free.")
    load_g: float = Field(default=100.0, description="Gross load on the pan at start, g.")
    capacity_g: float = Field(default=220.0, gt=0, description="Above this: overload (S +).")
    stable: bool = Field(default=True, description="False: the weight keeps moving (S D).")
    serial_number: str = Field(default="B123456789", description="Its serial number (I4).")


class BalanceEmulator:
    """The balance: ``load_g`` and ``stable`` may be changed while it runs."""

    def __init__(self, options: EmulatorOptions, context: PluginContext) -> None:
        self.options = options
        self.load_g = options.load_g
        self.stable = options.stable
        self.zero_g = 0.0
        self.tare_g = 0.0
        self.commands: list[str] = []
        """Every command received, in order."""
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def port(self) -> int:
        """The port it listens on (the one bound, when ``port`` was 0)."""
        if self._server is None:
            return self.options.port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def endpoint(self) -> str:
        return f"{self.options.host}:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._session, self.options.host, self.options.port
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Closed, not cancelled: each session then reads the end of its stream and returns
        # (Python 3.11's streams log a cancelled connection handler as an error).
        sessions = dict(self._sessions)
        for writer in sessions.values():
            writer.close()
        await asyncio.gather(*sessions, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions[task] = writer
        buffer = b""
        try:
            while True:
                data = await reader.read(1024)
                if not data:
                    return
                buffer += data
                while b"\r\n" in buffer:
                    line, buffer = buffer.split(b"\r\n", 1)
                    writer.write(self.answer(line.decode("latin-1")).encode("ascii") + b"\r\n")
                if len(buffer) > _MAX_LINE:
                    buffer = b""
                    writer.write(b"ES\r\n")
                await writer.drain()
        except ConnectionError:
            pass  # the client went away
        finally:
            self._sessions.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def answer(self, command: str) -> str:
        """The balance's answer line to ``command`` (without CR LF)."""
        self.commands.append(command)
        net = self.load_g - self.zero_g - self.tare_g
        if command in ("S", "SI"):
            if self.load_g > self.options.capacity_g:
                return "S +"
            if self.load_g < -0.1 * self.options.capacity_g:
                return "S -"
            if not self.stable:
                return "S I" if command == "S" else f"S D {net:10.3f} g"
            return f"S S {net:10.3f} g"
        if command == "T":
            if not self.stable:
                return "T I"
            if self.load_g > self.options.capacity_g:
                return "T +"
            self.tare_g = self.load_g - self.zero_g
            return f"T S {self.tare_g:10.3f} g"
        if command == "TI":  # immediately: with a moving weight too, saying so
            if self.load_g > self.options.capacity_g:
                return "TI +"
            self.tare_g = self.load_g - self.zero_g
            return f"TI {'S' if self.stable else 'D'} {self.tare_g:10.3f} g"
        if command == "Z":
            if not self.stable:
                return "Z I"
            self.zero_g, self.tare_g = self.load_g, 0.0
            return "Z A"
        if command == "ZI":
            if self.load_g > self.options.capacity_g:
                return "ZI +"
            self.zero_g, self.tare_g = self.load_g, 0.0
            return f"ZI {'S' if self.stable else 'D'}"
        if command == "I2":  # model and capacity
            return f'I2 A "XS205DU {self.options.capacity_g:.5f} g"'
        if command == "I3":  # software version
            return 'I3 A "1.10 13.3.3.101.1"'
        if command == "I4":
            return f'I4 A "{self.options.serial_number}"'
        return "ES"
