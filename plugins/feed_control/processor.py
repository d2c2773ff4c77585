"""The ``pi_control`` processor: a PI loop from a measured signal to a write target.

It reads ``measurement`` (e.g. the soft sensor's glucose), the target's own reading
(``readback``, e.g. the pump's speed setpoint as polled) and optionally a feed-forward signal,
and writes ``target`` (e.g. the feed pump's speed setpoint) through the controlled write path as
its own identity (the processor id, role ``controller`` unless configured). The law and its
safety states live in :mod:`.loop`; this module is the glue:

* ``process`` (synchronous, per sample) feeds measurements to the law and queues the moves;
* ``run`` (its own task) makes the writes, records the loop's events, beats the heartbeat, and
  ticks the law once a second (staleness, hold, fallback profile);
* the ``mode`` command (``{"mode": "manual" | "auto", "output": optional}``) records the change
  first, then applies it: auto claims the target (nobody else may write it), manual releases it.

Published channels: ``output`` (the value written, target unit), ``error`` (setpoint -
measurement), ``mode`` (1 auto, 0 manual; the reason says why), ``state`` (0 normal, 1 hold,
2 fallback, 3 manual) and ``fallback`` (1 while following the fallback profile, else 0).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import (
    Channel,
    CommandCall,
    GatewayError,
    InstrumentError,
    PluginContext,
    ProcessorCommand,
    ProcessorIO,
    Quality,
    Sample,
    Signal,
    SignalKind,
    TargetLimits,
    WriteRefusedError,
)

from .loop import LoopEvent, Mode, Move, PiLoop, PiTuning, State, profile_from

__all__ = ["PiControlOptions", "PiControlProcessor"]

log = structlog.get_logger(__name__)

#: Seconds between ticks of the law (staleness, fallback) in ``run``.
_TICK_S = 1.0


class PiControlOptions(BaseModel):
    """One PI loop: what it measures, where it writes, how it is tuned and how it fails safe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measurement: str = Field(
        min_length=1,
        description="The controlled signal ('instrument/signal' or a processor's, e.g."
        " 'softsensor/glucose'); only its good samples drive the output.",
    )
    setpoint: float = Field(description="Setpoint, in the measurement's unit.", allow_inf_nan=False)
    measurement_unit: str = Field(
        min_length=1,
        description="The measurement's unit (UCUM, e.g. 'g/L'): the unit of the setpoint and"
        " of the published error; must be the measurement signal's.",
    )
    target: str = Field(
        min_length=1,
        description="The write target it sets (full id, declared under 'writes:').",
    )
    output_unit: str = Field(
        min_length=1,
        description="The target's unit (e.g. '{rev}/min'): the unit of the output limits and of"
        " the published output; must be the target's.",
    )
    readback: str = Field(
        min_length=1,
        description="The signal reading the target's present value (e.g. 'feed_pump/"
        "speed_setpoint'): the loop starts from it and follows it in manual (bumpless).",
    )
    kp: float = Field(
        allow_inf_nan=False,
        description="Proportional gain, target units per measurement unit; positive: the"
        " output rises when the measurement is below the setpoint (a feed).",
    )
    ti_h: float = Field(gt=0, allow_inf_nan=False, description="Integral time, process hours.")
    out_min: float | None = Field(
        default=None, description="Lowest output; None: the target's min. Within the target's."
    )
    out_max: float | None = Field(
        default=None, description="Highest output; None: the target's max. Within the target's."
    )
    max_step: float | None = Field(
        default=None, gt=0, description="Largest change per write; None: the target's max_step."
    )
    max_rate_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Largest change per wall second; None: the target's max_rate_per_s.",
    )
    deadband: float = Field(
        default=0.0,
        ge=0,
        description="A change smaller than this is not written (each write is an audit record).",
    )
    filter_h: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="Time constant of a first-order filter on the measurement, process hours"
        " (0: none): damps an analyser's noise before it moves the output.",
    )
    feed_forward: str | None = Field(
        default=None,
        min_length=1,
        description="Optional signal added to the output (times feed_forward_gain), e.g. a"
        " twin's uptake estimate; None: pure PI.",
    )
    feed_forward_gain: float = Field(
        default=1.0, allow_inf_nan=False, description="Target units per feed-forward unit."
    )
    stale_after_s: float = Field(
        default=30.0,
        gt=0,
        description="Wall seconds without a good measurement before the loop holds its output.",
    )
    fallback_after_s: float = Field(
        default=120.0,
        ge=0,
        description="Wall seconds holding before the loop follows the fallback profile.",
    )
    fallback: list[tuple[float, float]] = Field(
        min_length=1,
        description="Fallback feed profile: [[from process hour, output], ...], piecewise"
        " constant, times increasing; within the output limits.",
    )
    heartbeat: str | None = Field(
        default=None,
        min_length=1,
        description="A heartbeat target (writes: entry with heartbeat: true) beaten every"
        " heartbeat_s while the gateway runs; None: no heartbeat.",
    )
    heartbeat_s: float = Field(default=2.0, gt=0, le=3600, description="Seconds between beats.")
    start: Literal["auto", "manual"] = Field(
        default="auto", description="The mode at start (auto as soon as the readback is seen)."
    )

    @model_validator(mode="after")
    def _profile(self) -> PiControlOptions:
        profile_from(self.fallback)  # raises ValueError naming the problem
        return self


class PiControlProcessor:
    """A PI loop writing one target (see the module's docstring)."""

    def __init__(self, options: PiControlOptions, context: PluginContext) -> None:
        self.options = options
        self.id = context.id
        self._log = log.bind(processor=context.id, target=options.target)
        self.limits: TargetLimits | None = None
        self.loop: PiLoop | None = None
        self._role: dict[str, str] = {}
        self._ff = 0.0
        self._known = False  # the target's present value is known (readback seen)
        self._moves: list[Move] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._io: ProcessorIO | None = None
        self._beats = 0
        self._last_heartbeat_problem: str | None = None
        self._published: tuple[Mode, State, str] | None = None
        self._started = False

    # -- Processor ------------------------------------------------------------------------------
    def inputs(self) -> Sequence[str]:
        o = self.options
        return [o.measurement, o.readback] + ([o.feed_forward] if o.feed_forward else [])

    def channels(self) -> Sequence[Channel]:
        return [
            Channel(
                "output", self.options.output_unit, description=f"Written to {self.options.target}"
            ),
            Channel("error", self.options.measurement_unit, description="Setpoint - measurement"),
            Channel("mode", "1", description="1 auto, 0 manual (the reason says why)"),
            Channel("state", "1", description="0 normal, 1 hold, 2 fallback, 3 manual"),
            Channel("fallback", "1", description="1 while following the fallback feed profile"),
        ]

    def controls(self) -> Sequence[str]:
        o = self.options
        return [o.target] + ([o.heartbeat] if o.heartbeat else [])

    def bind_controls(self, targets: Mapping[str, TargetLimits]) -> None:
        o = self.options
        limits = targets[o.target]
        if limits.heartbeat:
            raise ValueError(f"target: {o.target} is a heartbeat, not a setpoint")
        if limits.unit != o.output_unit:
            raise ValueError(
                f"output_unit: {o.target} is in {limits.unit!r}, not {o.output_unit!r}"
            )
        if o.heartbeat is not None and not targets[o.heartbeat].heartbeat:
            raise ValueError(
                f"heartbeat: {o.heartbeat} is not a heartbeat target (heartbeat: true)"
            )
        low = limits.min if o.out_min is None else o.out_min
        high = limits.max if o.out_max is None else o.out_max
        if low < limits.min or high > limits.max:
            raise ValueError(
                f"output limits {low:g}..{high:g} are wider than {o.target}'s"
                f" {limits.min:g}..{limits.max:g}"
            )
        step = _within("max_step", o.max_step, limits.max_step, o.target)
        rate = _within("max_rate_per_s", o.max_rate_per_s, limits.max_rate_per_s, o.target)
        self.limits = limits
        tuning = PiTuning(
            setpoint=o.setpoint,
            kp=o.kp,
            ti_h=o.ti_h,
            out_min=low,
            out_max=high,
            fallback=profile_from(o.fallback),
            max_step=step,
            max_rate_per_s=rate,
            deadband=o.deadband,
            filter_h=o.filter_h,
            stale_after_s=o.stale_after_s,
            fallback_after_s=o.fallback_after_s,
        )
        self.loop = PiLoop(tuning, output=low, wall_s=time.monotonic())

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        o = self.options
        for name, role in ((o.measurement, "measurement"), (o.readback, "readback")) + (
            ((o.feed_forward, "feed_forward"),) if o.feed_forward else ()
        ):
            signal = inputs[name]
            if signal.kind is not SignalKind.SCALAR:
                raise ValueError(f"{role}: {signal.id} is not a scalar signal")
            self._role[signal.id] = role
        for name, unit in ((o.measurement, o.measurement_unit), (o.readback, o.output_unit)):
            if inputs[name].unit != unit:
                raise ValueError(f"{name} is in {inputs[name].unit!r}, not {unit!r}")

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        loop = self.loop
        if loop is None:
            return
        role = self._role.get(sample.signal)
        value = sample.value
        good = sample.quality is Quality.GOOD and isinstance(value, (int, float))
        if role == "readback":
            if good and (loop.mode is Mode.MANUAL or not self._known):
                loop.adopt(float(value))
                self._known = True
            return
        if role == "feed_forward":
            self._ff = self.options.feed_forward_gain * float(value) if good else 0.0
            return
        wall = time.monotonic()
        if not good:
            loop.unmeasured(f"{sample.quality.name.lower()}: {sample.reason or 'no value'}")
            loop.measure(None, False, 0.0, wall)
            return
        move = loop.measure(float(value), True, io.process_time_h(sample.source_ts), wall, self._ff)
        io.output("error").publish(loop.error, sample.source_ts)
        if move.output is not None or move.events:
            self._moves.append(move)
            self._wake.set()

    # -- the loop's own task ---------------------------------------------------------------------
    async def run(self, io: ProcessorIO) -> None:
        loop = self.loop
        if loop is None:
            return
        self._io = io
        o = self.options
        next_beat = time.monotonic()
        next_tick = time.monotonic()
        self._publish_mode(io)
        try:
            while True:
                now = time.monotonic()
                if o.heartbeat is not None and now >= next_beat:
                    await self._beat(io, o.heartbeat)
                    next_beat = now + o.heartbeat_s
                if not self._started and self._known:
                    # Once per gateway run: a run restarted after an error keeps the mode a
                    # person chose.
                    if o.start == "auto":
                        async with self._lock:
                            await self._to_auto(io, self.id, "started in auto", "configured start")
                    self._started = True
                if now >= next_tick:
                    next_tick = now + _TICK_S
                    if self._started:
                        move = loop.tick(io.process_time_h(time.time_ns()), now)
                        if move.output is not None or move.events:
                            self._moves.append(move)
                while self._moves:
                    async with self._lock:
                        await self._act(io, self._moves.pop(0))
                self._publish_mode(io)
                wait = min(next_tick, next_beat if o.heartbeat else next_tick) - time.monotonic()
                self._wake.clear()
                try:
                    async with asyncio.timeout(max(wait, 0.01)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            self._moves.clear()
            loop.abandon()  # a move cut short is not pending any more

    async def _act(self, io: ProcessorIO, move: Move) -> None:
        loop = self.loop
        assert loop is not None
        for event in move.events:
            await self._record(io, event)
        if move.output is None or loop.mode is Mode.MANUAL:
            return
        value = move.output
        why = f"{loop.state.name.lower()}: {loop.reason}"
        outcome = await io.write(self.options.target, value, f"{self.id} {why}")
        if outcome.ok:
            loop.written(value, time.monotonic())
            io.output("output").publish(value)
            return
        real = outcome.read_back if outcome.outcome == "mismatch" else outcome.old
        if real is not None:
            loop.adopt(real)  # what the equipment really has (a watchdog trip...)
        why = f"{outcome.outcome} ({outcome.rule}): {outcome.message}"
        event = loop.refused(why, time.monotonic())
        self._log.warning("pi_control.write_refused", value=value, why=event.why)
        await self._record(io, event, outcome="refused")

    async def _record(self, io: ProcessorIO, event: LoopEvent, outcome: str = "ok") -> None:
        self._log.info(event.action, why=event.why, old=event.old, new=event.new)
        try:
            await io.record(
                f"control.{event.action}",
                outcome=outcome,
                target=self.options.target,
                old=event.old,
                new=event.new,
                why=event.why,
            )
        except GatewayError as exc:
            self._log.error("pi_control.audit_failed", action=event.action, error=str(exc))
            raise

    async def _beat(self, io: ProcessorIO, target: str) -> None:
        self._beats = (self._beats + 1) % 65536
        try:
            await io.heartbeat(target, float(self._beats))
        except (InstrumentError, WriteRefusedError, GatewayError) as exc:
            problem = str(exc)
            if problem != self._last_heartbeat_problem:
                self._log.warning("pi_control.heartbeat_failed", heartbeat=target, error=problem)
            self._last_heartbeat_problem = problem
            return
        if self._last_heartbeat_problem is not None:
            self._log.info("pi_control.heartbeat_recovered", heartbeat=target)
        self._last_heartbeat_problem = None

    def _publish_mode(self, io: ProcessorIO) -> None:
        """Mode, state and fallback, when one of them (or the reason) changed."""
        loop = self.loop
        assert loop is not None
        now = (loop.mode, loop.state, loop.reason)
        if now == self._published:
            return
        self._published = now
        io.output("mode").publish(float(loop.mode.value), reason=loop.reason)
        io.output("state").publish(float(loop.state.value), reason=loop.reason)
        io.output("fallback").publish(1.0 if loop.state is State.FALLBACK else 0.0)

    # -- modes -----------------------------------------------------------------------------------
    async def _to_auto(self, io: ProcessorIO, user: str, reason: str, why: str) -> None:
        loop = self.loop
        assert loop is not None
        await io.record(
            "control.mode",
            target=self.options.target,
            old=loop.mode.name.lower(),
            new="auto",
            reason=reason,
            why=why,
            user=user,
        )
        io.claim(self.options.target)
        loop.auto(time.monotonic(), self._ff)

    async def _to_manual(
        self, io: ProcessorIO, user: str, reason: str, output: float | None
    ) -> float:
        loop = self.loop
        assert loop is not None
        old = loop.mode.name.lower()
        await io.record(
            "control.mode",
            target=self.options.target,
            old=old,
            new="manual" if output is None else f"manual at {output:g}",
            reason=reason,
            user=user,
        )
        value = loop.manual(output)
        self._moves.clear()
        if output is not None:
            result = await io.write(
                self.options.target, output, f"manual output set by {user}: {reason}"
            )
            if not result.ok:
                io.release(self.options.target)
                raise GatewayError(
                    f"in manual now, but the output {output:g} was {result.outcome}"
                    f" ({result.rule}): {result.message}"
                )
            loop.written(output, time.monotonic())
            io.output("output").publish(output)
        io.release(self.options.target)
        return value

    def commands(self) -> Mapping[str, ProcessorCommand]:
        return {
            "mode": ProcessorCommand(
                "write",
                self._mode_command,
                'Switch the loop: {"mode": "manual" | "auto", "output": optional value for'
                " manual}; recorded, then applied (auto claims the target, manual releases it)",
            )
        }

    async def _mode_command(self, call: CommandCall) -> Mapping[str, Any]:
        body = call.body
        mode = body.get("mode")
        if mode not in ("manual", "auto"):
            raise ValueError('mode must be "manual" or "auto"')
        output = body.get("output")
        if output is not None:
            if mode != "manual":
                raise ValueError("output is only for manual")
            if isinstance(output, bool) or not isinstance(output, (int, float)):
                raise ValueError("output must be a number")
            output = float(output)
            if not math.isfinite(output):
                raise ValueError("output must be finite")
        loop, io = self.loop, self._io
        if loop is None or io is None:
            raise GatewayError("the loop is not running")
        if output is not None:
            t = loop.tuning
            if not t.out_min <= output <= t.out_max:
                raise ValueError(
                    f"output {output:g} is outside the loop's limits {t.out_min:g}..{t.out_max:g}"
                )
        async with self._lock:
            if mode == "auto":
                if not self._known:
                    raise GatewayError("the target's present value is not known yet")
                if loop.mode is not Mode.AUTO:
                    await self._to_auto(io, call.user, call.reason, f"asked by {call.full_name}")
            else:
                await self._to_manual(io, call.user, call.reason, output)
        self._publish_mode(io)
        self._wake.set()
        return self.status()

    def status(self) -> Mapping[str, Any]:
        loop = self.loop
        if loop is None:
            return {"target": self.options.target}
        return {
            "target": self.options.target,
            "mode": loop.mode.name.lower(),
            "state": loop.state.name.lower(),
            "reason": loop.reason,
            "output": loop.output,
            "setpoint": loop.tuning.setpoint,
            "error": loop.error,
            "heartbeat_problem": self._last_heartbeat_problem,
        }


def _within(name: str, own: float | None, target: float | None, target_id: str) -> float | None:
    if own is None:
        return target
    if target is not None and own > target:
        raise ValueError(f"{name} {own:g} is above {target_id}'s {target:g}")
    return own
