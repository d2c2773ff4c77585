"""Live signal values for the browser: a Server-Sent Events stream, coalesced per signal.

The stream never touches the hot path: every :data:`FLUSH_S` it reads each signal output's
``latest`` row (which the output keeps anyway) and sends one ``signal`` event for each signal
whose sequence number moved since the last flush — so a signal updates a browser at most four
times a second however fast it is sampled, and whatever happened in between is simply not
sent (the latest value wins). A client that does not read is cut off by the HTTP server (see
:data:`gateway.http.STREAM_BUFFER_BYTES`); the stream ends when the session does.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from ..model import Quality
from ..spectra import Spectrum
from ..timefmt import now_ns
from .responses import SECURITY_HEADERS

if TYPE_CHECKING:
    from ..runtime.outputs import SignalOutput

__all__ = ["FLUSH_S", "KEEPALIVE_S", "SignalEvents", "event_data", "shown_value"]

FLUSH_S = 0.25
KEEPALIVE_S = 15.0
_RETRY_MS = 3000  # how soon the browser reconnects after the stream ends


def shown_value(value: Any) -> Any:
    """A reading as the console shows it: a finite number as is, anything else as short text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Spectrum):
        return f"spectrum, {len(value.values)} points"
    size = getattr(value, "size", None)
    return f"[{size} points]" if size is not None else str(value)[:40]


def event_data(output: SignalOutput, now: int) -> dict[str, Any] | None:
    """What the console shows of ``output``'s latest sample (None before the first)."""
    row = output.latest
    if row is None:
        return None
    _def_id, seq, _source_ts, gateway_ts, quality, value, reason = row
    return {
        "id": output.signal.id,
        "value": shown_value(value),
        "quality": Quality(quality).label,
        "reason": reason,
        "seq": seq,
        "age_s": round(max(now - gateway_ts, 0) / 1e9, 1),
    }


class SignalEvents:
    """One browser's stream of signal updates (a :class:`gateway.http.Stream`)."""

    def __init__(
        self,
        outputs: Callable[[], Iterable[SignalOutput]],
        alive: Callable[[], bool],
        *,
        open_streams: set[SignalEvents] | None = None,
        encoded: dict[str, tuple[int, bytes]] | None = None,
        flush_s: float = FLUSH_S,
    ) -> None:
        self._outputs = outputs
        self._alive = alive
        self._open = open_streams if open_streams is not None else set()
        # Shared by the streams of one console: each sample is encoded once, not per browser
        # (its age is then as of the first flush that saw it, at most FLUSH_S old).
        self._encoded = encoded if encoded is not None else {}
        self._flush_s = flush_s
        head = [
            f"HTTP/1.1 {int(HTTPStatus.OK)} OK",
            "Content-Type: text/event-stream; charset=utf-8",
            "Cache-Control: no-store",
            "Connection: close",
            *SECURITY_HEADERS,
        ]
        self.head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")

    async def run(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send updates until the session ends (or ``send`` raises: the client is gone)."""
        self._open.add(self)  # counted while it runs (``open_streams``)
        try:
            await self._run(send)
        finally:
            self._open.discard(self)

    async def _run(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        sent: dict[str, int] = {}  # signal id -> seq last sent
        await send(f"retry: {_RETRY_MS}\n\n".encode())
        quiet_s = 0.0
        while self._alive():
            now = now_ns()
            chunks = []
            encoded = self._encoded
            for output in self._outputs():
                row = output.latest
                name = output.signal.id
                if row is None or sent.get(name) == row[1]:
                    continue
                seq = sent[name] = row[1]
                cached = encoded.get(name)
                if cached is None or cached[0] != seq:
                    data = json.dumps(event_data(output, now), separators=(",", ":"))
                    cached = encoded[name] = (seq, f"event: signal\ndata: {data}\n\n".encode())
                chunks.append(cached[1])
            if chunks:
                await send(b"".join(chunks))
                quiet_s = 0.0
            elif quiet_s >= KEEPALIVE_S:  # also how a closed connection is noticed
                await send(b": keep-alive\n\n")
                quiet_s = 0.0
            await asyncio.sleep(self._flush_s)
            quiet_s += self._flush_s
