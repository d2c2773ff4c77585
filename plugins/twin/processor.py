"""The ``twin`` processor: a fed-batch CHO model running beside the bioreactor, corrected by the
soft sensor through an extended Kalman filter (see :mod:`plugins.twin.estimator`).

Inputs (options name the signals): ``feed_total`` (the pump's cumulative volume, mL: the feed
rate is its differences over process time), ``glucose`` and ``lactate`` (the soft sensor's, g/L;
only ``good`` samples correct the twin — ``uncertain`` and ``bad`` ones are skipped and counted
in the status), optionally ``base_total`` (mL), ``temperature``, ``ph``, ``dissolved_oxygen``.
Process time is the runtime's (``io.process_time_h``: the processor's ``time_base``).

Channels, each with ``<name>_sd`` (one standard deviation, same unit):

* ``vcd`` (10*6/mL), ``titer``, ``glucose``, ``lactate`` (g/L): the filtered state;
* ``glucose_residual``, ``lactate_residual`` (g/L): measured - twin prior, at each good
  measurement (its sd: the innovation's);
* ``base_residual`` (mL): base total measured since the twin started - the base the twin expects
  the pH loop to have used (a drifting pH probe makes the loop dose more or less);
* ``glucose_forecast`` (g/L): glucose at +``forecast_h`` process hours at the current feed rate;
* ``time_to_depletion`` (h): process hours until glucose falls below ``depletion_g_per_l`` at
  the current feed; when that is not within ``depletion_search_h``, the value is that horizon
  and ``uncertain`` ("no depletion within ..."), its sd null;
* ``feed_efficiency`` (1): what the pump delivers per volume it reports (1 = as reported; a worn
  tubing makes it fall).

State channels are ``uncertain`` while the twin runs open loop (no good glucose measurement for
``stale_h`` process hours), with the reason.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from gateway import (
    Channel,
    ConfigPath,
    Output,
    PluginContext,
    ProcessorIO,
    Quality,
    Sample,
    Signal,
    SignalKind,
    UnitError,
    compile_conversion,
)

from .estimator import ETA, G, L, P, TwinEstimator, X
from .model import INPUTS, TwinModel, load_twin_model

__all__ = ["TwinOptions", "TwinProcessor"]

log = structlog.get_logger(__name__)

_STATE_CHANNELS = (
    ("vcd", "10*6/mL", X, "Viable cell density"),
    ("titer", "g/L", P, "Product titer"),
    ("glucose", "g/L", G, "Glucose"),
    ("lactate", "g/L", L, "Lactate"),
    ("feed_efficiency", "1", ETA, "Feed delivered per volume the pump reports"),
)
#: Feed-rate window: the rate is the total's change over at least this much process time.
_FEED_WINDOW_H = 0.25
#: A sample stamped further ahead of its arrival than this (an analyser's clock stepped
#: forward) is not used: at a time scale of 3600 one such sample would advance the twin by
#: days, and every later sample would then look older than the state.
_MAX_CLOCK_SKEW_NS = 2_000_000_000


class TwinOptions(BaseModel):
    """The model file, the signals it reads, and the forecast's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ConfigPath = Field(
        description="The twin model file ('patgw model fit twin'); relative to the config's folder."
    )
    feed_total: str = Field(min_length=1, description="The feed pump's cumulative volume (mL).")
    glucose: str = Field(min_length=1, description="Measured glucose, e.g. the soft sensor's.")
    lactate: str = Field(min_length=1, description="Measured lactate, e.g. the soft sensor's.")
    base_total: str | None = Field(
        default=None, description="The pH loop's cumulative base (mL): gives base_residual."
    )
    temperature: str | None = Field(default=None, description="Culture temperature.")
    ph: str | None = Field(default=None, description="Culture pH.")
    dissolved_oxygen: str | None = Field(default=None, description="Dissolved oxygen (%).")
    forecast_h: float = Field(
        default=6.0, gt=0, le=168, description="glucose_forecast looks this many process h ahead."
    )
    depletion_g_per_l: float = Field(
        default=0.5, ge=0, description="time_to_depletion: glucose below this (g/L) is depleted."
    )
    depletion_search_h: float = Field(
        default=72.0, gt=0, le=720, description="How far time_to_depletion looks (process h)."
    )
    publish_every_h: float = Field(
        default=0.1,
        gt=0,
        description="Publish the state at least this often, the forecast at most this often"
        " (process h); the state also at each good measurement.",
    )
    stale_h: float = Field(
        default=2.0, gt=0, description="Open loop (uncertain) after this long without glucose."
    )
    gate: float = Field(
        default=6.0, gt=0, description="Reject a measurement this many sd from the twin."
    )


class TwinProcessor:
    """One twin of one bioreactor (see the module's docstring)."""

    def __init__(self, options: TwinOptions, context: PluginContext) -> None:
        self.options = options
        self.id = context.id
        self.model: TwinModel = load_twin_model(options.model)
        model = self.model
        configured = {role: getattr(options, role) for role in INPUTS}
        for role in model.inputs:
            if configured[role] is None:
                raise ValueError(
                    f"{role}: model {model.id} v{model.version} was fitted with a {role} input;"
                    " name its signal"
                )
        for role, signal in configured.items():
            if signal is not None and role not in model.inputs:
                raise ValueError(
                    f"{role}: model {model.id} v{model.version} was fitted without {role}"
                    f" (its inputs: {', '.join(model.inputs)})"
                )
        self._signals = {role: s for role, s in configured.items() if s is not None}
        self._role: dict[str, str] = {}
        self._convert: dict[str, tuple[float, float]] = {}
        self._log = log.bind(processor=context.id, model=model.id, version=model.version)
        self._reset()

    def _reset(self) -> None:
        model = self.model
        self.estimator = TwinEstimator(model.parameters, model.noise)
        self._started_h: float | None = None
        self._feed: deque[tuple[float, float]] = deque()
        self._feed_last: float | None = None
        self._base0: float | None = None
        self._base_last: float | None = None
        self._last_good_glucose_h: float | None = None
        self._last_publish_h = -math.inf
        self._last_forecast_h = -math.inf
        self.counts: dict[str, int] = {
            f"{role}_{what}": 0
            for role in ("glucose", "lactate")
            for what in ("used", "uncertain", "bad", "rejected")
        }
        self.counts["feed_total_resets"] = 0
        self.counts["base_total_resets"] = 0
        self.counts["future_stamped"] = 0

    # -- Processor ------------------------------------------------------------------------------
    def inputs(self) -> Sequence[str]:
        return list(self._signals.values())

    def channels(self) -> Sequence[Channel]:
        m = self.model
        origin = f"twin model {m.id} v{m.version} (sha256 {m.sha256[:12]})"
        out: list[Channel] = []

        def add(name: str, unit: str, text: str) -> None:
            out.append(Channel(name, unit, description=f"{text}, by {origin}"))
            out.append(Channel(f"{name}_sd", unit, description=f"{text}: one sd, by {origin}"))

        for name, unit, _, text in _STATE_CHANNELS:
            add(name, unit, f"{text} (estimated)")
        add("glucose_residual", "g/L", "Measured glucose - the twin's prior")
        add("lactate_residual", "g/L", "Measured lactate - the twin's prior")
        add("base_residual", "mL", "Measured base since start - the twin's expected base use")
        add("glucose_forecast", "g/L", f"Glucose at +{self.options.forecast_h:g} process h")
        add("time_to_depletion", "h", "Process hours until glucose depletion at the current feed")
        return out

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        for role, name in self._signals.items():
            signal = inputs[name]
            if signal.kind is not SignalKind.SCALAR:
                raise ValueError(
                    f"{role}: {signal.id} is a {signal.kind.value} signal; the twin reads a scalar"
                )
            try:
                conversion = compile_conversion(signal.unit, INPUTS[role])
            except UnitError as exc:
                raise ValueError(
                    f"{role}: {signal.id} is in {signal.unit!r}, the twin needs {INPUTS[role]!r}"
                    f" ({exc})"
                ) from None
            self._role[signal.id] = role
            self._convert[signal.id] = (conversion.scale, conversion.offset)

    def status(self) -> Mapping[str, Any]:
        est = self.estimator
        return {
            "model": {"id": self.model.id, "version": self.model.version},
            "sha256": self.model.sha256,
            "process_time_h": est.time_h,
            "started_at_h": self._started_h,
            "feed_mL_per_h": est.u.feed_mL_per_h,
            "feed_efficiency": est.x[ETA],
            "open_loop": self._open_loop_reason(est.time_h),
            "samples": dict(self.counts),
            "note": "uncertain and bad glucose/lactate samples are skipped (not used)",
        }

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        role = self._role.get(sample.signal)
        if role is None:
            return
        if sample.source_ts - sample.gateway_ts > _MAX_CLOCK_SKEW_NS:
            self.counts["future_stamped"] += 1
            if self.counts["future_stamped"] & (self.counts["future_stamped"] - 1) == 0:
                self._log.warning(
                    "twin.sample_from_the_future",
                    signal=sample.signal,
                    ahead_s=round((sample.source_ts - sample.gateway_ts) / 1e9, 3),
                    count=self.counts["future_stamped"],
                )
            return
        t = self._process_time(io, sample.source_ts)
        est = self.estimator
        if self._started_h is None:
            self._started_h = t
            if t > 1.0:
                self._log.warning("twin.started_late", process_time_h=round(t, 3))
        est.advance_to(t)
        measured = role in ("glucose", "lactate")
        if sample.quality != Quality.GOOD or sample.value is None:
            if measured:
                kind = "bad" if sample.quality == Quality.BAD else "uncertain"
                self.counts[f"{role}_{kind}"] += 1
            self._maybe_publish(io, sample.source_ts, t, force=False)
            return
        scale, offset = self._convert[sample.signal]
        value = float(sample.value) * scale + offset
        if not math.isfinite(value):
            return
        if measured:
            self._measure(io, role, value, sample.source_ts, t)
        elif role == "feed_total":
            self._feed_total(value, t)
        elif role == "base_total":
            self._base_total(value)
        elif role == "temperature":
            est.u.temperature_C = value
        elif role == "ph":
            est.u.ph = value
        else:
            est.u.do_pct = value
        self._maybe_publish(io, sample.source_ts, t, force=measured)

    # -- inputs ----------------------------------------------------------------------------------
    @staticmethod
    def _process_time(io: ProcessorIO, ts: int) -> float:
        return float(io.process_time_h(ts))

    def _measure(self, io: ProcessorIO, role: str, value: float, ts: int, t: float) -> None:
        est = self.estimator
        index = G if role == "glucose" else L
        sd = est.noise[role]
        innovation, innovation_sd, used = est.update(index, value, sd)
        residual = io.output(f"{role}_residual")
        residual_sd = io.output(f"{role}_residual_sd")
        if used:
            self.counts[f"{role}_used"] += 1
            if role == "glucose":
                self._last_good_glucose_h = t
            residual.publish(innovation, ts)
            residual_sd.publish(innovation_sd, ts)
        else:
            self.counts[f"{role}_rejected"] += 1
            why = f"rejected: {abs(innovation) / innovation_sd:.1f} sd from the twin"
            residual.publish(innovation, ts, Quality.UNCERTAIN, why)
            residual_sd.publish(innovation_sd, ts, Quality.UNCERTAIN, why)

    def _feed_total(self, total: float, t: float) -> None:
        est = self.estimator
        last = self._feed_last
        self._feed_last = total
        if last is not None:
            delta = total - last
            if delta < 0:
                # The pump's counter restarted: a new baseline, no feed booked.
                self.counts["feed_total_resets"] += 1
                self._feed.clear()
            else:
                est.u.volume_L += est.x[ETA] * delta * 1e-3
        feed = self._feed
        feed.append((t, total))
        while len(feed) > 2 and t - feed[1][0] >= _FEED_WINDOW_H:
            feed.popleft()
        t0, total0 = feed[0]
        if t - t0 > 0:
            est.u.feed_mL_per_h = max(0.0, (total - total0) / (t - t0))

    def _base_total(self, total: float) -> None:
        if self._base0 is None:
            self._base0 = total
        last = self._base_last
        if last is not None and total > last:
            self.estimator.u.volume_L += (total - last) * 1e-3
        elif last is not None and total < last:
            # The controller's counter restarted (a DCU restart): keep the base used so far.
            self.counts["base_total_resets"] += 1
            self._base0 += total - last
        self._base_last = total

    # -- outputs ---------------------------------------------------------------------------------
    def _open_loop_reason(self, t: float) -> str | None:
        last = self._last_good_glucose_h
        if last is None:
            return "open loop: no good glucose measurement yet"
        if t - last > self.options.stale_h:
            return f"open loop: no good glucose measurement for {t - last:.1f} h"
        return None

    def _maybe_publish(self, io: ProcessorIO, ts: int, t: float, *, force: bool) -> None:
        if not force and t - self._last_publish_h < self.options.publish_every_h:
            return
        self._last_publish_h = t
        est = self.estimator
        output = io.output
        reason = self._open_loop_reason(t)
        quality = Quality.GOOD if reason is None else Quality.UNCERTAIN
        for name, _, index, _ in _STATE_CHANNELS:
            _publish(
                output(name), output(f"{name}_sd"), est.x[index], est.sd(index), ts, quality, reason
            )
        if self._base0 is not None and self._base_last is not None:
            expected = est.expected_base_mL
            noise = est.noise
            sd = noise["base_floor"] + noise["base_fraction"] * expected
            measured = self._base_last - self._base0
            _publish(
                output("base_residual"),
                output("base_residual_sd"),
                measured - expected,
                sd,
                ts,
                quality,
                reason,
            )
        opts = self.options
        if t - self._last_forecast_h < opts.publish_every_h:
            return  # the forecast of a moment ago still stands: at most one per publish_every_h
        self._last_forecast_h = t
        forecast = est.forecast(opts.forecast_h, opts.depletion_g_per_l, opts.depletion_search_h)
        _publish(
            output("glucose_forecast"),
            output("glucose_forecast_sd"),
            forecast.glucose,
            forecast.glucose_sd,
            ts,
            quality,
            reason,
        )
        depletion, depletion_sd = output("time_to_depletion"), output("time_to_depletion_sd")
        if forecast.depletion_h is None:
            why = (
                f"no depletion within {opts.depletion_search_h:g} h at the current feed"
                f" ({est.u.feed_mL_per_h:.3g} mL/h)"
            )
            depletion.publish(opts.depletion_search_h, ts, Quality.UNCERTAIN, why)
            depletion_sd.publish(None, ts, Quality.UNCERTAIN, why)
        else:
            _publish(
                depletion,
                depletion_sd,
                forecast.depletion_h,
                forecast.depletion_sd,
                ts,
                quality,
                reason,
            )


def _publish(
    value_out: Output,
    sd_out: Output,
    value: float,
    sd: float,
    ts: int,
    quality: Quality,
    reason: str | None,
) -> None:
    value_out.publish(value, ts, quality, reason)
    if math.isfinite(sd):
        sd_out.publish(sd, ts, quality, reason)
    else:
        sd_out.publish(None, ts, Quality.UNCERTAIN, "uncertainty unbounded")
