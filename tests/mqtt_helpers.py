"""What the tests of the ``mqtt`` and ``sparkplug`` sinks and of their MQTT session share.

* :class:`Samples`: samples of a test's signals, seq ``n`` stamped ``t0 + n * step_ns``.
* :func:`bound_sink`: a sink of either kind, its options validated as a configuration's,
  bound to the test's signals.
* :func:`session_settings` and :func:`opened`: a session's settings for a test broker, and a
  session opened with them.
* :func:`scripted` and :func:`read_packet`: a broker on loopback that does what a test's
  script says (what Mosquitto never does), and the test's own MQTT framing to script it with,
  independent of the session's codec.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel

from gateway import PluginContext, Quality, Sample, Signal, SpectralAxis, Spectrum
from plugins.mqtt.holder import AnySession, new_session
from plugins.mqtt.options import parse_broker_url
from plugins.mqtt.session import SessionSettings

__all__ = [
    "SITE",
    "Samples",
    "Script",
    "bound_sink",
    "opened",
    "read_packet",
    "scripted",
    "session_settings",
]

SITE = "plant7"


@dataclass(frozen=True)
class Samples:
    """Makes samples: ``samples(signal, seq, value, quality, reason)``, seq ``n`` from the
    source at ``t0 + n * step_ns``, received 1 µs later; spectra of ``axis``'s length."""

    t0: int
    step_ns: int
    axis: SpectralAxis

    def __call__(
        self,
        signal: Signal,
        seq: int,
        value: Any = 1.5,
        quality: Quality = Quality.GOOD,
        reason: str = "",
    ) -> Sample:
        ts = self.t0 + seq * self.step_ns
        return Sample(signal.id, value, signal.unit, ts, ts + 1000, quality, seq, reason or None)

    def spectrum(self, signal: Signal, seq: int) -> Sample:
        """A spectrum whose values rise from 0 to ``seq + 1`` over the axis."""
        values = np.linspace(0.0, 1.0, len(self.axis.values), dtype=np.float32) * (seq + 1)
        return self(signal, seq, Spectrum(values, self.axis))


class _Sink(Protocol):
    def bind(self, signals: Sequence[Signal]) -> None: ...


OptionsT = TypeVar("OptionsT", bound=BaseModel)
SinkT = TypeVar("SinkT", bound=_Sink)


def bound_sink(
    factory: Callable[[OptionsT, PluginContext], SinkT],
    options_model: type[OptionsT],
    url: str,
    tmp_path: Path,
    signals: Sequence[Signal],
    **options: Any,
) -> SinkT:
    """A sink (instance ``up`` of site :data:`SITE`, area ``reactor1``) publishing to ``url``,
    bound to ``signals``."""
    context = PluginContext("up", tmp_path, site=SITE, area="reactor1")
    sink = factory(options_model.model_validate({"url": url, **options}), context)
    sink.bind(signals)
    return sink


@asynccontextmanager
async def opened(settings: SessionSettings) -> AsyncIterator[AnySession]:
    """A session of ``settings.protocol`` (holder.new_session) opened (connected, subscribed)
    and ready; closed on exit."""
    session = new_session(settings, 1, asyncio.get_running_loop())
    await session.open()
    session.ready = True
    try:
        yield session
    finally:
        await session.close(2.0)


def session_settings(url: str, **changes: Any) -> SessionSettings:
    """A session's settings for the broker at ``url``: MQTT 5, QoS 1, ``changes`` applied."""
    base: dict[str, Any] = {
        "url": url,
        "address": parse_broker_url(url),
        "client_id": "test-session",
        "protocol": "5",
        "qos": 1,
        "keepalive_s": 30,
        "connect_timeout_s": 5.0,
    }
    return SessionSettings(**{**base, **changes})


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[str]:
    """A broker on a free loopback port that runs ``script`` on each connection; yields its
    URL. On exit, every connection is closed and the server stopped."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await script(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT packet: (first byte, the rest after the remaining length)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return first, await reader.readexactly(length)


def fixed_header(first: int, remaining: int) -> bytes:
    """An MQTT fixed header (first byte, remaining length), for the tests' scripted brokers
    (encoded here, not by the gateway's code)."""
    length = bytearray()
    while True:
        byte, remaining = remaining & 0x7F, remaining >> 7
        length.append(byte | 0x80 if remaining else byte)
        if not remaining:
            return bytes((first,)) + bytes(length)
