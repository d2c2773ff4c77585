"""What one Modbus connection saw while a request was in flight, so a failure can be named.

pymodbus reports every failure of a request the same way ("No response received after 0
retries"): a reply for another transaction or unit, bytes that are not a frame, a frame it
cannot decode and a silent device all end as that one timeout. It discards such frames itself
(logging at most). :class:`ReplyWatch` listens to one client without changing its framing:

- pymodbus's public trace hooks (``trace_pdu``) tell it which request is in flight and whether
  a reply was accepted;
- a thin wrapper around the framer's ``decode`` sees each frame pymodbus cuts from the stream,
  with its unit and transaction id, before pymodbus decides to skip it;
- a wrapper around the protocol's ``data_received`` counts the bytes and catches the one
  exception pymodbus lets escape there (a frame whose PDU it cannot decode), which asyncio
  would otherwise log with a traceback before dropping the connection;
- a wrapper around ``callback_disconnected`` learns why the peer went away (reset or closed).

When the connection drops under a request, that request fails at once with the reason instead
of waiting for its timeout. Everything here runs in the event loop's thread; the state is per
request, reset when the next request is sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymodbus.exceptions import ModbusIOException

__all__ = ["ConnectionLostError", "ReplyWatch"]

# Modbus function codes whose replies carry a byte count followed by that many data bytes.
_COUNTED_REPLIES = frozenset({1, 2, 3, 4, 23})
# How many discarded frames a reason describes before it only counts them.
_DESCRIBED = 2


class ConnectionLostError(Exception):
    """The connection dropped while a request waited for its reply (the message says how)."""


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class ReplyWatch:
    """Observes one pymodbus client's connection; ``describe_*`` name what went wrong."""

    def __init__(self) -> None:
        self._ctx: Any = None
        self.unit = 0
        self.transaction = 0
        self.function = 0
        self._in_flight = False
        self.received = 0  # bytes received since the request was sent
        self.discarded = 0  # frames pymodbus cut from the stream and skipped
        self._why_discarded: list[str] = []
        self.inconsistent: str | None = None  # what is wrong with the last frame kept
        self.malformed: str | None = None  # why the last frame could not be decoded
        self.lost: str | None = None
        self._undecodable = "undecodable"  # the last frame kept, should pymodbus choke on it

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, client: Any) -> None:
        """Wrap ``client``'s framer and protocol callbacks (one client, once, before connect)."""
        ctx = client.ctx
        self._ctx = ctx
        framer_decode = ctx.framer.decode
        data_received = ctx.data_received
        disconnected = ctx.callback_disconnected

        def decode(data: bytes) -> tuple[int, int, int, bytes]:
            used, unit, transaction, pdu = framer_decode(data)
            if used and pdu:
                self._frame(unit, transaction, pdu)
            return used, unit, transaction, pdu

        def received(data: bytes) -> None:
            self.received += len(data)
            try:
                data_received(data)
            except ModbusIOException:
                # pymodbus raises this out of data_received for a frame it cut but could not
                # decode; asyncio would log it as a crash and drop the connection. Drop it here
                # with the reason instead (the stream cannot be trusted to be in step any more).
                self.malformed = f"malformed reply: {self.inconsistent or self._undecodable}"
                self._fail_request(f"{self.malformed}; connection dropped")
                transport = ctx.transport
                if transport is not None:
                    transport.abort()

        def lost(exc: Exception | None) -> None:
            if isinstance(exc, ConnectionResetError):
                how = "connection reset by peer"
            elif exc is None or isinstance(exc, EOFError):
                how = "connection closed by peer"
            else:
                how = f"connection lost ({exc})"
            if self._in_flight:
                how += (
                    f" after {_count(self.received, 'byte', 'bytes')} of an incomplete reply"
                    if self.received
                    else " before a reply"
                )
            if self.malformed is not None:
                how = f"{self.malformed}; connection dropped"
            self.lost = how
            self._fail_request(how)
            disconnected(exc)

        ctx.framer.decode = decode
        ctx.data_received = received
        ctx.callback_disconnected = lost

    def trace_pdu(self, sending: bool, pdu: Any) -> Any:
        """pymodbus's ``trace_pdu`` hook: a request is sent, or a reply was accepted."""
        if sending:
            self.unit = pdu.dev_id
            self.transaction = pdu.transaction_id
            self.function = pdu.function_code
            self._in_flight = True
            self.received = self.discarded = 0
            self._why_discarded.clear()
            self.inconsistent = self.malformed = self.lost = None
        else:
            self._in_flight = False
        return pdu

    def finished(self) -> None:
        """The request in flight ended (reply, timeout or error)."""
        self._in_flight = False

    # -- observations ----------------------------------------------------------------------------
    def _frame(self, unit: int, transaction: int, pdu: bytes) -> None:
        # The same tests pymodbus's handleFrame applies next, to say why it skips the frame.
        why = None
        if self.unit and unit != self.unit:
            why = f"from unit {unit}, asked unit {self.unit}"
        elif self.transaction and transaction and transaction != self.transaction:
            why = f"for transaction {transaction}, expected {self.transaction}"
        if why is not None:
            self.discarded += 1
            if len(self._why_discarded) < _DESCRIBED:
                self._why_discarded.append(why)
            return
        # Kept by pymodbus: note what its decoder will not check (or will choke on).
        function = pdu[0]
        size = _count(len(pdu), "byte", "bytes")
        self._undecodable = f"function {function} in {size} that pymodbus cannot decode"
        self.inconsistent = None
        if function in _COUNTED_REPLIES and len(pdu) >= 2 and pdu[1] != len(pdu) - 2:
            self.inconsistent = (
                f"byte count {pdu[1]} but {_count(len(pdu) - 2, 'data byte', 'data bytes')}"
                f" follow (function {function})"
            )
        elif function & 0x80 and len(pdu) != 2:
            self.inconsistent = f"exception reply (function {function & 0x7F}) of {size}, not 2"
        elif function != self.function and function != self.function | 0x80:
            self.inconsistent = f"function {function} in reply to function {self.function}"

    def _fail_request(self, reason: str) -> None:
        ctx = self._ctx
        if not self._in_flight or ctx is None:
            return
        future: asyncio.Future[Any] = ctx.response_future
        if not future.done():
            future.set_exception(ConnectionLostError(reason))
        self._in_flight = False

    # -- reasons ---------------------------------------------------------------------------------
    def describe_timeout(self, timeout_s: float) -> str:
        """Why no acceptable reply came within ``timeout_s``, as far as it can be observed."""
        head = f"no valid reply within {timeout_s:g} s"
        if self.discarded:
            shown = "; ".join(self._why_discarded)
            more = self.discarded - len(self._why_discarded)
            tail = f" (+{more} more)" if more > 0 else ""
            replies = _count(self.discarded, "reply", "replies")
            return f"{head}: {replies} discarded ({shown}){tail}"
        if self.received:
            return (
                f"{head}: {_count(self.received, 'byte', 'bytes')} received that are not a"
                " Modbus reply (garbage or an incomplete frame)"
            )
        return f"{head}: the device sent nothing"

    def describe_lost(self) -> str:
        """Why the connection is gone (the peer's doing, as seen by the transport)."""
        return self.lost or "connection closed"
