"""The ``pls`` processor: a PLS model turns each spectrum into concentrations, live.

For every target of the model (e.g. glucose and lactate) it publishes three signals::

    <target>      the prediction, in the target's unit (e.g. g/L)
    <target>_t2   Hotelling's T² of the spectrum in that target's model (distance within it)
    <target>_q    the Q residual (squared distance from it: what the model cannot explain)

and, when the model normalises its spectra (a ``normalize`` step: an internal-standard band
such as water's near 1640 cm-1), one more::

    reference_intensity   the spectrum's mean in that window after the steps before
                          normalisation (baseline-corrected counts, in the spectrum's unit)

Normalisation cancels a change of laser power, so predictions and Q barely move when the laser
weakens; the reference band's own intensity, constant through a run at constant power, shows
it (the ``anomaly`` processor's ``relative`` check watches it against the run's start). Raw
counts in the window would not: there the fluorescence background, which grows with the cells,
outweighs the band.

Each carries the spectrum's ``source_ts``: a prediction is *of* the moment the spectrum was
taken. Quality:

* the spectrum is bad (or no spectrum) → every output is ``bad``, with the spectrum's reason;
* the spectrum's axis is not the model's (another instrument, a recalibration) → ``bad``; the
  model is never applied to a spectrum it was not made for;
* T² or Q above the model's limits, a prediction outside the calibrated range (by more than
  ``range_margin`` of its span), or an ``uncertain`` spectrum → the prediction is ``uncertain``,
  the reason says which and by how much. T² and Q are valid measurements of the spectrum:
  ``good``, or ``uncertain`` with the spectrum's reason when the spectrum is.

Which model made a value is recorded in the signals' descriptions (model id, version and content
hash): the store keeps one definition per description, so every stored prediction refers to the
model that produced it, and changing the model starts a new definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
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
    Spectrum,
)

from .model import PlsModel, load_model

__all__ = ["REFERENCE_CHANNEL", "PlsOptions", "PlsProcessor"]

log = structlog.get_logger(__name__)

#: The channel of the reference band's intensity (models with a ``normalize`` step).
REFERENCE_CHANNEL = "reference_intensity"
#: Axis verdicts kept (an axis is judged, and a mismatch logged, once per key while kept).
_AXES_REMEMBERED = 64


class PlsOptions(BaseModel):
    """Which model, applied to which spectrum signal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ConfigPath = Field(
        description="The model file (written by 'patgw model fit'); a relative path is"
        " relative to the config file's folder."
    )
    spectrum: str = Field(
        description="The spectrum signal to apply it to: 'instrument/signal' within the"
        " configuration's area, or a full signal id.",
        min_length=1,
    )
    range_margin: float | None = Field(
        default=0.1,
        ge=0,
        description="A prediction further outside the calibrated range than this fraction of"
        " its span is 'uncertain' (extrapolation); null: no range check.",
    )


class PlsProcessor:
    """Applies one model file to one spectrum signal (see the module's docstring)."""

    def __init__(self, options: PlsOptions, context: PluginContext) -> None:
        self.options = options
        self.id = context.id
        self.model: PlsModel = load_model(options.model)
        model = self.model
        self._limits = [(t.t2_limit, t.q_limit) for t in model.targets]
        self._ranges = [_range(t.calibration_range, options.range_margin) for t in model.targets]
        self._confidence = f"{model.confidence * 100:g} %"
        # Axis verdicts by key: a mismatch is computed and logged once per axis.
        self._axis_problem: dict[str, str | None] = {model.axis.key: None}
        # Per target: its value, T² and Q channels (named once, not per spectrum).
        self._channel_names = [(t.name, f"{t.name}_t2", f"{t.name}_q") for t in model.targets]
        self._reference_window = model.reference_window
        self._log = log.bind(processor=context.id, model=model.id, version=model.version)
        self._input = options.spectrum  # its full signal id once bound
        self._bands = [
            {"use": use, "low": low, "high": high, "unit": model.axis.unit}
            for use, low, high in model.bands()
        ]

    # -- Processor ------------------------------------------------------------------------------
    def inputs(self) -> Sequence[str]:
        return [self.options.spectrum]

    def channels(self) -> Sequence[Channel]:
        model = self.model
        origin = f"PLS model {model.id} v{model.version} (sha256 {model.sha256[:12]})"
        out = []
        for t in model.targets:
            out += [
                Channel(t.name, t.unit, description=f"{t.name} by {origin}, {t.components} LV"),
                Channel(
                    f"{t.name}_t2",
                    "1",
                    description=f"Hotelling T² of the spectrum in {origin}'s {t.name} model"
                    f" (limit {t.t2_limit:.6g} at {self._confidence})",
                ),
                Channel(
                    f"{t.name}_q",
                    "1",
                    description=f"Q residual of the spectrum in {origin}'s {t.name} model"
                    f" (limit {t.q_limit:.6g} at {self._confidence}; preprocessed units²)",
                ),
            ]
        if self._reference_window is not None:
            low, high = self._reference_window
            out.append(
                Channel(
                    REFERENCE_CHANNEL,
                    model.spectrum_unit,
                    description=f"Mean intensity of the spectrum in {origin}'s normalisation"
                    f" window {low:g}-{high:g} {model.axis.unit}, baseline-corrected, before"
                    " normalisation (falls with the laser power)",
                )
            )
        return out

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        signal = inputs[self.options.spectrum]
        self._input = signal.id
        if signal.kind is not SignalKind.SPECTRUM:
            raise ValueError(
                f"spectrum: {signal.id} is a {signal.kind.value} signal; a PLS model reads spectra"
            )
        if signal.unit != self.model.spectrum_unit:
            raise ValueError(
                f"spectrum: {signal.id} is in {signal.unit!r}, model {self.model.id} was fitted on"
                f" spectra in {self.model.spectrum_unit!r}"
            )

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        outputs = self._outputs_of(io)
        ts = sample.source_ts
        spectrum = sample.value
        if sample.quality == Quality.BAD or spectrum is None:
            self._all_bad(outputs, io, ts, f"spectrum bad: {sample.reason or 'no value'}")
            return
        if not isinstance(spectrum, Spectrum):
            self._all_bad(outputs, io, ts, f"not a spectrum: {type(spectrum).__name__}")
            return
        problem = self._axis_check(spectrum)
        if problem is not None:
            self._all_bad(outputs, io, ts, problem)
            return
        prediction = self.model.predict(spectrum.values[np.newaxis, :])
        values = prediction.values[0].tolist()
        t2s = prediction.t2[0].tolist()
        qs = prediction.q[0].tolist()
        uncertain = sample.quality == Quality.UNCERTAIN
        stat_quality = Quality.UNCERTAIN if uncertain else Quality.GOOD
        stat_reason = f"spectrum uncertain: {sample.reason}" if uncertain else None
        for k, (value_out, t2_out, q_out) in enumerate(outputs):
            value, t2, q = values[k], t2s[k], qs[k]
            reasons = [stat_reason] if stat_reason else []
            t2_limit, q_limit = self._limits[k]
            if t2 > t2_limit:
                reasons.append(f"T² {t2:.4g} above its {self._confidence} limit {t2_limit:.4g}")
            if q > q_limit:
                reasons.append(f"Q {q:.4g} above its {self._confidence} limit {q_limit:.4g}")
            low, high = self._ranges[k]
            if not low <= value <= high:
                target = self.model.targets[k]
                lo, hi = target.calibration_range
                places = _decimals(hi - lo)
                reasons.append(
                    f"{value:.{places}f} {target.unit} outside the calibrated range"
                    f" {lo:.{places}f}..{hi:.{places}f} {target.unit}"
                )
            if reasons:
                value_out.publish(value, ts, Quality.UNCERTAIN, "; ".join(reasons))
            else:
                value_out.publish(value, ts)
            t2_out.publish(t2, ts, stat_quality, stat_reason)
            q_out.publish(q, ts, stat_quality, stat_reason)
        if prediction.reference is not None:
            reference = float(prediction.reference[0])
            io.output(REFERENCE_CHANNEL).publish(reference, ts, stat_quality, stat_reason)

    # -- optional members of the processor contract -------------------------------------------
    def status(self) -> Mapping[str, Any]:
        """What the local API and the console show: the spectrum signal it reads, its model,
        the bands of the axis the model uses (:meth:`PlsModel.bands`), and each output
        channel's limit (T² and Q at the model's confidence)."""
        model = self.model
        limits: dict[str, float] = {}
        for (_value, t2, q), target in zip(self._channel_names, model.targets, strict=True):
            limits[t2], limits[q] = target.t2_limit, target.q_limit
        return {
            "input": self._input,
            "model": {"id": model.id, "version": model.version, "sha256": model.sha256},
            "confidence": model.confidence,
            "bands": [dict(band) for band in self._bands],
            "limits": limits,
            "targets": {
                t.name: {"unit": t.unit, "calibration_range": list(t.calibration_range)}
                for t in model.targets
            },
        }

    # -- helpers ---------------------------------------------------------------------------------
    def _all_bad(
        self, outputs: list[tuple[Output, Output, Output]], io: ProcessorIO, ts: int, reason: str
    ) -> None:
        for triple in outputs:
            for output in triple:
                output.publish(None, ts, Quality.BAD, reason)
        if self._reference_window is not None:
            io.output(REFERENCE_CHANNEL).publish(None, ts, Quality.BAD, reason)

    def _outputs_of(self, io: ProcessorIO) -> list[tuple[Output, Output, Output]]:
        output = io.output
        return [(output(v), output(t2), output(q)) for v, t2, q in self._channel_names]

    def _axis_check(self, spectrum: Spectrum) -> str | None:
        key = spectrum.axis.key
        try:
            return self._axis_problem[key]
        except KeyError:
            pass
        problem = self.model.axis_mismatch(spectrum.axis)
        if problem is not None:
            problem = f"model {self.model.id} refuses this spectrum: {problem}"
            self._log.error("softsensor.axis_mismatch", axis=key, problem=problem)
        if len(self._axis_problem) >= _AXES_REMEMBERED:
            # An instrument whose axis changes with every spectrum must not grow this forever.
            self._axis_problem = {self.model.axis.key: None}
        self._axis_problem[key] = problem
        return problem


def _decimals(span: float) -> int:
    """Decimal places that show a value to about 1/1000 of ``span`` (3 for 0..8 g/L)."""
    if not span > 0:
        return 3
    return max(0, 3 - math.floor(math.log10(span)))


def _range(calibrated: tuple[float, float], margin: float | None) -> tuple[float, float]:
    if margin is None:
        return -np.inf, np.inf
    low, high = calibrated
    slack = margin * (high - low)
    return low - slack, high + slack
