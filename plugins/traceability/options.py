"""The ``rtd_trace`` processor's configuration: the line's units in order, the capture step's
signals, the deviations to trace, the signals to summarize, the pools."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import ConfigPath

__all__ = [
    "BioreactorOptions",
    "CaptureOptions",
    "ColumnOptions",
    "DeviationOptions",
    "LineUnitOptions",
    "PoolOptions",
    "TraceOptions",
]

_NAME = r"^[a-z][a-z0-9_]*$"


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BioreactorOptions(_Closed):
    """The perfusion bioreactor, a CSTR from its media inlet to its harvest."""

    volume: str = Field(min_length=1, description="Working volume signal (e.g. controller/volume).")
    perfusion: str = Field(
        min_length=1, description="Fresh medium inflow (e.g. the perfusion rate PV, L/d)."
    )
    harvest: str = Field(
        min_length=1, description="Cell-free harvest outflow to the line (e.g. Harvest.Flow, L/d)."
    )
    media_lot: str | None = Field(
        default=None, description="Lot number of the medium flowing in (e.g. controller/media_lot)."
    )


class LineUnitOptions(_Closed):
    """One unit operation between the harvest and the columns, in flow order."""

    name: str = Field(
        pattern=_NAME,
        description="The unit (e.g. surge_tank); an RTD model file's 'unit' must name it.",
    )
    kind: Literal["tis", "cstr"] = Field(
        default="tis",
        description="tis: tanks in series from an RTD model file; cstr: one mixed tank whose"
        " volume a signal gives.",
    )
    model: ConfigPath | None = Field(
        default=None, description="tis: the RTD model file ('patgw model fit rtd')."
    )
    flow: str = Field(min_length=1, description="The unit's outflow (e.g. skid/feed_flow).")
    volume: str | None = Field(default=None, description="cstr: its volume signal.")

    @model_validator(mode="after")
    def _kind_fields(self) -> LineUnitOptions:
        if self.kind == "tis" and (self.model is None or self.volume is not None):
            raise ValueError("a tis unit needs a model file and no volume signal")
        if self.kind == "cstr" and (self.volume is None or self.model is not None):
            raise ValueError("a cstr unit needs a volume signal and no model file")
        return self


class ColumnOptions(_Closed):
    """One capture column."""

    state: str = Field(
        min_length=1,
        description="Its state (1 load primary, 2 load secondary,"
        " 4 elute...), e.g. skid/column1_state.",
    )
    uv280: str | None = Field(
        default=None, description="Its outlet UV280: with the feed's, the primary's breakthrough."
    )


class CaptureOptions(_Closed):
    """The capture step: columns loaded by their states, fractions by the eluate's signals."""

    columns: Sequence[ColumnOptions] = Field(min_length=1, description="The columns, 1..n.")
    feed_uv280: str | None = Field(
        default=None,
        description="The columns' inlet UV280: weighs what is loaded (protein, not volume), and"
        " is the breakthrough's reference. None: by volume, no breakthrough.",
    )
    fraction: str = Field(min_length=1, description="Eluate fraction id (increments per elution).")
    fraction_column: str = Field(min_length=1, description="Column (1..n) of that fraction.")
    uv_floor: float = Field(
        default=1.0, ge=0, description="Feed UV280 below this: no breakthrough is computed."
    )
    nonbinding_uv_share: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Share of the feed's UV280 that does not bind (media, host-cell protein)"
        " and so always reaches a column's outlet. None: each column's lowest outlet/feed"
        " ratio since it started loading (a fresh column lets only that through), from its"
        " second step of loading on and only outlet readings above uv_floor (until its void"
        " volume has passed, a column shows the buffer it holds).",
    )


class DeviationOptions(_Closed):
    """A condition that affects material: a signal out of limits, or a flag (an alarm)."""

    name: str = Field(pattern=_NAME, description="Its name in the genealogy.")
    signal: str = Field(min_length=1, description="The signal watched.")
    kind: Literal["limits", "flag"] = Field(
        default="limits",
        description="limits: active outside low..high; flag: active while the value is above 0"
        " (an anomaly alarm publishes its severity while active, 0 otherwise).",
    )
    low: float | None = Field(
        default=None, description="limits: active below this (in the signal's unit)."
    )
    high: float | None = Field(
        default=None, description="limits: active above this (in the signal's unit)."
    )
    at: Literal["harvest", "media"] = Field(
        default="harvest",
        description="harvest: the material leaving the reactor while active; media: the medium"
        " entering it while active.",
    )
    padding_h: float = Field(
        default=0.0,
        ge=0,
        le=48,
        description="Process hours added before its start and after its end (material still in"
        " the line or the reactor then is marked too).",
    )

    @model_validator(mode="after")
    def _limits(self) -> DeviationOptions:
        if self.kind == "limits":
            if self.low is None and self.high is None:
                raise ValueError("a limits deviation needs low, high or both")
            if self.low is not None and self.high is not None and self.low >= self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        elif self.low is not None or self.high is not None:
            raise ValueError("a flag deviation takes no low/high")
        return self


class PoolOptions(_Closed):
    """Eluate fractions pooled into one product batch."""

    name: str = Field(min_length=1, max_length=64, description="The pool (batch) name.")
    fractions: tuple[int, int] = Field(description="[first, last] fraction ids, inclusive.")

    @model_validator(mode="after")
    def _ordered(self) -> PoolOptions:
        first, last = self.fractions
        if first < 1 or last < first:
            raise ValueError(f"fractions: [{first}, {last}] is no range of fraction ids (1..)")
        return self


class TraceOptions(_Closed):
    """Residence-time traceability from the media inlet to the eluate fractions."""

    bioreactor: BioreactorOptions = Field(description="The bioreactor (media -> harvest).")
    line: Sequence[LineUnitOptions] = Field(
        default=(), description="Units between the harvest and the columns, in flow order."
    )
    capture: CaptureOptions = Field(description="The capture columns and eluate signals.")
    deviations: Sequence[DeviationOptions] = Field(default=(), description="What to trace.")
    summary: Mapping[str, str] = Field(
        default_factory=dict,
        description="Signals summarized (min/mean/max) over each fraction's harvest window:"
        " name -> signal (e.g. vcd: probe/viable_cell_density).",
    )
    divert_share: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="Recommend diverting a fraction whose affected share exceeds this.",
    )
    unknown_is_affected: bool = Field(
        default=True,
        description="Material whose origin is unknown (in the line before tracing started)"
        " counts as affected: a fraction cannot be vouched for.",
    )
    bin_h: float = Field(
        default=0.05, gt=0, le=1, description="Harvest bin width and model step, process hours."
    )
    media_bin_h: float = Field(
        default=0.5, gt=0, le=24, description="Media entry window in the reactor, process hours."
    )
    min_share: float = Field(
        default=1e-4,
        gt=0,
        lt=0.1,
        description="Harvest bins below this share of a fraction are summed, not listed.",
    )
    pools: Sequence[PoolOptions] = Field(default=(), description="Fractions pooled into batches.")

    @model_validator(mode="after")
    def _consistent(self) -> TraceOptions:
        names = [u.name for u in self.line]
        if len(set(names)) != len(names):
            raise ValueError(f"line: unit names must be unique ({', '.join(names)})")
        dev = [d.name for d in self.deviations]
        if len(set(dev)) != len(dev):
            raise ValueError(f"deviations: names must be unique ({', '.join(dev)})")
        pools = sorted(self.pools, key=lambda p: p.fractions)
        for a, b in itertools.pairwise(pools):
            if b.fractions[0] <= a.fractions[1]:
                raise ValueError(
                    f"pools: {a.name} {list(a.fractions)} and {b.name} {list(b.fractions)}"
                    " overlap: a fraction belongs to one batch"
                )
        pool_names = [p.name for p in self.pools]
        if len(set(pool_names)) != len(pool_names):
            raise ValueError("pools: names must be unique")
        return self
