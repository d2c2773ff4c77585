"""A recording :class:`~gateway.InstrumentIO`: the runtime's own instrument runner and outputs,
with every published row kept in memory instead of going to a store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from ..api import DeviceIdentity, Driver, Output
from ..config import InstrumentConfig
from ..errors import ConfigError
from ..loader import InstrumentPlan, SignalPlan, _signal_plans
from ..model import Quality, Sample, Signal, SignalKind
from ..runtime.instrument import InstrumentRunner
from ..runtime.outputs import FanOut, SignalOutput, SpectrumOutput
from ..runtime.supervisor import STOP_TIMEOUT_S
from ..store.sqlite import Row, _repaired
from ._wait import wait_until

__all__ = ["RecordingIO"]

# A test wants a failed session retried soon, not after the production default's half second.
_TEST_BACKOFF = {"initial_s": 0.05, "max_s": 0.5}


class RecordingIO(InstrumentRunner):
    """What the runtime hands ``driver.run(io)`` (and a :class:`~gateway.PollingDriver`'s
    ``poll(io)``), recording what the driver does with it.

    The outputs are the runtime's own (:mod:`gateway.runtime.outputs`): a reading is checked and
    converted exactly as in ``patgw run`` (NaN, a timestamp in seconds, an invalid quality, a
    value the store cannot hold each become a ``bad`` sample with the reason), and each gets its
    per-signal ``seq``. :meth:`running` supervises the driver as the runtime does
    (:class:`~gateway.runtime.instrument.InstrumentRunner`): a session ending with an
    ``InstrumentError`` (or a driver bug) marks every signal ``bad`` with
    ``unreachable: <reason>``, and ``run`` is called again after a short backoff.

    ``signals`` are the instrument's ``signals:`` entries of a configuration (``{"id":
    "weight_mg", "channel": "weight", "unit": "mg"}``); omitted, every channel is published in
    its own unit, as a configuration that lists none does. Signal ids are
    ``<area>/<instrument_id>/<signal>``.

    Every identity the driver reports (``identify()``, plugin API 1.1; a
    :class:`~gateway.PollingDriver`'s ``device_identity``) is kept in :attr:`identities`, the
    latest in ``identity``.
    """

    def __init__(
        self,
        driver: Driver,
        instrument_id: str = "instrument",
        *,
        area: str = "test",
        signals: Sequence[Mapping[str, Any]] | None = None,
        backoff: Mapping[str, float] | None = None,
    ) -> None:
        config = InstrumentConfig.model_validate(
            {
                "id": instrument_id,
                "driver": type(driver).__name__,
                "backoff": dict(backoff) if backoff is not None else _TEST_BACKOFF,
                "signals": None if signals is None else [dict(s) for s in signals],
            }
        )
        problems: list[str] = []
        plans = _signal_plans(area, config, list(driver.channels()), ("instrument",), problems)
        if problems:
            raise ConfigError(problems)
        self.published: list[Sample] = []
        """Every sample, in publication order, as the store would commit it."""
        self.events: list[tuple[str, str | None]] = []
        """``("connected", None)`` for each ``connected()`` call and ``("down", reason)`` for
        each session that ended (the reason the runtime gives its ``bad`` samples)."""
        self.identities: list[DeviceIdentity] = []
        """Every identity the driver reported (``identify()``), in order."""
        self._signals: list[Signal] = [sp.signal for sp in plans]
        self._by_channel: dict[str, list[str]] = {}
        outputs, signal_outputs = self._make_outputs(plans)
        super().__init__(InstrumentPlan(config, driver, plans), outputs, signal_outputs)

    def _make_outputs(
        self, plans: Sequence[SignalPlan]
    ) -> tuple[dict[str, Output], list[SignalOutput]]:
        by_channel: dict[str, list[SignalOutput]] = {}
        signal_outputs: list[SignalOutput] = []
        for def_id, sp in enumerate(plans):
            kind = SpectrumOutput if sp.signal.kind is SignalKind.SPECTRUM else SignalOutput
            output = kind(sp.signal, sp.conversion, def_id, 0, self._record)
            by_channel.setdefault(sp.channel, []).append(output)
            self._by_channel.setdefault(sp.channel, []).append(sp.signal.id)
            signal_outputs.append(output)
        outputs: dict[str, Output] = {
            channel: outs[0] if len(outs) == 1 else FanOut(outs)
            for channel, outs in by_channel.items()
        }
        return outputs, signal_outputs

    def _record(self, row: Row) -> None:
        def_id, seq, source_ts, gateway_ts, quality, value, reason = _repaired(row)
        signal = self._signals[def_id]
        self.published.append(
            Sample(
                signal.id, value, signal.unit, source_ts, gateway_ts, Quality(quality), seq, reason
            )
        )

    # -- what the driver calls ------------------------------------------------------------------
    def connected(self) -> None:
        self.events.append(("connected", None))
        super().connected()

    def identify(self, identity: DeviceIdentity) -> None:
        self.identities.append(identity)
        super().identify(identity)

    def mark_bad(self, reason: str) -> None:
        self.events.append(("down", reason))
        super().mark_bad(reason)

    # -- what a test reads -----------------------------------------------------------------------
    @property
    def signals(self) -> list[Signal]:
        """The published signals, in channel order (or the order of ``signals``)."""
        return list(self._signals)

    def samples(self, name: str | None = None) -> list[Sample]:
        """The samples published so far, in order; only those of ``name`` if given: a signal id,
        the last part of one (``weight``), or a channel name (all the signals it feeds)."""
        if name is None:
            return list(self.published)
        wanted = set(self._by_channel.get(name, ()))
        wanted.update(s.id for s in self._signals if s.id == name or s.id.rsplit("/", 1)[1] == name)
        if not wanted:
            known = ", ".join(s.id for s in self._signals) or "none"
            raise KeyError(f"no signal or channel {name!r} (signals: {known})")
        return [s for s in self.published if s.signal in wanted]

    def values(self, name: str) -> list[Any]:
        """The values of :meth:`samples` of ``name``."""
        return [s.value for s in self.samples(name)]

    @property
    def connects(self) -> int:
        """How many times the driver called ``connected()``."""
        return self.sessions

    async def wait_for_samples(self, name: str, count: int, within: float = 10.0) -> list[Sample]:
        """Wait until ``name`` (as in :meth:`samples`) has ``count`` samples; return them all.
        Raises ``TimeoutError`` saying how many came and the driver's last error."""
        await wait_until(
            lambda: len(self.samples(name)) >= count,
            within,
            lambda: (
                f"{len(self.samples(name))} of {count} samples of {name!r} published"
                f" (instrument {self.state}, last error: {self.last_error})"
            ),
        )
        return self.samples(name)

    async def wait_for_events(self, *events: str, within: float = 10.0) -> None:
        """Wait until :attr:`events` holds each of ``events`` (``"connected"``, ``"down"``) at
        least as many times as given."""
        wanted = {e: events.count(e) for e in events}

        def seen() -> list[str]:
            return [e for e, _ in self.events]

        await wait_until(
            lambda: all(seen().count(e) >= n for e, n in wanted.items()),
            within,
            lambda: f"events {seen()}, waiting for {list(events)}",
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RecordingIO]:
        """Run the driver under the runtime's supervision until the block ends; then cancel it
        as the runtime does at a stop (the driver gets ``STOP_TIMEOUT_S`` to close)."""
        task = asyncio.create_task(self.run(), name=f"testing.instrument.{self.instrument_id}")
        try:
            yield self
        finally:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            if not done:
                raise TimeoutError(
                    f"driver of {self.instrument_id!r} did not stop within {STOP_TIMEOUT_S} s"
                    " of its cancellation"
                )
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
