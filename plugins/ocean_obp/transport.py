"""The serial link to an OBP device, kept off the event loop.

pyserial is blocking, so every call on the port — open, write, read, close — runs in one worker
thread owned by the link (one per connection, hence per driver). One thread, not the loop's
shared pool, serialises the requests on the line and cannot be starved by other work.

A request is a transaction: stale input is discarded, the request goes out with a fresh
transaction id in its ``regarding`` field, and the reply is the first valid frame that echoes
that id; stale or unrelated frames and garbage are skipped and counted. Ids start at a random
point per link, so a late reply to the previous link cannot match. The protocol leaves
``regarding`` to the host and python-seabreeze always sends 0, so a device firmware that
answers 0 instead of echoing is accepted for a reply of the requested message type (such a
device gets only the protection of the flushed input buffer). The worker's read loop
itself is bounded by the deadline (and checks, every read timeout, whether the caller gave up
or the link is closing), so a silent device never leaves a thread blocked behind the caller's
back.

A link is single-use, like a socket: the driver opens a new one to reconnect, which also starts
with a fresh decoder.

A port that vanishes under the link (a USB adapter unplugged, a pty whose device side closed)
surfaces from pyserial in three shapes: ``termios.error`` from a buffer flush (no ``OSError``),
an ``OSError``/``SerialException`` caused by ``EIO``/``ENXIO``/``ENODEV``, or a read that finds
the line readable with no data. All three become ``InstrumentError("serial port … lost: …")``,
so the runtime reports the port by name and reconnects, as for any other fault of the link.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import serial
import structlog

from gateway import InstrumentError

from .obp import (
    BAD_CHECKSUM,
    Flag,
    ObpDecoder,
    ObpError,
    ObpFrame,
    check_reply,
    encode_request,
    message_name,
)

__all__ = ["READ_TIMEOUT_S", "ObpLink"]

log = structlog.get_logger("plugins.ocean_obp")

try:
    import termios
except ImportError:  # pragma: no cover - Windows: pyserial raises OSError subclasses there
    _TTY_ERRORS: tuple[type[Exception], ...] = ()
else:
    _TTY_ERRORS = (termios.error,)
_PORT_ERRORS = (serial.SerialException, OSError, *_TTY_ERRORS)
"""What pyserial raises when the port itself fails (termios.error is no OSError)."""
_LOST_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV})
_VANISHED_READ = "device reports readiness to read but returned no data"
"""pyserial's words for a read on a device that is gone (its select says readable, the read
finds nothing): what an unplugged USB adapter gives."""

READ_TIMEOUT_S = 0.05
"""Longest single blocking read: how soon the worker notices a deadline, a cancelled request or
a close. Short, because it bounds how long a closing link keeps its thread."""


class ObpLink:
    """One connection to an OBP device on a serial port or a pyserial URL.

    ``open`` it, call :meth:`request` for each message, and always :meth:`close` it (also after
    a failed ``open``): closing is what stops the worker thread.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int,
        write_timeout_s: float,
        checksum: bool = False,
        name: str = "obp",
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.write_timeout_s = write_timeout_s
        self.checksum = checksum
        self.unrelated_frames = 0
        """Valid frames skipped because they did not answer the request waiting (cumulative)."""
        self._name = name
        self._serial: serial.SerialBase | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = threading.Event()
        self._decoder = ObpDecoder()
        self._last_id = secrets.randbelow(0xFFFFFFFF)
        self._log = log.bind(port=port)

    @property
    def discarded_bytes(self) -> int:
        """Bytes of garbage skipped while waiting for replies (cumulative)."""
        return self._decoder.discarded_bytes

    async def open(self) -> None:
        """Open the port; ``InstrumentError`` naming it if that fails."""
        if self._executor is not None or self._closing.is_set():
            raise RuntimeError("an ObpLink is opened once")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_blocking)

    def _open_blocking(self) -> None:
        if self._closing.is_set():
            return  # closed while this job waited: nothing to open
        try:
            # exclusive: two programs reading one serial line would steal each other's replies.
            port: serial.SerialBase = serial.serial_for_url(
                self.port,
                baudrate=self.baudrate,
                timeout=READ_TIMEOUT_S,
                write_timeout=self.write_timeout_s,
                exclusive=True,
            )
        except (*_PORT_ERRORS, ValueError) as exc:
            raise InstrumentError(f"cannot open {self.port}: {_error_text(exc)}") from exc
        # Set here, in the worker, not from the awaiting coroutine: if that is cancelled, the
        # close job that runs next on this thread still finds the port and closes it.
        self._serial = port

    async def request(
        self,
        msg_type: int,
        data: bytes = b"",
        *,
        timeout_s: float,
        request_ack: bool = False,
    ) -> ObpFrame:
        """Send one request and return its reply, waiting at most ``timeout_s`` for it.

        Raises :class:`~.obp.ObpNackError` when the device refuses, :class:`~.obp.ObpError` for a
        reply that is missing, corrupt or of the wrong type, ``InstrumentError`` when the port
        fails. If the caller is cancelled, the worker gives the request up within
        :data:`READ_TIMEOUT_S` and the link stays usable.
        """
        executor = self._executor
        if executor is None or self._serial is None or self._closing.is_set():
            raise InstrumentError(f"{self.port}: not open")
        # Transaction ids stay in 1..2**32-1: a device that does not echo `regarding` answers 0.
        self._last_id = self._last_id % 0xFFFFFFFF + 1
        regarding = self._last_id
        frame = encode_request(
            msg_type,
            data,
            regarding=regarding,
            request_ack=request_ack,
            checksum=self.checksum,
        )
        abandon = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(
                executor, self._exchange, frame, msg_type, regarding, timeout_s, abandon
            )
        except asyncio.CancelledError:
            abandon.set()
            raise
        what = message_name(msg_type)
        check_reply(reply, what)
        if reply.msg_type != msg_type:
            raise ObpError(f"reply to {what} has message type 0x{reply.msg_type:08x}")
        if request_ack and not reply.flags & Flag.ACK:
            raise ObpError(f"no ACK for {what}")
        return reply

    def _exchange(
        self,
        request: bytes,
        msg_type: int,
        regarding: int,
        timeout_s: float,
        abandon: threading.Event,
    ) -> ObpFrame:
        """Worker side of :meth:`request`: write, then read until the reply or the deadline."""
        port = self._serial
        what = message_name(msg_type)
        if port is None or self._closing.is_set():
            raise InstrumentError(f"{self.port}: not open")
        decoder = self._decoder
        decoder.reset()
        discarded_before = decoder.discarded_bytes
        bad_checksums_before = decoder.rejected[BAD_CHECKSUM]
        unrelated = 0
        try:
            port.reset_input_buffer()
            port.write(request)
            # The deadline starts when the request is on its way, not when it was queued.
            deadline = time.monotonic() + timeout_s
            while True:
                if abandon.is_set() or self._closing.is_set():
                    raise ObpError(f"{what} abandoned")
                chunk = port.read(decoder.wanted)
                for frame in decoder.feed(chunk) if chunk else ():
                    if frame.regarding == regarding or (
                        frame.regarding == 0 and frame.msg_type == msg_type
                    ):
                        return frame
                    unrelated += 1
                    self.unrelated_frames += 1
                if decoder.rejected[BAD_CHECKSUM] > bad_checksums_before:
                    raise ObpError(f"bad MD5 checksum in reply to {what}")
                if time.monotonic() >= deadline:
                    raise ObpError(_silence(what, timeout_s, decoder, discarded_before, unrelated))
        except _PORT_ERRORS as exc:
            lost = _port_lost(exc)
            if lost is not None:
                raise InstrumentError(f"serial port {self.port} lost: {lost}") from exc
            raise InstrumentError(f"{self.port}: {what} failed: {_error_text(exc)}") from exc
        finally:
            discarded = decoder.discarded_bytes - discarded_before
            if discarded or unrelated:
                self._log.warning(
                    "obp.skipped_input",
                    request=what,
                    discarded_bytes=discarded,
                    unrelated_frames=unrelated,
                )

    async def close(self) -> None:
        """Close the port and stop the worker; waits for it (within one read timeout). Never
        raises."""
        executor, self._executor = self._executor, None
        self._closing.set()
        if executor is None:
            return
        executor.submit(self._close_blocking)
        # A request still running sees `_closing` at its next read timeout; then the close job
        # runs and the thread exits. Joining it is blocking, so it is done off the loop.
        try:
            await asyncio.to_thread(executor.shutdown, wait=True)
        except RuntimeError:
            # The loop's own executor is gone (interpreter or loop shutting down): the worker
            # still closes the port and exits, just without being joined here.
            executor.shutdown(wait=False)

    def _close_blocking(self) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        try:
            port.close()
        except _PORT_ERRORS as exc:
            self._log.warning("obp.close_failed", error=_error_text(exc))


def _port_lost(exc: BaseException) -> str | None:
    """Why the port is gone (``Input/output error``) when ``exc`` or its cause says the device
    vanished; ``None`` for any other failure. pyserial raises its ``SerialException`` from inside
    the ``OSError`` it caught, so the errno is found on the exception's context."""
    for error in (exc, exc.__cause__, exc.__context__):
        code: object = None
        if isinstance(error, OSError):
            code = error.errno
        elif isinstance(error, _TTY_ERRORS) and error.args:
            code = error.args[0]
        if isinstance(code, int) and code in _LOST_ERRNOS:
            return os.strerror(code)
    if isinstance(exc, serial.SerialException) and str(exc).startswith(_VANISHED_READ):
        return "device disconnected"
    return None


def _error_text(exc: BaseException) -> str:
    """An error as a person reads it: ``termios.error`` carries ``(errno, text)`` as its args."""
    if isinstance(exc, _TTY_ERRORS) and len(exc.args) == 2:
        return str(exc.args[1])
    return str(exc) or type(exc).__name__


def _silence(
    what: str, timeout_s: float, decoder: ObpDecoder, discarded_before: int, unrelated: int
) -> str:
    """Why no reply came, as precisely as the bytes tell: nothing, a truncated frame, garbage."""
    message = f"no reply to {what} within {round(timeout_s, 3):g} s"
    details = []
    partial = decoder.partial
    if partial is not None:
        details.append(f"truncated frame: {partial[0]} of {partial[1]} bytes")
    garbage = decoder.discarded_bytes - discarded_before
    if garbage:
        details.append(f"{garbage} bytes of garbage")
    if unrelated:
        details.append(f"{unrelated} unrelated frames")
    return f"{message} ({', '.join(details)})" if details else message
