"""The ``anomaly`` processor: multivariate SPC, per-signal checks and alarms, live.

Channels (``unit "1"``)::

    t2, q                  Hotelling T² and SPE/Q of the process signals in the PCA model
                           (only with ``model``), each point with the source time of the sample
                           that completed it
    mspc_alarm             the model's alarm: severity while active, 0 otherwise
    <check name>           one alarm per configured check, same convention

An alarm's sample carries its cause as the reason while active — for the model, which statistic
and the signals contributing most ("T² 31.2 over 18.4: controller/base_total 71 %, ..."); for a
check, the instrument and what it saw ("feed_pump: twin/feed_efficiency 0.91 drifting low of 1
...; delivered feed below reported (tubing wear?)"). Alarms are raised after ``k`` of ``n``
points over the limit, cleared with hysteresis (:mod:`.checks`), acknowledged through the local
API (``POST /api/v1/processors/<id>/acknowledge`` with ``{"alarm": name, "reason": ...}``,
permission ``write``); each transition is audited (``io.note``: ``alarm.raised``,
``alarm.cleared``, ``alarm.acknowledged``).

Process time comes from the runtime's ``io.process_time_h`` (the processor's ``time_base``):
the model's mean and spread depend on the batch's age.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import (
    Channel,
    CommandCall,
    ConfigPath,
    GatewayError,
    PluginContext,
    ProcessorCommand,
    ProcessorIO,
    Quality,
    Sample,
    Signal,
    SignalKind,
)

from .checks import Alarm, Drift, Frozen, Level, Relative, Spike, Transition
from .mspc import PcaModel, load_model

__all__ = ["AnomalyOptions", "AnomalyProcessor"]

log = structlog.get_logger(__name__)


class Persistence(BaseModel):
    """When an alarm is raised and cleared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(default=3, ge=1, description="Raised when k of the last n points are over.")
    n: int = Field(default=5, ge=1, description="The window of the persistence rule, points.")
    clear_ratio: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Hysteresis: cleared only below this fraction of the limit...",
    )
    clear_points: int = Field(default=5, ge=1, description="...for so many points in a row.")

    @model_validator(mode="after")
    def _k_within_n(self) -> Persistence:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        return self


class _CheckBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        description="The alarm's channel name (e.g. feed_pump_wear).",
        pattern=r"^[a-z][a-z0-9_]*$",
    )
    signal: str = Field(min_length=1, description="The scalar signal it watches.")
    instrument: str = Field(
        min_length=1, description="The instrument the alarm names (e.g. feed_pump)."
    )
    message: str = Field(
        default="",
        description="What it means, appended to the reason (e.g. 'delivered feed below reported"
        " (tubing wear?)'). May use {value}, {target} and {deviation_pct}.",
    )
    severity: int = Field(default=2, ge=1, le=4, description="1 advisory ... 4 critical.")
    persistence: Persistence = Field(default_factory=Persistence, description="Raise/clear rule.")


class FrozenCheck(_CheckBase):
    kind: Literal["frozen"]
    points: int = Field(default=20, ge=2, description="Values in a row that count as stuck.")
    tolerance: float = Field(default=0.0, ge=0, description="Equal within this (absolute).")


class SpikeCheck(_CheckBase):
    kind: Literal["spike"]
    window: int = Field(default=15, ge=5, description="Previous values for the median/MAD.")
    n_sigmas: float = Field(
        default=4.0, gt=0, description="Over this many robust standard deviations."
    )
    min_sd: float = Field(default=0.0, ge=0, description="Floor of the robust sd.")


class DriftCheck(_CheckBase):
    kind: Literal["drift"]
    target: float = Field(description="The value in normal operation (e.g. 0 for a residual).")
    sd: float = Field(gt=0, description="Its normal spread (standard deviation).")
    k: float = Field(default=0.5, ge=0, description="CUSUM slack, in sd.")
    h: float = Field(default=5.0, gt=0, description="CUSUM decision interval, in sd.")
    direction: Literal["low", "high", "both"] = Field(default="both", description="Which way.")


class LevelCheck(_CheckBase):
    kind: Literal["level"]
    low: float | None = Field(default=None, description="Alarm below this.")
    high: float | None = Field(default=None, description="Alarm above this.")
    target: float | None = Field(
        default=None, description="The normal value, for {deviation_pct} in the message."
    )


class RelativeCheck(_CheckBase):
    """Against the run's own start: for a signal that should stay constant through a run but
    has no fixed value (a Raman reference band's intensity, which falls with the laser)."""

    kind: Literal["relative"]
    max_drop: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Alarm when the smoothed value is this fraction below its start.",
    )
    baseline_h: float = Field(
        default=2.0, gt=0, description="Process hours from the first value whose mean is the start."
    )
    baseline_points: int = Field(
        default=5, ge=1, description="...and at least so many values (the start's own noise)."
    )
    smoothing_h: float = Field(
        default=1.0, gt=0, description="Time constant of the exponential average, process hours."
    )


CheckOptions = Annotated[
    FrozenCheck | SpikeCheck | DriftCheck | LevelCheck | RelativeCheck,
    Field(discriminator="kind"),
]


class AnomalyOptions(BaseModel):
    """A PCA model of normal operation, per-signal checks, and how alarms persist."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ConfigPath | None = Field(
        default=None,
        description="PCA model file ('patgw model fit pca'); a relative path is relative to"
        " the config file's folder. Its signals are the processor's inputs.",
    )
    signals: Mapping[str, str] = Field(
        default_factory=dict,
        description="The configured signal for a model signal, when they are named differently"
        " (model signal id -> 'instrument/signal' or a full id).",
    )
    persistence: Persistence = Field(
        default_factory=Persistence, description="The model's alarm raise/clear rule."
    )
    severity: int = Field(default=2, ge=1, le=4, description="The model alarm's severity.")
    stale_s: float | None = Field(
        default=None,
        gt=0,
        description="For polled signals: one whose last good value is older than this (wall"
        " seconds) stops the model's statistics until it is fresh. None (default): a value"
        " holds until a bad sample (a subscription reports only changes).",
    )
    every_h: float = Field(
        default=0.1,
        gt=0,
        description="Score the model once per so many process hours (at the first signal's"
        " next sample): the persistence rule then means the same at any poll rate or time"
        " scale.",
    )
    checks: Sequence[CheckOptions] = Field(default=(), description="Per-signal checks.")

    @model_validator(mode="after")
    def _something_and_unique(self) -> AnomalyOptions:
        if self.model is None and not self.checks:
            raise ValueError("give a model, checks, or both")
        names = [c.name for c in self.checks]
        taken = {"t2", "q", "mspc_alarm"}
        for name in names:
            if name in taken:
                raise ValueError(f"check name {name!r} is used twice or is a reserved channel")
            taken.add(name)
        if self.signals and self.model is None:
            raise ValueError("signals maps model signals: it needs a model")
        return self


class _Detector(Protocol):
    def update(self, value: float) -> float: ...

    def describe(self, value: float) -> str: ...


@dataclass(slots=True)
class _Check:
    options: _CheckBase
    detector: _Detector
    alarm: Alarm
    target: float | None


class AnomalyProcessor:
    """See the module docstring."""

    def __init__(self, options: AnomalyOptions, context: PluginContext) -> None:
        self.options = options
        self.id = context.id
        self.model: PcaModel | None = load_model(options.model) if options.model else None
        self._log = log.bind(processor=context.id)
        self._io: ProcessorIO | None = None
        model = self.model
        self._model_inputs: list[str] = []
        if model is not None:
            unknown = set(options.signals) - set(model.signals)
            if unknown:
                raise ValueError(
                    f"signals: {sorted(unknown)} are not signals of {model.describe()}"
                    f" ({', '.join(model.signals)})"
                )
            self._model_inputs = [options.signals.get(s, s) for s in model.signals]
        self._mspc_alarm = Alarm(
            "mspc_alarm",
            severity=options.severity,
            k=options.persistence.k,
            n=options.persistence.n,
            clear_ratio=options.persistence.clear_ratio,
            clear_points=options.persistence.clear_points,
        )
        self._checks = [_build_check(c) for c in options.checks]
        # Filled by bind: full signal id -> position in the model, and -> checks.
        self._model_index: dict[str, int] = {}
        self._pace = ""
        self._by_signal: dict[str, list[_Check]] = {}
        p = len(self._model_inputs)
        self._latest: list[float] = [math.nan] * p
        self._latest_ts: list[int] = [0] * p
        self._last_scores: dict[str, Any] = {}
        self._next_h = -math.inf

    # -- Processor ------------------------------------------------------------------------------
    def inputs(self) -> Sequence[str]:
        names = list(self._model_inputs)
        for check in self._checks:
            if check.options.signal not in names:
                names.append(check.options.signal)
        return names

    def channels(self) -> Sequence[Channel]:
        out: list[Channel] = []
        model = self.model
        if model is not None:
            origin = model.describe()
            conf = f"{model.confidence * 100:g} %"
            out += [
                Channel(
                    "t2",
                    "1",
                    description=f"Hotelling T² in {origin} (limit {model.t2_limit:.6g} at {conf})",
                ),
                Channel(
                    "q",
                    "1",
                    description=f"SPE/Q in {origin} (limit {model.q_limit:.6g} at {conf})",
                ),
                Channel(
                    "mspc_alarm",
                    "1",
                    description=f"Alarm of {origin}: severity while active, 0 otherwise",
                ),
            ]
        for check in self._checks:
            o = check.options
            out.append(
                Channel(
                    o.name,
                    "1",
                    description=f"{o.kind} check of {o.signal} ({o.instrument}): severity"  # type: ignore[attr-defined]
                    " while active, 0 otherwise",
                )
            )
        return out

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        model = self.model
        for name in self.inputs():
            if inputs[name].kind is not SignalKind.SCALAR:
                raise ValueError(f"{name}: {inputs[name].id} is not a scalar signal")
        if model is not None:
            for k, (name, unit) in enumerate(zip(self._model_inputs, model.units, strict=True)):
                signal = inputs[name]
                if signal.unit != unit:
                    raise ValueError(
                        f"{name}: {signal.id} is in {signal.unit!r}; {model.describe()} was"
                        f" fitted on {model.signals[k]} in {unit!r}"
                    )
                self._model_index[signal.id] = k
            self._pace = inputs[self._model_inputs[0]].id
        for check in self._checks:
            self._by_signal.setdefault(inputs[check.options.signal].id, []).append(check)

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        self._io = io
        signal = sample.signal
        value = sample.value
        good = sample.quality != Quality.BAD and isinstance(value, int | float)
        checks = self._by_signal.get(signal)
        if checks is not None and good:
            for check in checks:
                self._run_check(check, float(value), sample.source_ts, io)
        index = self._model_index.get(signal)
        if index is None:
            return
        # A bad sample voids the value: the model is never scored on what was last known.
        self._latest[index] = float(value) if good else math.nan
        self._latest_ts[index] = sample.gateway_ts
        if signal == self._pace:
            self._evaluate(sample, io)

    # -- optional members of the processor contract -------------------------------------------
    def commands(self) -> Mapping[str, ProcessorCommand]:
        return {
            "acknowledge": ProcessorCommand(
                permission="write",
                handler=self._acknowledge_command,
                description="Acknowledge an alarm: body {'alarm': name, 'reason': text}",
            )
        }

    def status(self) -> Mapping[str, Any]:
        alarms = {a.name: _alarm_status(a) for a in self._alarms()}
        model = self.model
        # Each output channel's limit (the console shows T² and Q against them).
        limits = {} if model is None else {"t2": model.t2_limit, "q": model.q_limit}
        return {"alarms": alarms, "mspc": dict(self._last_scores), "limits": limits}

    # -- the model -----------------------------------------------------------------------------
    def _evaluate(self, sample: Sample, io: ProcessorIO) -> None:
        model = self.model
        assert model is not None
        t2_out = io.output("t2")
        q_out = io.output("q")
        ts = sample.source_ts
        hours = io.process_time_h(ts)
        every = self.options.every_h
        if self._next_h - every <= hours < self._next_h:
            return
        # Also when the time went back (a new batch: its age restarts).
        self._next_h = hours + every
        stale_s = self.options.stale_s
        limit_ns = math.inf if stale_s is None else stale_s * 1e9
        now = sample.gateway_ts
        missing = [
            model.signals[k]
            for k, (v, seen) in enumerate(zip(self._latest, self._latest_ts, strict=True))
            if math.isnan(v) or now - seen > limit_ns
        ]
        if missing:
            stale = f"no {'fresh ' if stale_s else ''}good value of {', '.join(missing)}"
            t2_out.publish(None, ts, Quality.BAD, stale)
            q_out.publish(None, ts, Quality.BAD, stale)
            return
        scores = model.score(hours, self._latest)
        t2_ratio = scores.t2 / model.t2_limit
        q_ratio = scores.q / model.q_limit
        quality, reason = Quality.GOOD, ""
        if scores.beyond_maturity:
            quality = Quality.UNCERTAIN
            reason = f"{hours:.1f} h is past the model's {model.max_maturity_h:g} h of training"
        t2_out.publish(scores.t2, ts, quality, reason or None)
        q_out.publish(scores.q, ts, quality, reason or None)
        self._last_scores = {"hours": hours, "t2": scores.t2, "q": scores.q}
        describe = None
        if max(t2_ratio, q_ratio) > 1.0:
            describe = self._describe_mspc(scores.t2, scores.q, scores, t2_ratio >= q_ratio)
        self._step_alarm(self._mspc_alarm, max(t2_ratio, q_ratio), ts, describe, io)

    def _describe_mspc(self, t2: float, q: float, scores: Any, by_t2: bool) -> str:
        model = self.model
        assert model is not None
        if by_t2:
            head = f"T² {t2:.3g} over its limit {model.t2_limit:.3g}"
            parts = scores.t2_contributions
        else:
            head = f"Q {q:.3g} over its limit {model.q_limit:.3g}"
            parts = scores.q_contributions
        total = sum(abs(x) for x in parts) or 1.0
        ranked = sorted(zip(model.signals, parts, strict=True), key=lambda sp: -abs(sp[1]))
        named = ", ".join(f"{s} {100 * abs(c) / total:.0f} %" for s, c in ranked[:3])
        return f"{head}; contributions: {named}"

    # -- checks and alarms ---------------------------------------------------------------------
    def _run_check(self, check: _Check, value: float, ts: int, io: ProcessorIO) -> None:
        detector = check.detector
        if isinstance(detector, Relative):
            ratio = detector.update_at(value, io.process_time_h(ts))
        else:
            ratio = detector.update(value)
        describe = None
        if ratio > 1.0:
            o = check.options
            what = check.detector.describe(value)
            text = f"{o.instrument}: {o.signal} {what}"
            if o.message:
                target = check.target
                if isinstance(detector, Relative):
                    target, value = detector.reference, detector.level
                deviation = (value - target) / target * 100 if target else math.nan
                text += "; " + o.message.format(
                    value=value, target=target, deviation_pct=abs(deviation)
                )
            describe = text
        self._step_alarm(check.alarm, ratio, ts, describe, io)

    def _step_alarm(
        self, alarm: Alarm, ratio: float, ts: int, describe: str | None, io: ProcessorIO
    ) -> None:
        transition = alarm.update(ratio, ts, describe)
        if transition is not None:
            self._audit(transition, alarm, io)
        out = io.output(alarm.name)
        if alarm.active:
            out.publish(alarm.value, ts, Quality.GOOD, alarm.reason)
        else:
            out.publish(0, ts)

    def _audit(
        self, transition: Transition, alarm: Alarm, io: ProcessorIO, user: str = "", why: str = ""
    ) -> None:
        self._log.warning(
            f"anomaly.alarm_{transition.action}", alarm=alarm.name, reason=transition.reason
        )
        io.note(
            f"alarm.{transition.action}",
            target=f"{self.id}/{alarm.name}",
            new=alarm.value,
            # The cause is the record's reason; an acknowledgement's is the user's own.
            reason=why or transition.reason,
            why=transition.reason,
            details={"severity": alarm.severity, "state": alarm.status()},
            user=user or None,
        )

    def _alarms(self) -> list[Alarm]:
        alarms = [self._mspc_alarm] if self.model is not None else []
        return alarms + [c.alarm for c in self._checks]

    def acknowledge(self, name: str, user: str, why: str = "") -> Transition:
        """Acknowledge alarm ``name`` as ``user`` (audited); ``ValueError`` if unknown or if
        there is nothing to acknowledge."""
        by_name = {a.name: a for a in self._alarms()}
        alarm = by_name.get(name)
        if alarm is None:
            raise ValueError(f"no alarm {name!r}; alarms: {', '.join(by_name)}")
        transition = alarm.acknowledge(user)
        if self._io is not None:
            self._audit(transition, alarm, self._io, user, why)
        return transition

    async def _acknowledge_command(self, call: CommandCall) -> Mapping[str, Any]:
        name = call.body.get("alarm")
        if not isinstance(name, str) or not name:
            raise ValueError("body needs 'alarm': the alarm's name")
        alarm = {a.name: a for a in self._alarms()}.get(name)
        if alarm is not None and not _pending(alarm):
            # Known, but nothing to acknowledge now: a conflict, not bad input.
            raise GatewayError(f"alarm {name} has nothing to acknowledge ({alarm.status()})")
        if alarm is None:
            known = ", ".join(a.name for a in self._alarms())
            raise ValueError(f"no alarm {name!r}; alarms: {known}")
        io = self._io
        if io is None:
            raise GatewayError("the anomaly processor has not started yet")
        # A person's action: on record (durably) before it takes effect; fail closed.
        record = await io.record(
            "alarm.acknowledged",
            target=f"{self.id}/{alarm.name}",
            new=alarm.value,
            reason=call.reason,
            why=alarm.reason,
            details={"severity": alarm.severity, "state": alarm.status()},
            user=call.user,
        )
        transition = alarm.acknowledge(call.user)
        self._log.warning("anomaly.alarm_acknowledged", alarm=alarm.name, user=call.user)
        return {
            "alarm": name,
            "state": alarm.status(),
            "audit": transition.reason,
            "record": record,
        }


def _pending(alarm: Alarm) -> bool:
    return alarm.status() != "normal" and not alarm.acknowledged


def _alarm_status(alarm: Alarm) -> dict[str, Any]:
    return {
        "state": alarm.status(),
        "severity": alarm.severity,
        "reason": alarm.reason if alarm.status() != "normal" else "",
        "raised": alarm.count,
        "acknowledged": alarm.acknowledged,
        "pending": _pending(alarm),
    }


def _build_check(options: CheckOptions) -> _Check:
    p = options.persistence
    alarm = Alarm(
        options.name,
        severity=options.severity,
        k=p.k,
        n=p.n,
        clear_ratio=p.clear_ratio,
        clear_points=p.clear_points,
    )
    detector: _Detector
    target: float | None = None
    if isinstance(options, FrozenCheck):
        detector = Frozen(options.points, options.tolerance)
    elif isinstance(options, SpikeCheck):
        detector = Spike(options.window, options.n_sigmas, options.min_sd)
    elif isinstance(options, DriftCheck):
        detector = Drift(
            options.target, options.sd, k=options.k, h=options.h, direction=options.direction
        )
        target = options.target
    elif isinstance(options, RelativeCheck):
        detector = Relative(
            options.max_drop,
            baseline_h=options.baseline_h,
            baseline_points=options.baseline_points,
            smoothing_h=options.smoothing_h,
        )
    else:
        detector = Level(options.low, options.high)
        target = options.target
    return _Check(options, detector, alarm, target)
