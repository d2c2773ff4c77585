"""The hot path: turning one driver reading into one stored row.

Everything here was prepared at start-up (unit conversion compiled to scale/offset, storage id and
next sequence number looked up), so :meth:`SignalOutput.publish` is a clock read, a dictionary
look-up of the quality, a multiply-add, a counter increment and one tuple appended to a list.
What a driver gets wrong (a quality that is not one, a timestamp in seconds, NaN) becomes a
``bad`` sample saying so, never a crash and never a silent null. Call it from the event loop's
thread only (a driver with threads of its own uses ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..model import Quality, Signal
from ..store.sqlite import Row
from ..timefmt import now_ns
from ..units import Conversion

__all__ = ["FanOut", "NullOutput", "SignalOutput"]

# Plain ints, not the IntEnum members: sqlite3 binds an exact int markedly faster.
_GOOD: Quality = int(Quality.GOOD)  # type: ignore[assignment]
_BAD = int(Quality.BAD)
# Accepts Quality members, their int values and their labels; anything else is refused.
_QUALITY: dict[Any, int] = {
    **{int(q): int(q) for q in Quality},
    **{q.label: int(q) for q in Quality},
}
# 1973-03-03 in nanoseconds: a smaller source timestamp is seconds or milliseconds by mistake.
_MIN_SOURCE_TS = 10**17


class SignalOutput:
    """Publishes readings of one channel as samples of one signal."""

    __slots__ = ("_append", "_convert", "_offset", "_scale", "def_id", "latest", "seq", "signal")

    def __init__(
        self,
        signal: Signal,
        conversion: Conversion,
        def_id: int,
        next_seq: int,
        append: Callable[[Row], None],
    ) -> None:
        self.signal = signal
        self.def_id = def_id
        self.seq = next_seq
        self._scale = conversion.scale
        self._offset = conversion.offset
        self._convert = not conversion.is_identity
        self._append = append
        self.latest: Row | None = None

    def publish(
        self,
        value: Any,
        source_ts: int | None = None,
        quality: Quality = _GOOD,
        reason: str | None = None,
    ) -> None:
        gateway_ts = now_ns()
        q = _QUALITY.get(quality)
        if q is None:
            q, reason = _BAD, f"invalid quality {quality!r}" + (f"; {reason}" if reason else "")
        if source_ts is None:
            source_ts = gateway_ts
        elif type(source_ts) is not int or source_ts < _MIN_SOURCE_TS:
            q, reason = _BAD, _bad_timestamp(source_ts, reason)
            source_ts = gateway_ts
        if value is not None:
            if self._convert:
                value = value * self._scale + self._offset
            if type(value) is float and value - value != 0.0:  # NaN or ±inf
                # SQLite would store NaN as NULL and JSON cannot carry either: keep the
                # evidence in the reason and mark the sample, rather than a silent null.
                q, reason = _BAD, f"non-finite value {value!r}" + (f"; {reason}" if reason else "")
                value = None
        seq = self.seq
        self.seq = seq + 1
        row = (self.def_id, seq, source_ts, gateway_ts, q, value, reason)
        self._append(row)
        self.latest = row


def _bad_timestamp(source_ts: object, reason: str | None) -> str:
    text = f"invalid source timestamp {source_ts!r} (UTC nanoseconds expected)"
    return text + (f"; {reason}" if reason else "")


class FanOut:
    """One channel published as several signals (e.g. the same flow in mL/min and L/h)."""

    __slots__ = ("_outputs",)

    def __init__(self, outputs: Sequence[SignalOutput]) -> None:
        self._outputs = tuple(outputs)

    def publish(
        self,
        value: Any,
        source_ts: int | None = None,
        quality: Quality = _GOOD,
        reason: str | None = None,
    ) -> None:
        for output in self._outputs:
            output.publish(value, source_ts, quality, reason)


class NullOutput:
    """The output of a channel the configuration does not publish."""

    __slots__ = ()

    def publish(
        self,
        value: Any,
        source_ts: int | None = None,
        quality: Quality = _GOOD,
        reason: str | None = None,
    ) -> None:
        return None
