"""The hot path: turning one driver reading into one stored row.

Everything here was prepared at start-up (unit conversion compiled to scale/offset, storage id and
next sequence number looked up), so :meth:`SignalOutput.publish` is a clock read, a multiply-add,
a counter increment and one tuple appended to a list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..model import Quality, Signal
from ..store.sqlite import Row
from ..timefmt import now_ns
from ..units import Conversion

__all__ = ["FanOut", "NullOutput", "SignalOutput"]

# A plain int, not the IntEnum member: sqlite3 binds an exact int markedly faster.
_GOOD: Quality = int(Quality.GOOD)  # type: ignore[assignment]


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
        if self._convert and value is not None:
            value = value * self._scale + self._offset
        seq = self.seq
        self.seq = seq + 1
        row = (self.def_id, seq, source_ts or gateway_ts, gateway_ts, quality, value, reason)
        self._append(row)
        self.latest = row


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
