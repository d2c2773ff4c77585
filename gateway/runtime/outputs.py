"""The hot path: turning one driver reading into one stored row.

Everything here was prepared at start-up (unit conversion compiled to scale/offset, storage id and
next sequence number looked up), so :meth:`SignalOutput.publish` is a clock read, a dictionary
look-up of the quality, a multiply-add, a counter increment and one tuple appended to a list.
What a driver gets wrong (a quality that is not one, a timestamp in seconds, NaN) becomes a
``bad`` sample saying so, never a crash and never a silent null. Call it from the event loop's
thread only (a driver with threads of its own uses ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..model import Quality, Signal, float32_decimal
from ..spectra import Spectrum
from ..store.sqlite import Row
from ..timefmt import now_ns
from ..units import Conversion

__all__ = ["FanOut", "NullOutput", "SignalOutput", "SpectrumOutput"]

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
_MAX_SOURCE_TS = 2**63 - 1  # what SQLite's INTEGER holds (year 2262)


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
        if quality is not _GOOD or source_ts is not None:
            q, source_ts, reason = _checked(quality, source_ts, reason, gateway_ts)
        else:
            q, source_ts = _GOOD, gateway_ts
        if value is not None:
            kind = type(value)
            if kind is not float and kind is not int:
                value, q, reason = _unusual(value, q, reason)
            if self._convert and value is not None:
                try:
                    value = value * self._scale + self._offset
                except (TypeError, OverflowError) as exc:
                    q, reason = _BAD, _also(f"cannot convert {value!r}: {exc}", reason)
                    value = None
            if type(value) is float and value - value != 0.0:  # NaN or ±inf
                # SQLite would store NaN as NULL and JSON cannot carry either: keep the
                # evidence in the reason and mark the sample, rather than a silent null.
                q, reason = _BAD, _also(f"non-finite value {value!r}", reason)
                value = None
        seq = self.seq
        self.seq = seq + 1
        row = (self.def_id, seq, source_ts, gateway_ts, q, value, reason)
        self._append(row)
        self.latest = row

    def redirect(self, append: Callable[[Row], None]) -> None:
        """Send future rows to ``append`` (the supervisor, once the store is closed)."""
        self._append = append


class SpectrumOutput(SignalOutput):
    """Publishes :class:`~gateway.spectra.Spectrum` readings of one spectrum channel.

    The same checks as for scalars, plus: the value must be a ``Spectrum`` with finite values.
    (The store records each new axis with the first spectrum that uses it.)
    """

    __slots__ = ()

    def publish(
        self,
        value: Any,
        source_ts: int | None = None,
        quality: Quality = _GOOD,
        reason: str | None = None,
    ) -> None:
        gateway_ts = now_ns()
        q, source_ts, reason = _checked(quality, source_ts, reason, gateway_ts)
        if value is not None:
            if type(value) is not Spectrum:
                q, reason = _BAD, _also(f"expected a Spectrum, got {type(value).__name__}", reason)
                value = None
            else:
                if self._convert:
                    converted = value.values * np.float32(self._scale) + np.float32(self._offset)
                    converted.flags.writeable = False
                    value = Spectrum._trusted(converted.astype(np.float32, copy=False), value.axis)
                finite = np.isfinite(value.values)
                if not finite.all():
                    bad = int(finite.size - np.count_nonzero(finite))
                    q, reason = _BAD, _also(f"non-finite values in {bad} points", reason)
                    value = None
        seq = self.seq
        self.seq = seq + 1
        row = (self.def_id, seq, source_ts, gateway_ts, q, value, reason)
        self._append(row)
        self.latest = row


def _checked(
    quality: Any, source_ts: Any, reason: str | None, gateway_ts: int
) -> tuple[int, int, str | None]:
    """The stored quality and source timestamp for what a driver passed: anything invalid makes
    the sample ``bad`` with the problem named in its reason."""
    try:
        q = _QUALITY[quality]
    except (KeyError, TypeError):  # not a quality (TypeError: not even hashable)
        q, reason = _BAD, _also(f"invalid quality {quality!r}", reason)
    else:
        if isinstance(quality, bool):  # bool hashes like 1 and 0: not a quality
            q, reason = _BAD, _also(f"invalid quality {quality!r}", reason)
    if source_ts is None:
        source_ts = gateway_ts
    elif type(source_ts) is not int or not _MIN_SOURCE_TS <= source_ts <= _MAX_SOURCE_TS:
        q, reason = _BAD, _also(f"invalid source timestamp {source_ts!r}", reason)
        source_ts = gateway_ts
    return q, source_ts, reason


def _also(problem: str, reason: str | None) -> str:
    return f"{problem}; {reason}" if reason else problem


def _unusual(value: Any, q: int, reason: str | None) -> tuple[Any, int, str | None]:
    """Values other than plain floats and ints (off the hot path): make numbers plain numbers
    (numpy scalars, IntEnum, float subclasses) so they are stored and checked as such; a numpy
    float32 becomes its shortest decimal (:func:`~gateway.float32_decimal`)."""
    if isinstance(value, bool | str | bytes):
        return value, q, reason
    if isinstance(value, Spectrum):
        problem = "a spectrum published on a scalar signal (declare the channel as a spectrum)"
        return None, _BAD, _also(problem, reason)
    if type(value) is np.float32:  # a float32 reading: the decimal the instrument meant
        return float32_decimal(float(value)), q, reason
    try:
        return operator.index(value), q, reason  # integers of any kind, exactly
    except TypeError:
        pass
    if isinstance(value, float) or (hasattr(value, "__float__") and not hasattr(value, "__len__")):
        try:
            return float(value), q, reason
        except (TypeError, ValueError, OverflowError):
            pass
    return value, q, reason  # e.g. a list: the store turns it into a bad sample saying why


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
