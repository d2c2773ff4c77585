"""A continuous Protein A capture skid: surge tank plus 3-column periodic counter-current (3C-PCC).

Pure state and arithmetic, no I/O and no clock: the caller decides how much process time passes
(:meth:`CaptureSkid.advance_to`) and what the bioreactor's harvest is meanwhile
(:class:`Harvest`). Everything moves in fixed process-time steps (``SkidParams.step_h``); the step
count is derived from the process time reached, never from how often the caller calls, so how a
span is split into calls does not change the result for the same harvest.

What is modelled, in the order material flows:

* **Surge tank**: a plug-flow dead volume (the inlet line) then ``tanks`` well-mixed compartments
  in series, level-controlled: the feed to the columns equals the harvest flow, the volume stays.
  Its residence-time distribution is a delay ``dead_volume / flow`` followed by ``tanks``
  first-order lags of ``tank_volume / tanks / flow`` each: what a tracer step shows.
* **3C-PCC Protein A**: the primary column takes the feed; its breakthrough (a logistic in the
  mass it has been loaded with, centred on its dynamic binding capacity) goes to the secondary,
  whose own breakthrough goes to waste (lost product). When the primary's breakthrough reaches
  ``switch_breakthrough`` of the feed's product signal (a ΔUV threshold) it leaves the train for
  wash, elution (the eluate fraction is all it has bound), regeneration and equilibration; the
  secondary, already loaded, becomes the primary, and the recovered column the secondary. If no
  column is ready at the switch, the skid keeps loading the two in the train and says it waits.
  Capacity fades by ``capacity_fade`` per completed cycle, column resistance grows by ``fouling``.

Material is tracked by ledgers that every split and mix moves together: product by harvest-time
bin (``BIN_H`` process hours: the hour it left the reactor), by media lot, and the product that
left the reactor during a deviation; plus non-binding host-cell protein and the salt that makes
the conductivity (a tracer adds it). So every eluate fraction knows where it came from
(:class:`Fraction`), and the product balance closes to rounding::

    harvested == eluted (finished fractions + the one being collected)
                 + bound on the columns + in the surge tank + lost (secondary breakthrough)
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "BIN_H",
    "CaptureSkid",
    "Column",
    "Fraction",
    "Harvest",
    "Material",
    "Phase",
    "SkidParams",
    "load_step_h",
]

#: Width of a harvest-time bin, process hours.
BIN_H = 0.05

Vector = npt.NDArray[np.float64]
#: A media lot: its number (the interface's ``media_lot``), or an id string.
Lot = int | str

#: Leading tank bins holding less than this much product in all are folded into the next bin,
#: so a well-mixed tank's ever-thinner tail costs nothing and no gram is dropped.
_PRUNE_G = 1e-12


@dataclass(frozen=True, slots=True)
class Harvest:
    """What leaves the bioreactor now: flow (process time), product, impurity, lots, deviation."""

    flow_L_per_h: float = 0.0
    titer_g_L: float = 0.0
    hcp_g_L: float = 0.0
    lot_shares: Mapping[Lot, float] = field(default_factory=dict)
    """Share of each media lot in the vessel liquid (normalised here; empty = lot 1 only)."""
    deviation: bool = False

    @classmethod
    def of(cls, state: object) -> Harvest:
        """The harvest in a bioreactor's ``ProcessState``: its perfusion fields where it has them;
        a fed-batch state (no harvest) gives flow 0, so nothing moves. Non-finite or negative
        numbers count as 0."""
        shares = getattr(state, "lot_shares", None)
        if not isinstance(shares, Mapping) or not shares:
            shares = {getattr(state, "media_lot", 1): 1.0}
        return cls(
            flow_L_per_h=_amount(getattr(state, "harvest_L_per_d", 0.0)) / 24.0,
            titer_g_L=_amount(getattr(state, "harvest_titer_g_L", 0.0)),
            hcp_g_L=_amount(getattr(state, "harvest_hcp_g_L", 0.0)),
            lot_shares={_lot(lot): _amount(share) for lot, share in shares.items()},
            deviation=bool(getattr(state, "deviation", False)),
        )


def _lot(lot: object) -> Lot:
    """A lot number as the bioreactor gives it (an int, or a lot id string); anything else by
    its text, so an unexpected type names a lot rather than stopping the skid."""
    return lot if isinstance(lot, int | str) and not isinstance(lot, bool) else str(lot)


def _amount(value: object) -> float:
    number = float(value) if isinstance(value, int | float) else 0.0
    return number if math.isfinite(number) and number > 0.0 else 0.0


class Material:
    """Amounts in one place: product by harvest-time bin (``bins[i]`` = grams of bin
    ``lo + i``), by media lot, under deviation; host-cell protein; salt (mS/cm x L)."""

    __slots__ = ("bins", "dev_g", "hcp_g", "lo", "lots", "salt")

    def __init__(self) -> None:
        self.lo = 0
        self.bins: Vector = np.zeros(0)
        self.lots: dict[Lot, float] = {}
        self.dev_g = 0.0
        self.hcp_g = 0.0
        self.salt = 0.0

    @classmethod
    def harvested(
        cls, bin_index: int, product_g: float, harvest: Harvest, hcp_g: float, salt: float
    ) -> Material:
        m = cls()
        m.lo = bin_index
        m.bins = np.array([product_g])
        shares = {lot: s for lot, s in harvest.lot_shares.items() if s > 0.0}
        total = sum(shares.values())
        m.lots = {lot: product_g * s / total for lot, s in shares.items()} if total > 0 else {}
        if not m.lots:
            m.lots = {1: product_g}
        m.dev_g = product_g if harvest.deviation else 0.0
        m.hcp_g, m.salt = hcp_g, salt
        return m

    @property
    def product_g(self) -> float:
        return float(self.bins.sum())

    def add(self, other: Material) -> None:
        """Mix ``other`` into this (``other`` is left as it is)."""
        if other.bins.size:
            if not self.bins.size:
                self.lo, self.bins = other.lo, other.bins.copy()
            else:
                lo = min(self.lo, other.lo)
                hi = max(self.lo + self.bins.size, other.lo + other.bins.size)
                if lo != self.lo or hi != self.lo + self.bins.size:
                    grown = np.zeros(hi - lo)
                    grown[self.lo - lo : self.lo - lo + self.bins.size] = self.bins
                    self.lo, self.bins = lo, grown
                start = other.lo - self.lo
                self.bins[start : start + other.bins.size] += other.bins
        for lot, g in other.lots.items():
            self.lots[lot] = self.lots.get(lot, 0.0) + g
        self.dev_g += other.dev_g
        self.hcp_g += other.hcp_g
        self.salt += other.salt

    def split(self, share: float, *, product_only: bool = False) -> Material:
        """Take ``share`` (0..1) of everything (of the product ledgers only, with
        ``product_only``) out of this and return it; what stays is the exact difference, so no
        gram appears or vanishes."""
        part = Material()
        if share <= 0.0:
            return part
        if share >= 1.0:
            part.lo, part.bins, self.bins = self.lo, self.bins, np.zeros(0)
            part.lots, self.lots = self.lots, {}
            part.dev_g, self.dev_g = self.dev_g, 0.0
            if not product_only:
                part.hcp_g, part.salt, self.hcp_g, self.salt = self.hcp_g, self.salt, 0.0, 0.0
            return part
        part.lo = self.lo
        part.bins = self.bins * share
        self.bins = self.bins - part.bins
        part.lots = {lot: g * share for lot, g in self.lots.items()}
        self.lots = {lot: g - part.lots[lot] for lot, g in self.lots.items()}
        part.dev_g = self.dev_g * share
        self.dev_g -= part.dev_g
        if not product_only:
            part.hcp_g = self.hcp_g * share
            self.hcp_g -= part.hcp_g
            part.salt = self.salt * share
            self.salt -= part.salt
        return part

    def prune(self) -> None:
        """Fold the leading bins that together hold less than ``_PRUNE_G`` into the first bin
        after them: a mixed tank's exponential tail would otherwise grow without end."""
        if self.bins.size < 2:
            return
        cut = int(np.searchsorted(np.cumsum(self.bins), _PRUNE_G, side="right"))
        cut = min(cut, self.bins.size - 1)
        if cut > 0:
            kept = self.bins[cut:].copy()
            kept[0] += float(self.bins[:cut].sum())
            self.lo += cut
            self.bins = kept

    def mean_harvest_h(self) -> float:
        """Mass-weighted mean harvest time of the product, process hours (bin centres; 0 when
        there is none)."""
        total = self.product_g
        if total <= 0.0:
            return 0.0
        centres = (np.arange(self.bins.size) + self.lo + 0.5) * BIN_H
        return float(np.dot(self.bins, centres)) / total

    def bin_masses(self) -> list[tuple[int, float]]:
        """(bin index, grams) of every bin holding product, oldest first."""
        return [(self.lo + i, float(g)) for i, g in enumerate(self.bins) if g > 0.0]


class Phase(enum.Enum):
    """Where a column is in its cycle; ``value`` is its OPC UA ``State`` code."""

    PRIMARY = 1
    SECONDARY = 2
    WASH = 3
    ELUTE = 4
    REGENERATE = 5
    EQUILIBRATE = 0
    READY = -1  # equilibrated, waiting to become secondary; State 0 (idle) on the wire

    @property
    def state(self) -> int:
        return max(self.value, 0)


@dataclass(frozen=True, slots=True)
class SkidParams:
    """Sizes, binding, schedule and signal scales of the skid. The defaults: a bench 3C-PCC of
    three 5 mL Protein A columns behind a 100 mL surge tank, sized for the harvest of a 2 L
    perfusion reactor (2-3 L/d at 0.3-1 g/L: a column is primary for about 2-6 process hours)."""

    tank_mL: float = 100.0
    """Volume of the well-mixed part of the surge tank, mL (held by the level control)."""
    tanks: int = 3
    """Well-mixed compartments in series the tank's mixing is modelled by (1 = one ideal mixer)."""
    dead_volume_mL: float = 10.0
    """Plug-flow volume before the tank (inlet line, filter housing), mL; 0 = none."""
    column_mL: float = 5.0
    """Packed volume of each column, mL."""
    dbc_g_L: float = 40.0
    """Dynamic binding capacity of fresh resin, g product per L resin: the loaded mass at which
    the breakthrough reaches 50 %."""
    breakthrough_width: float = 0.1
    """Width of the logistic breakthrough curve, in units of the capacity (sharper when smaller)."""
    switch_breakthrough: float = 0.6
    """The primary leaves the train when its breakthrough reaches this share of the feed's
    product signal (the ΔUV threshold, 0-1)."""
    capacity_fade: float = 0.001
    """Share of the capacity lost per completed cycle (0.001 = 0.1 %/cycle)."""
    wash_h: float = 0.3
    """Wash after loading, process hours."""
    elute_h: float = 0.3
    """Elution (the eluate fraction is collected over it), process hours."""
    regenerate_h: float = 0.3
    """Regeneration (cleaning in place), process hours."""
    equilibrate_h: float = 0.4
    """Equilibration before the column can take breakthrough again, process hours."""
    buffer_flow_mL_min: float = 2.0
    """Flow through a column in wash, elution, regeneration and equilibration, mL/min."""
    resistance_bar_per_mL_min: float = 0.3
    """Pressure drop of a fresh column per mL/min of flow, bar."""
    fouling: float = 0.005
    """Growth of the column's resistance per completed cycle (0.005 = 0.5 %/cycle)."""
    harvest_conductivity_mS_cm: float = 14.0
    """Conductivity of the harvest (culture medium), mS/cm."""
    buffer_conductivity_mS_cm: float = 15.0
    """Conductivity of the equilibration buffer (the tank's initial content), mS/cm."""
    elution_conductivity_mS_cm: float = 1.5
    """Conductivity of the eluate (low-salt acidic buffer), mS/cm."""
    elution_ph: float = 3.5
    """pH of the eluate during elution."""
    buffer_ph: float = 7.4
    """pH at the eluate sensor outside elution (equilibration buffer)."""
    uv_product_mAU_per_g_L: float = 280.0
    """UV280 of 1 g/L product in the flow cells, mAU (antibody 1.4 AU·L/g/cm, 2 mm path)."""
    uv_hcp_mAU_per_g_L: float = 200.0
    """UV280 of 1 g/L host-cell protein, mAU."""
    uv_media_mAU: float = 60.0
    """UV280 of the other non-binding harvest components (media, metabolites), mAU."""
    step_h: float = 0.01
    """Fixed step, process hours (0.01 h = 36 process seconds)."""

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SkidParams.{name} = {value!r}: need a finite number ≥ 0")
        for name in ("tank_mL", "column_mL", "dbc_g_L", "breakthrough_width", "step_h"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SkidParams.{name} must be > 0")
        if self.tanks < 1:
            raise ValueError("SkidParams.tanks must be ≥ 1")
        if not 0.0 < self.switch_breakthrough < 1.0:
            raise ValueError("SkidParams.switch_breakthrough must be between 0 and 1")
        if self.capacity_fade >= 1.0:
            raise ValueError("SkidParams.capacity_fade must be < 1")

    @property
    def recovery_h(self) -> float:
        """Process hours a column needs from leaving the train to being ready again."""
        return self.wash_h + self.elute_h + self.regenerate_h + self.equilibrate_h

    def steps(self, hours: float) -> int:
        """A duration as a whole number of steps (at least one)."""
        return max(1, round(hours / self.step_h))


def breakthrough(loaded_g: float, capacity_g: float, width: float) -> float:
    """Share of the product reaching the outlet of a column loaded with ``loaded_g`` grams."""
    x = (loaded_g / capacity_g - 1.0) / width
    if x > 50.0:
        return 1.0
    return math.exp(x) / (1.0 + math.exp(x)) if x < 0 else 1.0 / (1.0 + math.exp(-x))


def load_step_h(params: SkidParams, flow_L_per_d: float, titer_g_L: float) -> float:
    """Process hours a column spends as primary in steady state at this harvest, fresh resin.

    In steady state each column leaves the train having been loaded (as secondary, then as
    primary) up to the switching breakthrough; what it holds then is the feed of one load step.
    The logistic integrates in closed form: bound = loaded - capacity·width·[ln(1+e^x)]."""
    capacity = params.dbc_g_L * params.column_mL / 1000.0
    w = params.breakthrough_width
    th = params.switch_breakthrough
    loaded = capacity * (1.0 + w * math.log(th / (1.0 - th)))
    passed = (
        capacity
        * w
        * (math.log1p(math.exp((loaded / capacity - 1.0) / w)) - math.log1p(math.exp(-1.0 / w)))
    )
    feed_g_per_h = flow_L_per_d / 24.0 * titer_g_L
    return math.inf if feed_g_per_h <= 0 else (loaded - passed) / feed_g_per_h


@dataclass(slots=True)
class Column:
    """One Protein A column: its phase, what it holds and how worn it is."""

    number: int
    phase: Phase
    bound: Material = field(default_factory=Material)
    loaded_g: float = 0.0
    """Product loaded since its last elution (bound plus what broke through)."""
    cycles: int = 0
    """Completed bind-elute-regenerate cycles."""
    steps_left: int = 0
    """Steps until the current recovery phase ends."""
    outlet_product_g_L: float = 0.0
    outlet_hcp_g_L: float = 0.0
    outlet_media: bool = False
    """The outlet carries harvest (the non-binding media UV), not buffer."""


@dataclass(frozen=True, slots=True)
class Fraction:
    """One finished eluate fraction: one column's elution, everything it had bound."""

    number: int
    column: int
    start_h: float
    end_h: float
    material: Material

    def truth(self) -> dict[str, object]:
        """The truth-file record (interface C of issue 15)."""
        m = self.material
        return {
            "fraction": self.number,
            "column": self.column,
            "start_h": round(self.start_h, 6),
            "end_h": round(self.end_h, 6),
            "mass_g": m.product_g,
            "bins": [
                [round(b * BIN_H, 6), round((b + 1) * BIN_H, 6), g] for b, g in m.bin_masses()
            ],
            "lots": {str(lot): g for lot, g in sorted(m.lots.items(), key=lambda kv: str(kv[0]))},
            "deviation_mass_g": m.dev_g,
        }


class CaptureSkid:
    """The surge tank and the three columns, advanced in fixed steps from ``start_h`` (process
    hours). ``on_fraction`` is called with each eluate fraction as its elution ends."""

    def __init__(
        self,
        params: SkidParams | None = None,
        start_h: float = 0.0,
        on_fraction: Callable[[Fraction], None] | None = None,
    ) -> None:
        p = self.params = params if params is not None else SkidParams()
        self.start_h = start_h
        self.on_fraction = on_fraction
        self.steps_done = 0
        self.tracer_mS_cm = 0.0
        self._tank_L = [p.tank_mL / 1000.0 / p.tanks] * p.tanks
        self._pipe: deque[tuple[float, Material]] = deque()
        buffer_salt = p.buffer_conductivity_mS_cm
        if p.dead_volume_mL > 0:
            pipe = Material()
            pipe.salt = buffer_salt * p.dead_volume_mL / 1000.0
            self._pipe.append((p.dead_volume_mL / 1000.0, pipe))
        self.tank: list[Material] = []
        for volume in self._tank_L:
            m = Material()
            m.salt = buffer_salt * volume
            self.tank.append(m)
        self.columns = [
            Column(1, Phase.PRIMARY),
            Column(2, Phase.SECONDARY),
            Column(3, Phase.READY),
        ]
        self.waiting = False
        self.fraction = 0
        self.eluate_column = 0
        self.eluate = Material()
        self._eluate_start_h = 0.0
        self._eluate_step_g = 0.0
        self.harvested_g = 0.0
        self.waste = Material()
        """Product lost to waste (the secondary's breakthrough), with its ledgers."""
        self.eluted_g = 0.0
        self.flow_L_per_h = 0.0
        self.harvest_conductivity = p.harvest_conductivity_mS_cm
        self.load_started_h = start_h
        self.last_load_step_h = 0.0
        self.fractions_done = 0

    # ------------------------------------------------------------------ time

    @property
    def time_h(self) -> float:
        """Process hours reached (a whole number of steps after ``start_h``)."""
        return self.start_h + self.steps_done * self.params.step_h

    def advance_to(self, time_h: float, harvest: Harvest) -> None:
        """Step up to process hour ``time_h`` with ``harvest`` flowing meanwhile (an earlier
        time does nothing)."""
        target = math.floor((time_h - self.start_h) / self.params.step_h + 1e-9)
        while self.steps_done < target:
            self.step(harvest)

    def step(self, harvest: Harvest) -> None:
        """One fixed step of process time."""
        p = self.params
        dt = p.step_h
        t = self.time_h
        q = max(0.0, harvest.flow_L_per_h) if math.isfinite(harvest.flow_L_per_h) else 0.0
        self.flow_L_per_h = q
        self.harvest_conductivity = p.harvest_conductivity_mS_cm + self.tracer_mS_cm
        volume = q * dt
        # Columns outside the train first: one that becomes ready in this step can take the
        # breakthrough in it, and one that leaves the train at its end starts washing next.
        self._recover(t + dt)
        if volume > 0.0:
            product = max(0.0, harvest.titer_g_L) * volume
            inlet = Material.harvested(
                math.floor(t / BIN_H + 1e-9),
                product,
                harvest,
                max(0.0, harvest.hcp_g_L) * volume,
                self.harvest_conductivity * volume,
            )
            self.harvested_g += product
            feed = self._through_tank(inlet, volume)
            self._load(feed, volume)
        self.steps_done += 1
        if self.steps_done % p.steps(BIN_H) == 0:
            for m in self.tank:
                m.prune()

    def _through_tank(self, inlet: Material, volume: float) -> Material:
        out = inlet
        if self._pipe:
            self._pipe.append((volume, inlet))
            out = Material()
            need = volume
            while need > 0.0 and self._pipe:
                slug_volume, slug = self._pipe[0]
                if slug_volume <= need * (1.0 + 1e-12):
                    self._pipe.popleft()
                    out.add(slug)
                    need -= slug_volume
                else:
                    out.add(slug.split(need / slug_volume))
                    self._pipe[0] = (slug_volume - need, slug)
                    need = 0.0
        for tank_L, content in zip(self._tank_L, self.tank, strict=True):
            content.add(out)
            out = content.split(volume / (tank_L + volume))
        return out

    # ------------------------------------------------------------------ columns

    def capacity_g(self, column: Column) -> float:
        p = self.params
        return p.dbc_g_L * p.column_mL / 1000.0 * (1.0 - p.capacity_fade) ** column.cycles

    def _in(self, phase: Phase) -> Column:
        return next(c for c in self.columns if c.phase is phase)

    def _load(self, feed: Material, volume: float) -> None:
        """The feed through the primary then the secondary; what passes both is lost."""
        c_hcp = feed.hcp_g / volume
        stream = feed
        c_product = feed.product_g / volume
        for column in (self._in(Phase.PRIMARY), self._in(Phase.SECONDARY)):
            grams = stream.product_g
            b = breakthrough(
                column.loaded_g + grams / 2.0,
                self.capacity_g(column),
                self.params.breakthrough_width,
            )
            column.loaded_g += grams
            column.bound.add(stream.split(1.0 - b, product_only=True))
            c_product *= b
            column.outlet_product_g_L, column.outlet_hcp_g_L = c_product, c_hcp
            column.outlet_media = True
        stream.hcp_g = stream.salt = 0.0  # only the product's whereabouts are kept
        self.waste.add(stream)
        primary = self._in(Phase.PRIMARY)
        if breakthrough(
            primary.loaded_g, self.capacity_g(primary), self.params.breakthrough_width
        ) >= (self.params.switch_breakthrough):
            self._switch()

    def _switch(self) -> None:
        ready = [c for c in self.columns if c.phase is Phase.READY]
        self.waiting = not ready
        if not ready:
            return
        t = self.time_h + self.params.step_h
        primary, secondary = self._in(Phase.PRIMARY), self._in(Phase.SECONDARY)
        self.last_load_step_h = t - self.load_started_h
        self.load_started_h = t
        primary.phase, primary.steps_left = Phase.WASH, self.params.steps(self.params.wash_h)
        primary.outlet_product_g_L = primary.outlet_hcp_g_L = 0.0
        primary.outlet_media = False
        secondary.phase = Phase.PRIMARY
        ready[0].phase = Phase.SECONDARY

    def _recover(self, end_h: float) -> None:
        """Advance the columns outside the train through wash, elution, regeneration and
        equilibration by one step ending at ``end_h``."""
        p = self.params
        self._eluate_step_g = 0.0
        for column in self.columns:
            if column.phase in (Phase.PRIMARY, Phase.SECONDARY, Phase.READY):
                continue
            if column.phase is Phase.ELUTE:
                self._elute(column, end_h)
            column.steps_left -= 1
            if column.steps_left > 0:
                continue
            if column.phase is Phase.WASH:
                column.phase, column.steps_left = Phase.ELUTE, p.steps(p.elute_h)
                self.fraction += 1
                self.eluate_column = column.number
                self.eluate = Material()
                self._eluate_start_h = end_h
            elif column.phase is Phase.ELUTE:
                column.phase, column.steps_left = Phase.REGENERATE, p.steps(p.regenerate_h)
                column.loaded_g = 0.0
                self._finish_fraction(column, end_h)
            elif column.phase is Phase.REGENERATE:
                column.phase, column.steps_left = Phase.EQUILIBRATE, p.steps(p.equilibrate_h)
                column.cycles += 1
            elif column.phase is Phase.EQUILIBRATE:
                column.phase = Phase.READY

    def _elute(self, column: Column, end_h: float) -> None:
        """Move this step's share of the elution peak (a sin² profile over ``elute_h``) into
        the eluate; the last step takes whatever is left, exactly."""
        n = self.params.steps(self.params.elute_h)
        k = n - column.steps_left + 1  # 1..n
        done_before = _peak_share((k - 1) / n)
        share = 1.0 if k >= n else (_peak_share(k / n) - done_before) / (1.0 - done_before)
        moved = column.bound.split(share, product_only=True)
        self._eluate_step_g = moved.product_g
        self.eluted_g += self._eluate_step_g
        self.eluate.add(moved)

    def _finish_fraction(self, column: Column, end_h: float) -> None:
        self.eluate.prune()  # the tank's ever-thinner tail, folded (not dropped)
        fraction = Fraction(self.fraction, column.number, self._eluate_start_h, end_h, self.eluate)
        self.fractions_done = self.fraction
        if self.on_fraction is not None:
            self.on_fraction(fraction)

    # ------------------------------------------------------------------ what is seen

    @property
    def collecting(self) -> bool:
        return any(c.phase is Phase.ELUTE for c in self.columns)

    @property
    def lost_g(self) -> float:
        return self.waste.product_g

    def in_tank(self) -> Material:
        """Everything in the surge tank (inlet line and compartments), mixed together."""
        total = Material()
        for _, slug in self._pipe:
            total.add(slug)
        for m in self.tank:
            total.add(m)
        return total

    def in_tank_g(self) -> float:
        return sum(m.product_g for m in self.tank) + sum(s.product_g for _, s in self._pipe)

    def bound_g(self) -> float:
        return sum(c.bound.product_g for c in self.columns)

    def feed_concentrations(self) -> tuple[float, float, float]:
        """(product g/L, HCP g/L, conductivity mS/cm) at the tank outlet = column inlet."""
        m, volume = self.tank[-1], self._tank_L[-1]
        return m.product_g / volume, m.hcp_g / volume, m.salt / volume

    def tank_volume_mL(self) -> float:
        return self.params.tank_mL + self.params.dead_volume_mL

    def column_uv(self, column: Column) -> float:
        p = self.params
        if column.phase is Phase.ELUTE:
            return self.eluate_uv()
        if not column.outlet_media:
            return 0.0
        return (
            p.uv_media_mAU
            + p.uv_product_mAU_per_g_L * column.outlet_product_g_L
            + p.uv_hcp_mAU_per_g_L * column.outlet_hcp_g_L
        )

    def column_flow_mL_min(self, column: Column) -> float:
        if column.phase in (Phase.PRIMARY, Phase.SECONDARY):
            return self.flow_L_per_h * 1000.0 / 60.0
        if column.phase is Phase.READY:
            return 0.0
        return self.params.buffer_flow_mL_min

    def column_pressure_bar(self, column: Column) -> float:
        p = self.params
        resistance = p.resistance_bar_per_mL_min * (1.0 + p.fouling * column.cycles)
        return resistance * self.column_flow_mL_min(column)

    def eluate_uv(self) -> float:
        if not self.collecting:
            return 0.0
        volume = self.params.buffer_flow_mL_min * 60.0 / 1000.0 * self.params.step_h
        return self.params.uv_product_mAU_per_g_L * self._eluate_step_g / volume

    def signals(self) -> dict[str, float]:
        """Every value the skid shows, by node path below ``CaptureSkid`` (interface C)."""
        p = self.params
        product, hcp, conductivity = self.feed_concentrations()
        collecting = self.collecting
        values: dict[str, float] = {
            "Harvest.Conductivity": self.harvest_conductivity,
            "SurgeTank.Volume": self.tank_volume_mL(),
            "Feed.Flow": self.flow_L_per_h * 1000.0 / 60.0,
            "Feed.Conductivity": conductivity,
            "Feed.UV280": p.uv_media_mAU
            + p.uv_product_mAU_per_g_L * product
            + p.uv_hcp_mAU_per_g_L * hcp,
            "Eluate.Fraction": self.fraction,
            "Eluate.Column": self.eluate_column,
            "Eluate.Collecting": 1 if collecting else 0,
            "Eluate.UV280": self.eluate_uv(),
            "Eluate.pH": p.elution_ph if collecting else p.buffer_ph,
            "Eluate.Conductivity": (
                p.elution_conductivity_mS_cm if collecting else p.buffer_conductivity_mS_cm
            ),
            "Skid.Waiting": 1 if self.waiting else 0,
            "Skid.PrimaryColumn": self._in(Phase.PRIMARY).number,
            "Skid.LastLoadStep": self.last_load_step_h,
            "Emulation.ProductHarvested": self.harvested_g,
            "Emulation.ProductInTank": self.in_tank_g(),
            "Emulation.ProductBound": self.bound_g(),
            "Emulation.ProductEluted": self.eluted_g,
            "Emulation.ProductLost": self.lost_g,
            "Emulation.FeedTiter": product,
            "Emulation.Fraction.Mass": self.eluate.product_g,
            "Emulation.Fraction.DeviationMass": self.eluate.dev_g,
            "Emulation.Fraction.MeanHarvestTime": self.eluate.mean_harvest_h(),
        }
        for c in self.columns:
            values[f"Column{c.number}.UV280"] = self.column_uv(c)
            values[f"Column{c.number}.Pressure"] = self.column_pressure_bar(c)
            values[f"Column{c.number}.State"] = c.phase.state
            values[f"Column{c.number}.Cycle"] = c.cycles
            values[f"Emulation.Column{c.number}.Capacity"] = self.capacity_g(c)
        return values


def _peak_share(x: float) -> float:
    """Share of a sin² elution peak over [0, 1] that has come out by ``x``."""
    return x - math.sin(2.0 * math.pi * x) / (2.0 * math.pi)
