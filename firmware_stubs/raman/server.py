"""The emulated Raman spectrometer on a wire: a pseudo-terminal or a TCP socket.

For gateway integration tests, demos and ``patgw emulate raman``. :class:`RamanEmulator` wires
a :class:`~firmware_stubs.raman.device.RamanDevice` (the firmware) to one of two transports:

* ``transport="pty"``: a pseudo-terminal in raw mode, like a USB-serial spectrometer. The
  driver opens :attr:`RamanEmulator.device_path` (or the stable ``link`` symlink) with
  pyserial. The emulator keeps the terminal's device side open itself, so the pty survives
  the driver closing and reopening it; as on a real serial line, a reply sent while nobody
  listens waits in the line's buffer for the next reader.
* ``transport="tcp"``: a TCP server for pyserial ``socket://host:port`` URLs (a serial device
  server). One host at a time, like a serial line: a new connection replaces the old one.

Requests are decoded as bytes arrive (garbage skipped, see
:class:`~firmware_stubs.raman.obp.Decoder`) and served one after another by the named task
``raman.requests``, so a spectrum request holds the line for its integration time, as on the
real device. A partly received frame is given up after ``frame_timeout_s`` without a byte
(the inter-byte timeout of device firmware). Faults (:class:`~firmware_stubs.raman.faults.Fault`)
act on the replies as they are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal, Self

import structlog

from ..schedule import Ramp, wall_hours
from .device import DEFAULT_SERIAL_NUMBER, RamanDevice
from .faults import (
    Fault,
    GarbageParams,
    LaserDecayParams,
    NackParams,
    TruncatedParams,
    fault_params,
)
from .obp import FOOTER_SIZE, ChecksumType, Decoder, Frame, FrameError, encode
from .spectrum import Composition

__all__ = ["RamanEmulator"]

_log = structlog.get_logger(__name__)

#: Requests waiting to be served; more are dropped, like a device's input overrun.
_QUEUE_SIZE = 32
#: Reply bytes waiting for a slow or absent reader; more replies are dropped.
_MAX_BACKLOG = 256 * 1024
#: Pause before reading the pty again after it reported a hang-up (EIO or end of file).
_HANGUP_RETRY_S = 0.1
_CLOSE_TIMEOUT_S = 1.0
_READ_SIZE = 65536


class _Peer:
    """The host at the other end (the serial line, or one TCP connection): its own decoder,
    the timer that gives up on a half-received frame, and how to write to it."""

    def __init__(self, label: str, write: Callable[[bytes], None]) -> None:
        self.label = label
        self.write = write
        self.decoder = Decoder()
        self.open = True
        self.resync: asyncio.TimerHandle | None = None

    def close(self) -> None:
        self.open = False
        if self.resync is not None:
            self.resync.cancel()
            self.resync = None


_Received = Callable[[_Peer, bytes], None]


class _PtyLink:
    """A raw-mode pseudo-terminal read with ``add_reader`` and written without blocking."""

    def __init__(self, received: _Received, link: Path | None) -> None:
        self._received = received
        self._link = link
        self._master = -1
        self._slave = -1
        self.path = ""
        self.peer: _Peer | None = None
        self._backlog = bytearray()
        self._retry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        try:
            import tty  # pseudo-terminals are POSIX's: fail here, at use, not at import
        except ImportError as exc:
            raise OSError(
                "the Raman emulator's pseudo-terminal (serial: true) needs a POSIX system:"
                " on this one use serial: false and point the driver at its socket://host:port"
            ) from exc
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            # Echo and CR/LF translation would corrupt binary frames.
            tty.setraw(slave)
            os.set_blocking(master, False)
            path = os.ttyname(slave)
            if self._link is not None:
                _install_symlink(self._link, path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._loop, self._master, self._slave, self.path = loop, master, slave, path
        self.peer = _Peer(path, self._write)
        loop.add_reader(master, self._on_readable)

    def close(self) -> None:
        if self._master < 0 or self._loop is None:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._loop.remove_reader(self._master)
        self._loop.remove_writer(self._master)
        if self.peer is not None:
            self.peer.close()
        self._backlog.clear()
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1
        if self._link is not None:
            _remove_symlink(self._link, self.path)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            # EIO means nobody has the terminal open. It should not happen while the emulator
            # holds the device side itself, but if it does, it is "no peer", not a failure:
            # stop polling for a moment instead of spinning on an ever-readable descriptor.
            self._hang_up(exc.strerror or str(exc))
            return
        if not data:
            self._hang_up("end of file")
        elif self.peer is not None:
            self._received(self.peer, data)

    def _hang_up(self, reason: str) -> None:
        assert self._loop is not None
        _log.debug("emulator.pty_hangup", reason=reason)
        self._loop.remove_reader(self._master)
        self._retry = self._loop.call_later(_HANGUP_RETRY_S, self._resume_reading)

    def _resume_reading(self) -> None:
        self._retry = None
        if self._master >= 0 and self._loop is not None:
            self._loop.add_reader(self._master, self._on_readable)

    def _write(self, data: bytes) -> None:
        if self._master < 0 or self._loop is None:
            return
        if self._backlog:
            self._queue_output(data)
            return
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            _log.debug("emulator.write_failed", reason=exc.strerror or str(exc))
            return
        if written < len(data):
            # A spectrum is larger than the terminal's buffer: the rest goes when it drains.
            self._queue_output(data[written:])
            self._loop.add_writer(self._master, self._on_writable)

    def _queue_output(self, data: bytes) -> None:
        if len(self._backlog) + len(data) > _MAX_BACKLOG:
            _log.warning("emulator.output_overrun", dropped=len(data), backlog=len(self._backlog))
            return
        self._backlog += data

    def _on_writable(self) -> None:
        assert self._loop is not None
        try:
            written = os.write(self._master, self._backlog)
        except BlockingIOError:
            return
        except OSError as exc:
            _log.debug("emulator.write_failed", reason=exc.strerror or str(exc))
            written = len(self._backlog)
        del self._backlog[:written]
        if not self._backlog:
            self._loop.remove_writer(self._master)


class _TcpLink:
    """A TCP server with at most one connected host; a new connection replaces the old."""

    def __init__(self, received: _Received, host: str, port: int) -> None:
        self._received = received
        self.host = host
        self.port = port
        self.peer: _Peer | None = None
        self._transport: asyncio.Transport | None = None
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _TcpProtocol(self), self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._drop_peer()
        # On 3.12+ wait_closed() also waits for connections; the timeout guards a stuck one.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), _CLOSE_TIMEOUT_S)

    def connected(self, transport: asyncio.Transport) -> _Peer:
        if self._transport is not None:
            _log.info("emulator.peer_replaced", old=self.peer.label if self.peer else None)
            self._drop_peer()
        address = transport.get_extra_info("peername")
        label = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)

        def write(data: bytes) -> None:
            if transport.is_closing():
                return
            if transport.get_write_buffer_size() + len(data) > _MAX_BACKLOG:
                _log.warning("emulator.output_overrun", dropped=len(data))
                return
            transport.write(data)

        self._transport, self.peer = transport, _Peer(label, write)
        _log.info("emulator.peer_connected", peer=label)
        return self.peer

    def disconnected(self, peer: _Peer) -> None:
        peer.close()
        if peer is self.peer:
            _log.info("emulator.peer_disconnected", peer=peer.label)
            self._transport, self.peer = None, None

    def received(self, peer: _Peer, data: bytes) -> None:
        self._received(peer, data)

    def _drop_peer(self) -> None:
        transport, peer = self._transport, self.peer
        self._transport, self.peer = None, None
        if peer is not None:
            peer.close()
        if transport is not None:
            transport.abort()


class _TcpProtocol(asyncio.Protocol):
    """One TCP connection, handed to its :class:`_TcpLink`."""

    def __init__(self, link: _TcpLink) -> None:
        self._link = link
        self._peer: _Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._peer = self._link.connected(transport)

    def data_received(self, data: bytes) -> None:
        if self._peer is not None:
            self._link.received(self._peer, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:
            self._link.disconnected(self._peer)


class RamanEmulator:
    """A Raman spectrometer speaking the Ocean Binary Protocol on a pty or over TCP.

    Use as ``async with RamanEmulator() as raman:`` or call :meth:`start` / :meth:`stop`
    (it can be started again after a stop; a pty then gets a new device path, the ``link``
    follows it, and TCP keeps its port). ``composition`` is called once per spectrum for
    the broth's current :class:`~firmware_stubs.raman.spectrum.Composition`; by default it
    is constant. ``link`` (pty only) is a symlink created at start and removed at stop, so a
    configuration can name a stable path; an existing symlink there is replaced, anything
    else is refused with ``FileExistsError``.
    """

    def __init__(
        self,
        *,
        transport: Literal["pty", "tcp"] = "pty",
        pixels: int = 2048,
        laser_nm: float = 785.0,
        composition: Callable[[], Composition] | None = None,
        seed: int = 0,
        checksum: bool = True,
        serial_number: str = DEFAULT_SERIAL_NUMBER,
        host: str = "127.0.0.1",
        port: int = 0,
        link: Path | str | None = None,
        frame_timeout_s: float = 0.5,
    ) -> None:
        if transport not in ("pty", "tcp"):
            raise ValueError(f"transport must be 'pty' or 'tcp', got {transport!r}")
        if link is not None and transport != "pty":
            raise ValueError("link names a symlink to the pseudo-terminal: only with 'pty'")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} outside 0..65535")
        if not frame_timeout_s > 0:
            raise ValueError(f"frame_timeout_s must be positive, got {frame_timeout_s}")
        self.transport = transport
        self.device = RamanDevice(
            pixels=pixels,
            laser_nm=laser_nm,
            composition=composition,
            seed=seed,
            checksum=checksum,
            serial_number=serial_number,
        )
        self.frame_timeout_s = frame_timeout_s
        self._link = Path(link) if link is not None else None
        self._pty = _PtyLink(self._on_data, self._link) if transport == "pty" else None
        self._tcp = _TcpLink(self._on_data, host, port) if transport == "tcp" else None
        # Line noise has its own stream, so injecting garbage leaves the spectra unchanged.
        self._noise = random.Random(seed)
        self._faults: dict[Fault, object] = {}
        #: The time base of gradual faults: the shared process's hours once linked to one.
        self.hours: Callable[[], float] = wall_hours
        # Made at start, in the loop that serves; wakes the garbage task when faults change.
        self._faults_changed: asyncio.Event | None = None
        self._queue: asyncio.Queue[tuple[_Peer, Frame | FrameError]] | None = None
        self._requests_task: asyncio.Task[None] | None = None
        self._garbage_task: asyncio.Task[None] | None = None

    @property
    def is_serving(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._requests_task is not None

    @property
    def device_path(self) -> str:
        """The pseudo-terminal's device path (``/dev/pts/N``) while serving on a pty."""
        if self._pty is None or not self.is_serving:
            raise RuntimeError("device_path exists only while serving on a pty")
        return self._pty.path

    @property
    def link(self) -> Path | None:
        """The stable symlink to the pseudo-terminal, if one was asked for."""
        return self._link

    @property
    def host(self) -> str | None:
        """The TCP listen address (``None`` on a pty)."""
        return self._tcp.host if self._tcp is not None else None

    @property
    def port(self) -> int | None:
        """The bound TCP port once started (``None`` on a pty)."""
        return self._tcp.port if self._tcp is not None else None

    @property
    def endpoint(self) -> str:
        """What a driver opens: the pty's device path (the link if there is one) or
        ``socket://host:port``."""
        if self._tcp is not None:
            host = f"[{self._tcp.host}]" if ":" in self._tcp.host else self._tcp.host
            return f"socket://{host}:{self._tcp.port}"
        if self._link is not None:
            return str(self._link)
        return self.device_path

    @property
    def active_faults(self) -> frozenset[Fault]:
        """Injected faults that stay active until cleared."""
        return frozenset(self._faults)

    async def start(self) -> None:
        """Open the transport and start serving requests."""
        if self.is_serving:
            raise RuntimeError("Raman emulator already started")
        self._queue = asyncio.Queue(_QUEUE_SIZE)
        self._faults_changed = asyncio.Event()
        if self._pty is not None:
            self._pty.open()
        elif self._tcp is not None:
            await self._tcp.open()
        self.device.power_on()
        self._requests_task = asyncio.create_task(self._serve_requests(), name="raman.requests")
        self._garbage_task = asyncio.create_task(self._spontaneous_garbage(), name="raman.garbage")
        _log.info(
            "emulator.started",
            emulator="raman",
            endpoint=self.endpoint,
            device=self._pty.path if self._pty is not None else None,
            pixels=self.device.pixels,
            serial_number=self.device.serial_number,
        )

    async def stop(self) -> None:
        """Stop serving and close the transport; safe to call twice, never waits long."""
        tasks = [t for t in (self._requests_task, self._garbage_task) if t is not None]
        self._requests_task = self._garbage_task = None
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        try:
            # Both are awaited even if one died of a bug; that bug is raised after the cleanup.
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if self._pty is not None:
                self._pty.close()
            elif self._tcp is not None:
                await self._tcp.close()
            self._queue = None
            self._faults_changed = None
            _log.info("emulator.stopped", emulator="raman")
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def inject(self, fault: Fault, **params: object) -> None:
        """Inject ``fault`` (replacing its parameters if already active); see :class:`Fault`.

        ``TypeError`` for a parameter the fault does not take, ``ValueError`` for a bad value.
        """
        checked = fault_params(fault, params)
        if isinstance(checked, LaserDecayParams):
            decay = Ramp(checked.rate_per_h, checked.max_loss, self.hours())
            self.device.band_scale = lambda: 1.0 - decay.at(self.hours())
        self._faults[fault] = checked
        self._faults_updated()
        _log.info("emulator.fault_injected", fault=fault.value, **params)

    def clear(self, fault: Fault) -> None:
        """Clear one fault, leaving any other injected fault active."""
        if fault is Fault.LASER_DECAY:
            self.device.band_scale = None
        self._faults.pop(fault, None)
        self._faults_updated()
        _log.info("emulator.fault_cleared", fault=fault.value)

    def clear_faults(self) -> None:
        """Clear every injected fault."""
        self.device.band_scale = None
        self._faults.clear()
        self._faults_updated()
        _log.info("emulator.faults_cleared")

    def _faults_updated(self) -> None:
        if self._faults_changed is not None:
            self._faults_changed.set()

    def _on_data(self, peer: _Peer, data: bytes) -> None:
        """Bytes from the host: decode now, serve later (in order, in ``raman.requests``)."""
        if not peer.open or Fault.SILENCE in self._faults:
            return
        skipped = peer.decoder.skipped
        events = peer.decoder.feed(data)
        self._after_decode(peer, skipped, events)

    def _give_up_frame(self, peer: _Peer) -> None:
        """Inter-byte timeout: what looked like a frame start was not one, or lost its tail."""
        peer.resync = None
        skipped = peer.decoder.skipped
        events = peer.decoder.abandon()
        self._after_decode(peer, skipped, events)

    def _after_decode(self, peer: _Peer, skipped: int, events: list[Frame | FrameError]) -> None:
        if peer.decoder.skipped != skipped:
            _log.debug(
                "emulator.noise_skipped", peer=peer.label, bytes=peer.decoder.skipped - skipped
            )
        if peer.resync is not None:
            peer.resync.cancel()
            peer.resync = None
        if peer.decoder.waiting:
            loop = asyncio.get_running_loop()
            peer.resync = loop.call_later(self.frame_timeout_s, self._give_up_frame, peer)
        if self._queue is None:
            return
        for event in events:
            try:
                self._queue.put_nowait((peer, event))
            except asyncio.QueueFull:
                _log.warning("emulator.request_overrun", peer=peer.label)

    async def _serve_requests(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            peer, event = await queue.get()
            if not peer.open or Fault.SILENCE in self._faults:
                continue
            reply = await self._answer(event)
            if reply is not None and peer.open and Fault.SILENCE not in self._faults:
                self._send(peer, reply)

    async def _answer(self, event: Frame | FrameError) -> Frame | None:
        nack = self._faults.get(Fault.NACK)
        if isinstance(nack, NackParams):
            return self.device.nack(event, nack.error)
        if isinstance(event, FrameError):
            _log.info(
                "emulator.frame_refused",
                error=int(event.error),
                reason=event.reason,
                message_type=f"{event.message_type:#010x}",
            )
            return self.device.nack(event, event.error)
        return await self.device.handle(event)

    def _send(self, peer: _Peer, reply: Frame) -> None:
        """Encode ``reply`` and write it, bent by the active faults."""
        if Fault.BAD_CHECKSUM in self._faults:
            wire = bytearray(encode(replace(reply, checksum_type=ChecksumType.MD5)))
            for index in range(len(wire) - FOOTER_SIZE, len(wire) - 4):
                wire[index] ^= 0xFF
        else:
            wire = bytearray(encode(reply))
        truncated = self._faults.get(Fault.TRUNCATED)
        if isinstance(truncated, TruncatedParams):
            del wire[max(1, int(len(wire) * truncated.keep)) :]
        garbage = self._faults.get(Fault.GARBAGE)
        if isinstance(garbage, GarbageParams) and garbage.before_reply:
            wire[:0] = self._garbage(garbage.size)
        peer.write(bytes(wire))

    def _garbage(self, size: int) -> bytes:
        return self._noise.randbytes(self._noise.randint(1, size))

    async def _spontaneous_garbage(self) -> None:
        """Line noise every ``every_s`` while :attr:`Fault.GARBAGE` asks for it."""
        changed = self._faults_changed
        assert changed is not None
        while True:
            changed.clear()
            params = self._faults.get(Fault.GARBAGE)
            if not (isinstance(params, GarbageParams) and params.every_s is not None):
                await changed.wait()
                continue
            try:
                async with asyncio.timeout(params.every_s):
                    await changed.wait()
            except TimeoutError:
                peer = self._pty.peer if self._pty is not None else None
                if self._tcp is not None:
                    peer = self._tcp.peer
                if peer is not None and peer.open and Fault.SILENCE not in self._faults:
                    peer.write(self._garbage(params.size))


def _install_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target``, replacing an existing symlink atomically."""
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; not replacing it")
    staging = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    os.symlink(target, staging)
    os.replace(staging, link)


def _remove_symlink(link: Path, target: str) -> None:
    """Remove ``link`` if it still points at ``target`` (someone may have re-pointed it)."""
    with contextlib.suppress(OSError):
        if link.is_symlink() and os.readlink(link) == target:
            link.unlink()
