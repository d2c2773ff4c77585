"""The ``moving_average`` processor: the mean of a scalar signal's last ``window`` good values,
in a unit of your choice, published as the processor's ``average`` signal."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from gateway import (
    Channel,
    PluginContext,
    ProcessorIO,
    Quality,
    Sample,
    Signal,
    SignalKind,
    UnitError,
    compile_conversion,
    validate_ucum,
)


class MovingAverageOptions(BaseModel):
    """The processor's `options:` block; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: str = Field(description="The signal to average: 'instrument/signal' or a full id.")
    window: int = Field(default=5, ge=1, le=10_000, description="Values averaged.")
    unit: str = Field(description="UCUM unit of the average; the input is converted to it.")


class MovingAverage:
    """Keeps the last values in a deque: `process` is a few operations per sample."""

    def __init__(self, options: MovingAverageOptions, context: PluginContext) -> None:
        validate_ucum(options.unit)  # a bad unit is an error at `patgw check`
        self.options = options
        self._values: deque[float] = deque(maxlen=options.window)
        self._convert = compile_conversion(options.unit, options.unit)

    def inputs(self) -> Sequence[str]:
        return [self.options.input]

    def channels(self) -> Sequence[Channel]:
        text = f"mean of the last {self.options.window} values of {self.options.input}"
        return [Channel("average", self.options.unit, description=text)]

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        # Called once, before the run, with the configured input: refuse what does not suit.
        signal = inputs[self.options.input]
        if signal.kind is not SignalKind.SCALAR:
            raise ValueError(f"{signal.id} is a {signal.kind.value} signal; a scalar is needed")
        try:
            self._convert = compile_conversion(signal.unit, self.options.unit)
        except UnitError as exc:
            raise ValueError(f"{signal.id}: {exc}") from exc

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        out = io.output("average")
        if sample.quality is not Quality.GOOD or not isinstance(sample.value, int | float):
            # A derived value is never better than what it was derived from: say why.
            why = sample.reason or sample.quality.label
            out.publish(None, sample.source_ts, Quality.BAD, f"input not good: {why}")
            return
        self._values.append(self._convert(float(sample.value)))
        mean = sum(self._values) / len(self._values)
        if len(self._values) < self.options.window:
            reason = f"{len(self._values)} of {self.options.window} values so far"
            out.publish(mean, sample.source_ts, Quality.UNCERTAIN, reason)
        else:
            out.publish(mean, sample.source_ts)
