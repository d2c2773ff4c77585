"""Where material is: pure, allocation-light models of the line, moved step by step.

Material is labelled by *harvest bin*: the window of process time in which it left the
bioreactor (an integer index; :data:`UNKNOWN` for what was in the line before tracing started).
An amount is a ``dict`` bin -> quantity (mL in transport; mL x concentration once weighted at
the columns' inlet). Every model conserves what it is given: what goes in is, at any time,
inside, gone out, or counted as ``pruned`` (traces below a relative threshold, dropped to bound
memory).

- :class:`Reactor`: the perfusion bioreactor as a CSTR from the media inlet to the harvest,
  tracked over *media entries* (when a medium entered, its lot, the deviations active at the
  media inlet then), to give each harvest bin its lot and deviation shares.
- :class:`Tanks`: a dead volume (plug flow) then ``N`` mixed tanks, moved by the volume that
  flowed (an RTD model, or one tank whose volume a signal gives).
- :class:`Capture`: the columns of a periodic counter-current capture step, loaded by their
  states; what breaks through the primary goes to the secondary, or is lost.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "UNKNOWN",
    "Amounts",
    "Capture",
    "HarvestBin",
    "MediaEntry",
    "Reactor",
    "Tanks",
    "add_into",
]

#: The label of material that was in the line before tracing started.
UNKNOWN = -1
#: Column states (the capture skid's ``ColumnN.State``).
LOAD_PRIMARY = 1
LOAD_SECONDARY = 2

Amounts = dict[int, float]

#: The largest share of a tank one sub-step moves: smaller is closer to the continuous model.
_MAX_SHARE_PER_SUBSTEP = 0.05
_MAX_SUBSTEPS = 400


def add_into(target: Amounts, source: Amounts, factor: float = 1.0) -> None:
    """``target += factor * source``, label by label."""
    get = target.get
    for label, amount in source.items():
        target[label] = get(label, 0.0) + amount * factor


@dataclass(slots=True)
class HarvestBin:
    """What left the bioreactor in one window of process time, and what is known of it."""

    index: int
    start_h: float
    end_h: float
    volume_mL: float = 0.0
    lots: dict[str, float] = field(default_factory=dict)
    """Media lot -> share of this material (``"unknown"`` for what predates tracing)."""
    media: dict[str, float] = field(default_factory=dict)
    """Deviation at the media inlet -> share of this material that entered during it."""
    media_any: float = 0.0
    """Share that entered during any media deviation."""
    flags: set[str] = field(default_factory=set)
    """Deviations active at the harvest while it left (with their padding)."""
    stats: dict[str, list[float]] = field(default_factory=dict)
    """Summary signal -> [min, max, sum, count] of the samples seen in its window."""


@dataclass(slots=True)
class MediaEntry:
    """Medium that entered the bioreactor in one window: its lot and deviations."""

    start_h: float
    end_h: float
    lot: str
    flags: frozenset[str]
    share: float


class Reactor:
    """The bioreactor's content by media entry, as a CSTR in volume coordinates: each step,
    the medium that flowed in replaces the same share of everything, ``1 - exp(-in / V)``
    (at constant volume, whatever leaves — harvest, bleed — leaves at the content's mix)."""

    def __init__(self, entry_h: float, prune: float = 1e-6) -> None:
        self.entry_h = entry_h
        self.prune = prune
        self.entries: deque[MediaEntry] = deque()
        # Entries too small to matter, merged by (lot, deviations): memory stays bounded.
        self.tail: dict[tuple[str, frozenset[str]], float] = {("unknown", frozenset()): 1.0}

    def step(
        self,
        start_h: float,
        end_h: float,
        inflow_mL: float,
        volume_mL: float,
        lot: str,
        flags: frozenset[str],
    ) -> None:
        """Medium ``inflow_mL`` of ``lot`` entered between ``start_h`` and ``end_h``."""
        if inflow_mL <= 0 or volume_mL <= 0:
            return
        keep = math.exp(-inflow_mL / volume_mL)
        entries = self.entries
        for entry in entries:
            entry.share *= keep
        tail = self.tail
        for key in tail:
            tail[key] *= keep
        last = entries[-1] if entries else None
        if (
            last is not None
            and last.lot == lot
            and last.flags == flags
            and end_h - last.start_h <= self.entry_h + 1e-9
        ):
            last.share += 1.0 - keep
            last.end_h = end_h
        else:
            entries.append(MediaEntry(start_h, end_h, lot, flags, 1.0 - keep))
        while entries and entries[0].share < self.prune:
            old = entries.popleft()
            key = (old.lot, old.flags)
            tail[key] = tail.get(key, 0.0) + old.share

    def flag_since(self, name: str, since_h: float) -> None:
        """Mark medium that entered after ``since_h`` as entered during deviation ``name``."""
        for entry in reversed(self.entries):
            if entry.end_h <= since_h:
                break
            entry.flags = entry.flags | {name}

    def composition(self, into: HarvestBin) -> None:
        """Set the lot and media-deviation shares of material leaving now."""
        lots: dict[str, float] = {}
        media: dict[str, float] = {}
        flagged = 0.0
        total = 0.0
        parts = [(e.lot, e.flags, e.share) for e in self.entries]
        parts += [(lot, flags, share) for (lot, flags), share in self.tail.items()]
        for lot, flags, share in parts:
            total += share
            lots[lot] = lots.get(lot, 0.0) + share
            if flags:
                flagged += share
                for name in flags:
                    media[name] = media.get(name, 0.0) + share
        if total <= 0:
            return
        into.lots = {k: v / total for k, v in lots.items()}
        into.media = {k: v / total for k, v in media.items()}
        into.media_any = flagged / total


class Tanks:
    """A dead volume (plug flow) followed by ``n`` mixed tanks, moved by the volume that flowed
    out. With ``volume_mL`` given at each step (a CSTR whose level a signal gives), the one
    tank's outflow share is ``outflow / volume``; otherwise each tank's is ``outflow / its
    content``, so a tank that fills up (in > out) holds material longer."""

    def __init__(
        self, n_tanks: int, volume_mL: float, dead_volume_mL: float = 0.0, prune: float = 1e-9
    ) -> None:
        if n_tanks < 1 or not volume_mL > 0 or dead_volume_mL < 0:
            raise ValueError("tanks in series need n >= 1, a volume > 0, a dead volume >= 0")
        tank = volume_mL / n_tanks
        self.tanks: list[Amounts] = [{UNKNOWN: tank} for _ in range(n_tanks)]
        self.totals: list[float] = [tank] * n_tanks
        self.dead_volume_mL = dead_volume_mL
        self.plug: deque[tuple[float, Amounts]] = deque()
        self.plug_volume = 0.0
        if dead_volume_mL > 0:
            self.plug.append((dead_volume_mL, {UNKNOWN: dead_volume_mL}))
            self.plug_volume = dead_volume_mL
        self.prune = prune
        self.pruned = 0.0

    def content(self) -> Amounts:
        """Everything inside, by label."""
        out: Amounts = {}
        for _, parcel in self.plug:
            add_into(out, parcel)
        for tank in self.tanks:
            add_into(out, tank)
        return out

    def labels(self) -> set[int]:
        found: set[int] = set()
        for _, parcel in self.plug:
            found.update(parcel)
        for tank in self.tanks:
            found.update(tank)
        return found

    def _through_plug(self, inlet: Amounts) -> Amounts:
        volume = sum(inlet.values())
        if self.dead_volume_mL <= 0 or volume <= 0:
            return inlet
        self.plug.append((volume, inlet))
        self.plug_volume += volume
        out: Amounts = {}
        excess = self.plug_volume - self.dead_volume_mL
        while excess > 1e-12 and self.plug:
            size, parcel = self.plug[0]
            if size <= excess:
                self.plug.popleft()
                add_into(out, parcel)
                excess -= size
                self.plug_volume -= size
            else:
                share = excess / size
                add_into(out, parcel, share)
                self.plug[0] = (size - excess, {k: v * (1 - share) for k, v in parcel.items()})
                self.plug_volume -= excess
                excess = 0.0
        return out

    def step(self, inlet: Amounts, outflow_mL: float, volume_mL: float | None = None) -> Amounts:
        """``inlet`` enters, ``outflow_mL`` leaves; returns what left, by label."""
        inlet = self._through_plug(inlet)
        tanks, totals = self.tanks, self.totals
        n = len(tanks)
        out: Amounts = {}
        if outflow_mL <= 0:
            add_into(tanks[0], inlet)
            totals[0] += sum(inlet.values())
            return out
        smallest = min(totals) if volume_mL is None else volume_mL
        substeps = 1
        if smallest > 0:
            substeps = min(
                _MAX_SUBSTEPS, max(1, math.ceil(outflow_mL / (_MAX_SHARE_PER_SUBSTEP * smallest)))
            )
        d_out = outflow_mL / substeps
        feed = 1.0 / substeps
        inlet_total = sum(inlet.values())
        for _ in range(substeps):
            add_into(tanks[0], inlet, feed)
            totals[0] += inlet_total * feed
            for i in range(n - 1, -1, -1):
                total = totals[i]
                if total <= 0:
                    continue
                basis = total if volume_mL is None else volume_mL
                share = min(1.0, d_out / basis)
                tank = tanks[i]
                target = out if i == n - 1 else tanks[i + 1]
                get = target.get
                for label, amount in tank.items():
                    moved = amount * share
                    tank[label] = amount - moved
                    target[label] = get(label, 0.0) + moved
                totals[i] = total * (1.0 - share)
                if i < n - 1:
                    totals[i + 1] += total * share
        self._prune()
        return out

    def _prune(self) -> None:
        for i, tank in enumerate(self.tanks):
            limit = self.prune * self.totals[i]
            small = [label for label, amount in tank.items() if amount <= limit]
            for label in small:
                amount = tank.pop(label)
                self.pruned += amount
                self.totals[i] -= amount


class Capture:
    """The columns: each in state 1 (load, primary) takes what its outlet does not let
    through; a column in state 2 (load, secondary) takes the breakthrough; without one, the
    breakthrough is lost (to the flow-through)."""

    def __init__(self, columns: int) -> None:
        self.columns: list[Amounts] = [{} for _ in range(columns)]
        self.lost = 0.0
        self.not_loaded = 0.0

    def load(
        self, parcel: Amounts, states: list[int], breakthrough: list[float], passing: float = 0.0
    ) -> None:
        """``parcel`` reached the columns; ``breakthrough[k]`` is the share column k lets
        through while primary; ``passing`` the share of that the secondary lets through in
        turn (lost)."""
        primary = secondary = -1
        for k, state in enumerate(states):
            if state == LOAD_PRIMARY and primary < 0:
                primary = k
            elif state == LOAD_SECONDARY and secondary < 0:
                secondary = k
        if primary < 0:
            self.not_loaded += sum(parcel.values())
            return
        through = min(1.0, max(0.0, breakthrough[primary]))
        add_into(self.columns[primary], parcel, 1.0 - through)
        if through > 0:
            if secondary >= 0:
                passed = min(1.0, max(0.0, passing))
                add_into(self.columns[secondary], parcel, through * (1.0 - passed))
                self.lost += sum(parcel.values()) * through * passed
            else:
                self.lost += sum(parcel.values()) * through

    def take(self, column: int) -> Amounts:
        """What column ``column`` holds (eluted now); it is empty afterwards."""
        held = self.columns[column]
        self.columns[column] = {}
        return held

    def labels(self) -> set[int]:
        found: set[int] = set()
        for column in self.columns:
            found.update(column)
        return found
