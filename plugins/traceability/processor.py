"""The ``rtd_trace`` processor: where the material of each eluate fraction came from.

It follows material from the bioreactor's media inlet to the capture columns' eluate, in
process time (``io.process_time_h``), one step per harvest bin (``bin_h``): the bioreactor as a
CSTR over media entries (lots, media deviations), the harvest labelled by its bin, the line's
units (RTD models in volume coordinates, or mixed tanks of measured volume) moved by the volume
that flowed, the columns loaded by their published states (the primary's breakthrough, from its
outlet and the feed's UV280, to the secondary). When ``fraction`` increments, the column named by
``fraction_column`` is eluted: what it holds is that fraction.

Per fraction it publishes (all at the source time of the sample that revealed the fraction):
``fraction`` (its id), ``fraction_column``, ``affected_share`` (the share of its protein that left
the reactor during a harvest deviation or entered it during a media deviation, with the
deviations' padding; plus material of unknown origin when ``unknown_is_affected``),
``unknown_share``, ``harvest_start``/``harvest_end`` (process h), ``main_lot`` and its share,
``divert`` (1 when ``affected_share > divert_share``: a recommendation, noted in the audit
trail). Operators decide through the ``decide`` command (recorded, then applied: the genealogy
line, the ``decision`` signal — 1 divert, 0 release — and ``decided_fraction``). A pool
(``pools``) is summarized once its last fraction is in (``pool_affected_share``).

The genealogy (:mod:`.genealogy`) is written as it goes. Per sample the work is a few dict
look-ups; the models move once per bin; bins that left the line are dropped.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from gateway import (
    Channel,
    CommandCall,
    GatewayError,
    PluginContext,
    ProcessorCommand,
    ProcessorIO,
    Quality,
    Sample,
    Signal,
    SignalKind,
    UnitError,
    compile_conversion,
    format_ns,
    now_ns,
)

from .genealogy import GenealogyWriter, genealogy_path, read_genealogy
from .line import UNKNOWN, Amounts, Capture, HarvestBin, Reactor, Tanks
from .options import DeviationOptions, TraceOptions
from .rtd import RtdModel, load_rtd_model

__all__ = ["TraceProcessor"]

log = structlog.get_logger(__name__)

#: Fractions remembered for decisions and pools (older ones are in the file).
_RECENT_FRACTIONS = 1000
#: A gap in process time longer than this is not bridged step by step (the line's state is
#: unknown across it): the model restarts its clock.
_MAX_GAP_STEPS = 2000
#: A sample this much older than the line's clock (process h) means a new batch (its age
#: restarted); a little older is only late (another instrument's slower path) and is used.
_BACK_TOLERANCE_H = 1.0
#: A sample stamped further ahead of its arrival than this (an instrument's clock stepped
#: forward) is not used: time-scaled, it would move the whole line by hours.
_MAX_CLOCK_SKEW_NS = 2_000_000_000
#: Genealogy lines kept in memory while the file cannot be written (disk full), retried.
_MAX_UNWRITTEN = 10_000
_COLLECT_EVERY_STEPS = 100
_ELUTE = 4


@dataclass(slots=True)
class _Slot:
    """A role an input signal plays: a held value (converted), a deviation or a summary."""

    kind: str  # "value", "deviation", "summary"
    index: int
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0


@dataclass(slots=True)
class _Deviation:
    options: DeviationOptions
    active: bool = False
    hit: bool = False  # active at some time within the current bin
    until_h: float = -math.inf  # padding after its end
    episodes: int = 0


@dataclass(slots=True)
class _LineUnit:
    name: str
    tanks: Tanks
    flow: int
    volume: int | None
    model: RtdModel | None
    filled: bool = False


class TraceProcessor:
    """See the module docstring."""

    def __init__(self, options: TraceOptions, context: PluginContext) -> None:
        self.options = options
        self.id = context.id
        self._log = log.bind(processor=context.id)
        self.path = genealogy_path(context.data_dir, context.id)
        self._writer = GenealogyWriter(self.path)
        self._io: ProcessorIO | None = None
        # Held values, by slot index; the roles of the input signals.
        self._names: list[str] = []
        self._units: list[str | None] = []
        self._signals: list[str] = []

        def value(signal: str, unit: str | None, name: str) -> int:
            self._names.append(name)
            self._units.append(unit)
            self._signals.append(signal)
            return len(self._names) - 1

        o = options
        r = o.bioreactor
        self._v_reactor = value(r.volume, "mL", "bioreactor.volume")
        self._v_perfusion = value(r.perfusion, "mL/h", "bioreactor.perfusion")
        self._v_harvest = value(r.harvest, "mL/h", "bioreactor.harvest")
        self._v_lot = value(r.media_lot, None, "bioreactor.media_lot") if r.media_lot else None
        self._line: list[_LineUnit] = []
        for unit in o.line:
            model: RtdModel | None = None
            if unit.kind == "tis":
                assert unit.model is not None
                model = load_rtd_model(unit.model)
                if model.unit != unit.name:
                    raise ValueError(
                        f"line.{unit.name}: {model.describe()} was fitted on unit"
                        f" {model.unit!r}, not {unit.name!r}"
                    )
            flow = value(unit.flow, "mL/h", f"{unit.name}.flow")
            volume = value(unit.volume, "mL", f"{unit.name}.volume") if unit.volume else None
            self._line.append(_LineUnit(unit.name, _tanks(model), flow, volume, model))
        c = o.capture
        self._v_feed_uv = value(c.feed_uv280, None, "capture.feed_uv280") if c.feed_uv280 else None
        self._v_states = [
            value(col.state, None, f"column{k + 1}.state") for k, col in enumerate(c.columns)
        ]
        self._v_col_uv = [
            value(col.uv280, None, f"column{k + 1}.uv280") if col.uv280 else None
            for k, col in enumerate(c.columns)
        ]
        self._v_fraction = value(c.fraction, None, "capture.fraction")
        self._v_fraction_column = value(c.fraction_column, None, "capture.fraction_column")
        self._deviations = [_Deviation(d) for d in o.deviations]
        self._summary = list(o.summary)
        self._by_signal: dict[str, list[_Slot]] = {}
        self._latest: list[float] = [math.nan] * len(self._names)
        self.counts: dict[str, int] = {
            "steps": 0,
            "fractions": 0,
            "recommended": 0,
            "decisions": 0,
            "gaps": 0,
            "time_went_back": 0,
            "fractions_skipped": 0,
            "bad_samples": 0,
            "future_stamped": 0,
            "genealogy_write_failures": 0,
        }
        self._unwritten: list[dict[str, Any]] = []
        self._reset_line()
        self._recent: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._pools_done: set[str] = set()
        self._last_fraction: int | None = None
        self._recover()

    def _reset_line(self) -> None:
        o = self.options
        self._reactor = Reactor(o.media_bin_h)
        for unit in self._line:
            unit.tanks = _tanks(unit.model)
            unit.filled = False
        self._capture = Capture(len(o.capture.columns))
        # A column first seen loading (or later) holds material from before tracing started.
        self._column_partial = [False] * len(o.capture.columns)
        self._column_seen = [False] * len(o.capture.columns)
        self._states = [0] * len(o.capture.columns)
        self._floor = [math.inf] * len(o.capture.columns)
        self._bins: dict[int, HarvestBin] = {}
        self._open: HarvestBin | None = None
        self._index = 0

    def _recover(self) -> None:
        """Pick up where a previous run left off: the last fraction id, recent fractions."""
        if not self.path.exists():
            return
        try:
            genealogy = read_genealogy(self.path)
        except OSError as exc:
            raise ValueError(f"genealogy {self.path}: cannot read ({exc.strerror})") from None
        for entry in genealogy.fractions[-_RECENT_FRACTIONS:]:
            self._remember(entry)
            self._last_fraction = int(entry["fraction"])
        self._pools_done = {str(p.get("pool")) for p in genealogy.pools}

    # -- Processor ------------------------------------------------------------------------------
    def inputs(self) -> Sequence[str]:
        names = list(dict.fromkeys(self._signals))
        for d in self.options.deviations:
            names.append(d.signal)
        names += list(self.options.summary.values())
        return list(dict.fromkeys(names))

    def channels(self) -> Sequence[Channel]:
        per = "per eluate fraction, at the elution's start"
        return [
            Channel("fraction", "1", description=f"Eluate fraction id, {per}"),
            Channel("fraction_column", "1", description=f"Its column (1..n), {per}"),
            Channel(
                "affected_share",
                "1",
                description=f"Share of it affected by a deviation, {per}",
            ),
            Channel("unknown_share", "1", description=f"Share of unknown origin, {per}"),
            Channel("harvest_start", "h", description=f"Earliest harvest time it holds, {per}"),
            Channel("harvest_end", "h", description=f"Latest harvest time it holds, {per}"),
            Channel("main_lot", "1", description=f"Media lot of most of it, {per}"),
            Channel("main_lot_share", "1", description=f"That lot's share, {per}"),
            Channel(
                "divert",
                "1",
                description=f"1: divert recommended (affected share over"
                f" {self.options.divert_share:g}), 0: not, {per}",
            ),
            Channel("decided_fraction", "1", description="Fraction of the last operator decision"),
            Channel("decision", "1", description="The last operator decision: 1 divert, 0 release"),
            Channel("pool_affected_share", "1", description="A pool's affected share"),
        ]

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        for k, name in enumerate(self._signals):
            signal = inputs[name]
            _scalar(signal, self._names[k])
            slot = _Slot("value", k, self._units[k])
            if self._units[k] is not None:
                try:
                    conversion = compile_conversion(signal.unit, self._units[k] or "1")
                except UnitError as exc:
                    raise ValueError(
                        f"{self._names[k]}: {signal.id} is in {signal.unit!r}, not convertible"
                        f" to {self._units[k]!r} ({exc})"
                    ) from None
                slot.scale, slot.offset = conversion.scale, conversion.offset
            self._by_signal.setdefault(signal.id, []).append(slot)
        for k, d in enumerate(self.options.deviations):
            signal = inputs[d.signal]
            _scalar(signal, f"deviations.{d.name}")
            self._by_signal.setdefault(signal.id, []).append(_Slot("deviation", k))
        for k, name in enumerate(self._summary):
            signal = inputs[self.options.summary[name]]
            _scalar(signal, f"summary.{name}")
            self._by_signal.setdefault(signal.id, []).append(_Slot("summary", k))

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        slots = self._by_signal.get(sample.signal)
        if slots is None:
            return
        self._io = io
        if sample.source_ts - sample.gateway_ts > _MAX_CLOCK_SKEW_NS:
            self.counts["future_stamped"] += 1
            return
        t = io.process_time_h(sample.source_ts)
        self._advance(t, sample.source_ts, io)
        value = sample.value
        if sample.quality == Quality.BAD or not isinstance(value, int | float):
            # The last good value holds (a reconnect must not move the line's model).
            self.counts["bad_samples"] += 1
            return
        x = float(value)
        if not math.isfinite(x):
            return
        for slot in slots:
            if slot.kind == "value":
                self._latest[slot.index] = x * slot.scale + slot.offset
            elif slot.kind == "deviation":
                self._deviation(self._deviations[slot.index], x, t)
            else:
                stats = self._open.stats if self._open is not None else None
                if stats is not None:
                    name = self._summary[slot.index]
                    s = stats.get(name)
                    if s is None:
                        stats[name] = [x, x, x, 1.0]
                    else:
                        s[0] = min(s[0], x)
                        s[1] = max(s[1], x)
                        s[2] += x
                        s[3] += 1.0

    # -- optional members ----------------------------------------------------------------------
    def commands(self) -> Mapping[str, ProcessorCommand]:
        return {
            "decide": ProcessorCommand(
                permission="write",
                handler=self._decide_command,
                description="An operator's decision on a fraction: body {'fraction': id,"
                " 'decision': 'divert' | 'release', 'reason': text}",
            ),
            "genealogy": ProcessorCommand(
                permission="read",
                handler=self._genealogy_command,
                description="The genealogy of recent fractions: body {'fraction': id (optional),"
                " 'reason': text}",
            ),
        }

    def status(self) -> Mapping[str, Any]:
        pending = [
            n
            for n, f in self._recent.items()
            if f["recommendation"]["divert"] and f.get("decision") is None
        ]
        return {
            "genealogy": str(self.path),
            "last_fraction": self._last_fraction,
            "awaiting_decision": pending[-50:],
            "bins_in_line": len(self._bins),
            "lost_breakthrough": self._capture.lost,
            "not_loaded": self._capture.not_loaded,
            "counts": dict(self.counts),
            "genealogy_lines_waiting": len(self._unwritten),
            "deviations": {
                d.options.name: {"active": d.active, "episodes": d.episodes}
                for d in self._deviations
            },
        }

    # -- the line -------------------------------------------------------------------------------
    def _advance(self, t: float, ts: int, io: ProcessorIO) -> None:
        bin_h = self.options.bin_h
        current = self._open
        if current is None:
            self._start(t)
            return
        if t < current.start_h - max(_BACK_TOLERANCE_H, 20 * bin_h):
            self.counts["time_went_back"] += 1
            self._log.warning("trace.time_went_back", from_h=current.start_h, to_h=t)
            self._restart(t)
            return
        if t < current.end_h:
            return
        steps = math.floor((t - current.start_h) / bin_h)
        if steps > _MAX_GAP_STEPS:
            self.counts["gaps"] += 1
            self._log.warning(
                "trace.gap",
                from_h=round(current.start_h, 3),
                to_h=round(t, 3),
                note="the line's state across the gap is unknown: tracing restarts",
            )
            self._restart(t)
            return
        while self._open is not None and t >= self._open.end_h:
            self._step(self._open, ts, io)

    def _start(self, t: float) -> None:
        self._open = HarvestBin(self._index, t, t + self.options.bin_h)

    def _restart(self, t: float) -> None:
        self._reset_line()
        self._start(t)

    def _step(self, current: HarvestBin, ts: int, io: ProcessorIO) -> None:
        o = self.options
        latest = self._latest
        start, end = current.start_h, current.end_h
        dt = end - start
        self.counts["steps"] += 1
        lot_value = latest[self._v_lot] if self._v_lot is not None else math.nan
        lot = str(int(lot_value)) if math.isfinite(lot_value) else "unknown"
        media_flags = frozenset(
            d.options.name
            for d in self._deviations
            if d.options.at == "media" and (d.hit or start < d.until_h)
        )
        volume, perfusion = latest[self._v_reactor], latest[self._v_perfusion]
        if math.isfinite(volume) and math.isfinite(perfusion):
            self._reactor.step(start, end, max(0.0, perfusion) * dt, volume, lot, media_flags)
        self._reactor.composition(current)
        for d in self._deviations:
            if d.options.at == "harvest" and (d.hit or start < d.until_h):
                current.flags.add(d.options.name)
            d.hit = d.active
        harvest = latest[self._v_harvest]
        # An unknown flow is not a zero flow (an instrument not heard from yet, a gap): moving
        # the other side alone would drain or fill the modelled unit for good, and every later
        # bin would reach the columns early or late. A unit holds its level instead: what
        # enters unseen is of unknown origin; what leaves unseen is as much as entered.
        inflow_known = math.isfinite(harvest)
        current.volume_mL = max(0.0, harvest) * dt if inflow_known else 0.0
        parcel: Amounts = {}
        if current.volume_mL > 0:
            parcel = {current.index: current.volume_mL}
            self._bins[current.index] = current
        for unit in self._line:
            flow = latest[unit.flow]
            outflow_known = math.isfinite(flow)
            out_mL = max(0.0, flow) * dt if outflow_known else 0.0
            volume_now = latest[unit.volume] if unit.volume is not None else None
            if volume_now is not None:
                if not (math.isfinite(volume_now) and volume_now > 0):
                    volume_now = None
                elif not unit.filled:
                    # Its content before tracing started: unknown material, as much as it holds.
                    unit.tanks = Tanks(1, volume_now)
                    unit.filled = True
            if unit.volume is not None and not unit.filled:
                parcel = {}  # no volume known yet: what it would pass on is unknown
                inflow_known = False
                continue
            if not inflow_known and outflow_known:
                parcel = {UNKNOWN: out_mL} if out_mL > 0 else {}
            elif inflow_known and not outflow_known:
                out_mL = sum(parcel.values())
            parcel = unit.tanks.step(parcel, out_mL, volume_now)
            inflow_known = inflow_known or outflow_known
        self._load_columns(parcel)
        self._check_fraction(end, ts, io)
        self._index += 1
        self._open = HarvestBin(self._index, end, end + o.bin_h)
        if self.counts["steps"] % _COLLECT_EVERY_STEPS == 0:
            self._collect()
            if self._unwritten:
                self._flush()

    def _load_columns(self, parcel: Amounts) -> None:
        latest = self._latest
        capture = self.options.capture
        states: list[int] = []
        # A column that starts loading shows the buffer it was equilibrated in (UV280 ~0) until
        # its void volume has passed: not its floor, or the whole non-binding part would count
        # as breakthrough for its entire load.
        starting: list[bool] = []
        for k, slot in enumerate(self._v_states):
            s = latest[slot]
            state = int(s) if math.isfinite(s) else 0
            if not self._column_seen[k] and math.isfinite(s):
                self._column_seen[k] = True
                self._column_partial[k] = state in (1, 2, 3, _ELUTE)
            fresh = state in (1, 2) and self._states[k] not in (1, 2)
            if fresh:
                self._floor[k] = math.inf  # a fresh load: its non-binding floor anew
            states.append(state)
            starting.append(fresh)
        self._states = states
        # What reaches each outlet, as a share of the feed's UV280: the non-binding part
        # always, then the product a loaded column no longer holds.
        feed_uv = latest[self._v_feed_uv] if self._v_feed_uv is not None else math.nan
        ratio = [math.nan] * len(states)
        if math.isfinite(feed_uv) and feed_uv > capture.uv_floor:
            for k, uv_slot in enumerate(self._v_col_uv):
                uv = latest[uv_slot] if uv_slot is not None else math.nan
                if math.isfinite(uv):
                    ratio[k] = max(0.0, uv / feed_uv)
                    if states[k] in (1, 2) and not starting[k] and uv > capture.uv_floor:
                        self._floor[k] = min(self._floor[k], ratio[k])
        if not parcel:
            return
        primary = next((k for k, s in enumerate(states) if s == 1), -1)
        secondary = next((k for k, s in enumerate(states) if s == 2), -1)
        floor = 0.0
        if primary >= 0:
            fixed = capture.nonbinding_uv_share
            floor = fixed if fixed is not None else self._floor[primary]
            floor = floor if math.isfinite(floor) and floor < 1 else 0.0
        through = [0.0] * len(states)
        passing = 0.0
        if primary >= 0 and math.isfinite(ratio[primary]):
            through[primary] = max(0.0, ratio[primary] - floor) / (1.0 - floor)
            if secondary >= 0 and math.isfinite(ratio[secondary]) and through[primary] > 0:
                fixed = capture.nonbinding_uv_share
                sfloor = fixed if fixed is not None else self._floor[secondary]
                sfloor = sfloor if math.isfinite(sfloor) and sfloor < 1 else 0.0
                lost = max(0.0, ratio[secondary] - sfloor) / (1.0 - sfloor)
                passing = min(1.0, lost / through[primary])
        if math.isfinite(feed_uv):
            # The protein that binds, not the volume: its UV280 above the non-binding part.
            weight = max(0.0, feed_uv) * (1.0 - floor)
            parcel = {label: amount * weight for label, amount in parcel.items()}
        self._capture.load(parcel, states, through, passing)

    def _deviation(self, d: _Deviation, x: float, t: float) -> None:
        o = d.options
        if o.kind == "flag":
            active = x > 0
        else:
            active = (o.low is not None and x < o.low) or (o.high is not None and x > o.high)
        if active and not d.active:
            d.episodes += 1
            since = t - o.padding_h
            if o.at == "harvest":
                for b in self._bins.values():
                    if b.end_h > since:
                        b.flags.add(o.name)
            else:
                self._reactor.flag_since(o.name, since)
            if self._io is not None:
                self._io.note(
                    "trace.deviation_started",
                    target=f"{self.id}/{o.name}",
                    new=x,
                    reason=f"{o.signal} {x:.6g} {_limits_text(o)}",
                    details={"at": o.at, "process_time_h": t, "padding_h": o.padding_h},
                )
        elif d.active and not active:
            d.until_h = t + o.padding_h
            if self._io is not None:
                self._io.note(
                    "trace.deviation_ended",
                    target=f"{self.id}/{o.name}",
                    new=x,
                    reason=f"{o.signal} {x:.6g} back within its limits",
                    details={"at": o.at, "process_time_h": t, "padding_h": o.padding_h},
                )
        d.active = active
        if active:
            d.hit = True

    def _collect(self) -> None:
        """Drop the bins no unit holds any more (eluted, lost, pruned)."""
        alive: set[int] = set(self._capture.labels())
        for unit in self._line:
            alive |= unit.tanks.labels()
        for index in [i for i in self._bins if i not in alive]:
            del self._bins[index]

    # -- fractions ------------------------------------------------------------------------------
    def _check_fraction(self, t: float, ts: int, io: ProcessorIO) -> None:
        latest = self._latest
        value = latest[self._v_fraction]
        if not math.isfinite(value):
            return
        number = int(value)
        last = self._last_fraction
        if last is None:
            # Tracing starts here: the fraction under way (if any) is not ours to describe.
            self._last_fraction = number
            return
        if number == last:
            return
        if number < last:
            # The skid numbers afresh (a new campaign): a new baseline, as at the start.
            self._log.warning("trace.fraction_numbering_restarted", last=last, now=number)
            self._last_fraction = number
            return
        if number > last + 1:
            self.counts["fractions_skipped"] += number - last - 1
            self._log.warning("trace.fractions_skipped", last=last, now=number)
        self._last_fraction = number
        col_value = latest[self._v_fraction_column]
        columns = len(self._v_states)
        if not math.isfinite(col_value) or not 1 <= int(col_value) <= columns:
            self.counts["fractions_skipped"] += 1
            self._log.warning("trace.fraction_column_unknown", fraction=number, column=col_value)
            return
        column = int(col_value)
        partial = self._column_partial[column - 1]
        self._column_partial[column - 1] = False
        held = self._capture.take(column - 1)
        record = self._describe(number, column, held, partial, t, ts)
        self._publish(record, ts, io)

    def _describe(
        self, number: int, column: int, held: Amounts, partial: bool, t: float, ts: int
    ) -> dict[str, Any]:
        o = self.options
        total = sum(held.values())
        shares = {label: amount / total for label, amount in held.items()} if total > 0 else {}
        unknown = shares.get(UNKNOWN, 0.0)
        lots: dict[str, float] = {"unknown": unknown} if unknown > 0 else {}
        deviations = {d.options.name: 0.0 for d in self._deviations}
        affected = unknown if o.unknown_is_affected else 0.0
        listed: list[tuple[HarvestBin, float]] = []
        other = 0.0
        for label in sorted(shares):
            share = shares[label]
            if label == UNKNOWN:
                continue
            b = self._bins.get(label)
            if b is None:  # cannot happen while the bin is in a column; counted, not guessed
                other += share
                continue
            for lot, part in b.lots.items():
                lots[lot] = lots.get(lot, 0.0) + share * part
            for name in deviations:
                hit = 1.0 if name in b.flags else b.media.get(name, 0.0)
                deviations[name] += share * hit
            affected += share * (1.0 if b.flags else b.media_any)
            if share >= o.min_share:
                listed.append((b, share))
            else:
                other += share
        windows: list[list[float]] = []
        for b, share in listed:
            if windows and abs(windows[-1][1] - b.start_h) < 1e-9:
                windows[-1][1] = b.end_h
                windows[-1][2] += share
            else:
                windows.append([b.start_h, b.end_h, share])
        signals: dict[str, dict[str, float]] = {}
        for name in self._summary:
            lo, hi, acc, n = math.inf, -math.inf, 0.0, 0.0
            for b, _ in listed:
                s = b.stats.get(name)
                if s is not None:
                    lo, hi, acc, n = min(lo, s[0]), max(hi, s[1]), acc + s[2], n + s[3]
            if n > 0:
                signals[name] = {"min": lo, "mean": acc / n, "max": hi, "samples": int(n)}
        complete = not partial and total > 0
        # A column loaded before tracing started, or one into which nothing was traced (the
        # feed's UV read nothing while it loaded): nobody can vouch for what it holds.
        if (partial or total <= 0) and o.unknown_is_affected:
            affected = 1.0
        affected = min(1.0, affected)
        divert = affected > o.divert_share
        reasons = [f"{n} {s:.3g}" for n, s in deviations.items() if s > 0]
        if unknown > 0:
            reasons.append(f"unknown origin {unknown:.3g}")
        if partial:
            reasons.append("column loaded before tracing started")
        elif total <= 0:
            reasons.append("no material traced into it")
        return {
            "type": "fraction",
            "processor": self.id,
            "fraction": number,
            "column": column,
            "time": format_ns(ts),
            "eluted_h": round(t, 6),
            "complete": complete,
            "loaded": total,
            "harvest_window_h": [listed[0][0].start_h, listed[-1][0].end_h] if listed else None,
            "windows": [[round(a, 6), round(b, 6), s] for a, b, s in windows],
            "bins": [[round(b.start_h, 6), round(b.end_h, 6), share] for b, share in listed],
            "other_share": other,
            "unknown_share": unknown,
            "lots": dict(sorted(lots.items(), key=lambda kv: -kv[1])),
            "deviations": deviations,
            "affected_share": affected,
            "signals": signals,
            "recommendation": {
                "divert": divert,
                "threshold": o.divert_share,
                "why": "; ".join(reasons),
            },
        }

    def _publish(self, record: dict[str, Any], ts: int, io: ProcessorIO) -> None:
        number = record["fraction"]
        out = io.output
        out("fraction").publish(number, ts)
        out("fraction_column").publish(record["column"], ts)
        quality = Quality.GOOD if record["complete"] else Quality.UNCERTAIN
        why = None if record["complete"] else "incomplete: " + record["recommendation"]["why"]
        out("affected_share").publish(record["affected_share"], ts, quality, why)
        out("unknown_share").publish(record["unknown_share"], ts, quality, why)
        window = record["harvest_window_h"]
        if window is not None:
            out("harvest_start").publish(window[0], ts)
            out("harvest_end").publish(window[1], ts)
        lots = record["lots"]
        known = [(lot, share) for lot, share in lots.items() if lot != "unknown"]
        if known:
            lot, share = known[0]
            out("main_lot").publish(int(lot), ts)
            out("main_lot_share").publish(share, ts)
        divert = record["recommendation"]["divert"]
        out("divert").publish(
            1 if divert else 0, ts, Quality.GOOD, record["recommendation"]["why"] or None
        )
        self._append(record)
        self._remember(record)
        self.counts["fractions"] += 1
        if divert:
            self.counts["recommended"] += 1
            self._log.warning(
                "trace.divert_recommended",
                fraction=number,
                affected_share=round(record["affected_share"], 4),
            )
            io.note(
                "trace.divert_recommended",
                target=f"{self.id}/fraction/{number}",
                new=record["affected_share"],
                reason=record["recommendation"]["why"],
                details={
                    "fraction": number,
                    "column": record["column"],
                    "threshold": self.options.divert_share,
                    "deviations": record["deviations"],
                    "harvest_window_h": window,
                },
            )
        self._pools(number, ts, io)

    def _append(self, record: dict[str, Any]) -> None:
        """Write a genealogy line after any the file refused before; keep it if refused."""
        self._unwritten.append(record)
        self._flush()

    def _flush(self) -> None:
        try:
            while self._unwritten:
                self._writer.append(self._unwritten[0])
                self._unwritten.pop(0)
        except OSError as exc:
            self.counts["genealogy_write_failures"] += 1
            if len(self._unwritten) > _MAX_UNWRITTEN:
                dropped = self._unwritten.pop(0)
                self._log.error("trace.genealogy_line_dropped", fraction=dropped.get("fraction"))
            self._log.error(
                "trace.genealogy_not_written",
                path=str(self.path),
                error=exc.strerror,
                waiting=len(self._unwritten),
            )

    def _remember(self, record: Mapping[str, Any]) -> None:
        """Keep a fraction's summary for decisions, pools and the live API (its harvest bins
        and windows are in the file only: memory stays small over a long campaign)."""
        number = int(record["fraction"])
        entry = {k: v for k, v in record.items() if k not in ("bins", "windows")}
        entry.setdefault("decision", None)
        self._recent[number] = entry
        self._recent.move_to_end(number)
        while len(self._recent) > _RECENT_FRACTIONS:
            self._recent.popitem(last=False)

    def _pools(self, number: int, ts: int, io: ProcessorIO) -> None:
        for pool in self.options.pools:
            first, last = pool.fractions
            if pool.name in self._pools_done or number < last:
                continue
            self._pools_done.add(pool.name)
            members = [self._recent[n] for n in range(first, last + 1) if n in self._recent]
            missing = [n for n in range(first, last + 1) if n not in self._recent]
            total = sum(float(m.get("loaded", 0.0)) for m in members)
            lots: dict[str, float] = {}
            deviations: dict[str, float] = {}
            affected = 0.0
            for m in members:
                w = float(m.get("loaded", 0.0)) / total if total > 0 else 0.0
                for lot, share in m["lots"].items():
                    lots[lot] = lots.get(lot, 0.0) + w * share
                for name, share in m["deviations"].items():
                    deviations[name] = deviations.get(name, 0.0) + w * share
                affected += w * m["affected_share"]
            record = {
                "type": "pool",
                "processor": self.id,
                "pool": pool.name,
                "fractions": [first, last],
                "present": [int(m["fraction"]) for m in members],
                "missing": missing,
                "time": format_ns(ts),
                "lots": lots,
                "deviations": deviations,
                "affected_share": affected,
                "divert_recommended": [
                    int(m["fraction"]) for m in members if m["recommendation"]["divert"]
                ],
            }
            self._append(record)
            quality = Quality.GOOD if not missing else Quality.UNCERTAIN
            why = f"fractions missing: {missing}" if missing else None
            io.output("pool_affected_share").publish(affected, ts, quality, why)

    # -- commands -------------------------------------------------------------------------------
    async def _decide_command(self, call: CommandCall) -> Mapping[str, Any]:
        number = call.body.get("fraction")
        decision = call.body.get("decision")
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError("body needs 'fraction': the fraction's id (a whole number)")
        if decision not in ("divert", "release"):
            raise ValueError("body needs 'decision': 'divert' or 'release'")
        fraction = self._recent.get(number)
        if fraction is None:
            known = list(self._recent)[-10:]
            raise ValueError(f"no fraction {number} traced (the last ones: {known})")
        io = self._io
        if io is None:
            raise GatewayError("the traceability processor has not started yet")
        if self._unwritten:
            raise GatewayError(
                f"the genealogy {self.path} cannot be written now ({len(self._unwritten)}"
                " line(s) waiting): a decision would not be kept with its fraction"
            )
        previous = fraction.get("decision")
        # A person's decision: on record (durably) before it takes effect; fail closed.
        record = await io.record(
            "trace.decision",
            target=f"{self.id}/fraction/{number}",
            old=previous,
            new=decision,
            reason=call.reason,
            why=fraction["recommendation"]["why"],
            details={
                "fraction": number,
                "affected_share": fraction["affected_share"],
                "recommended": "divert" if fraction["recommendation"]["divert"] else "release",
            },
            user=call.user,
        )
        line = {
            "type": "decision",
            "processor": self.id,
            "fraction": number,
            "decision": decision,
            "previous": previous,
            "user": call.user,
            "full_name": call.full_name,
            "reason": call.reason,
            "audit_record": record,
        }
        try:
            self._writer.append(line)
        except OSError as exc:
            raise GatewayError(
                f"decision recorded in the audit trail (record {record}) but not in the"
                f" genealogy {self.path}: {exc.strerror}"
            ) from exc
        fraction["decision"] = decision
        self.counts["decisions"] += 1
        ts = now_ns()
        io.output("decided_fraction").publish(number, ts)
        io.output("decision").publish(
            1 if decision == "divert" else 0,
            ts,
            Quality.GOOD,
            f"fraction {number}: {decision} by {call.user}",
        )
        self._log.warning("trace.decision", fraction=number, decision=decision, user=call.user)
        return {"fraction": number, "decision": decision, "previous": previous, "record": record}

    async def _genealogy_command(self, call: CommandCall) -> Mapping[str, Any]:
        number = call.body.get("fraction")
        if number is None:
            return {"fractions": list(self._recent.values())[-100:]}
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError("'fraction' must be a fraction id (a whole number)")
        fraction = self._recent.get(number)
        if fraction is None:
            raise ValueError(f"no fraction {number} traced")
        return {"fractions": [fraction]}


def _tanks(model: RtdModel | None) -> Tanks:
    if model is None:  # a cstr: one tank, its volume from a signal at each step
        return Tanks(1, 1.0)
    return Tanks(model.n_tanks, model.volume_mL, model.dead_volume_mL)


def _scalar(signal: Signal, role: str) -> None:
    if signal.kind is not SignalKind.SCALAR:
        raise ValueError(f"{role}: {signal.id} is a {signal.kind.value} signal, not a scalar")


def _limits_text(o: DeviationOptions) -> str:
    if o.kind == "flag":
        return "(alarm active)"
    parts = []
    if o.low is not None:
        parts.append(f"low {o.low:g}")
    if o.high is not None:
        parts.append(f"high {o.high:g}")
    return "outside " + ", ".join(parts)
