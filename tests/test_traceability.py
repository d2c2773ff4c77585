"""Residence-time traceability: the line's models (tanks in series in volume coordinates, the
bioreactor as a CSTR over media lots, the columns' loading with breakthrough) and the
``rtd_trace`` processor fed a scripted perfusion line (no emulator)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import traceline
from traceline import EXCURSION_H, PADDING_H, SIGNALS, SURGE, expected_share, values_at

from gateway import PluginContext, Quality, Sample, Signal
from plugins.traceability.genealogy import read_genealogy
from plugins.traceability.line import Capture, HarvestBin, Reactor, Tanks, add_into
from plugins.traceability.options import TraceOptions
from plugins.traceability.processor import TraceProcessor
from plugins.traceability.rtd import RtdModel, save_rtd_model

HOUR_NS = 3_600_000_000_000


def test_tanks_in_series_conserve_what_enters_whatever_the_flows() -> None:
    rng = random.Random(7)
    tanks = Tanks(4, 200.0, 30.0)
    inside0 = sum(tanks.content().values())
    fed = left = 0.0
    for step in range(3000):
        inlet = {step: rng.uniform(0, 20)} if rng.random() < 0.9 else {}
        fed += sum(inlet.values())
        out = tanks.step(inlet, rng.uniform(0, 25))
        left += sum(out.values())
    inside = sum(tanks.content().values())
    assert fed > 10_000 and left > 10_000
    balance = inside0 + fed - (inside + left + tanks.pruned)
    assert abs(balance) < 1e-6 * (inside0 + fed), balance


@pytest.mark.parametrize("varying", [False, True])
def test_a_pulse_leaves_with_the_mean_residence_volume_of_the_model(varying: bool) -> None:
    """Material moves by the volume that flowed: with a flow that changes (and stops), the
    mean volume flowed between a pulse's entry and its exit is the model's V + V_dead."""
    model = RtdModel("m", "1", "surge_tank", n_tanks=3, volume_mL=300.0, dead_volume_mL=50.0)
    tanks = Tanks(model.n_tanks, model.volume_mL, model.dead_volume_mL)
    rng = random.Random(3)
    flowed = 0.0
    weighted = mass = 0.0
    for step in range(4000):
        flow = 10.0 if not varying else rng.choice([0.0, 2.0, 10.0, 25.0])
        inlet = {1: 5.0} if step == 0 else {}
        inlet[0] = flow  # carrier, so that the plug moves with the flow
        out = tanks.step(inlet, flow)
        flowed += flow
        pulse = out.get(1, 0.0)
        weighted += pulse * (flowed - flow / 2)
        mass += pulse
    assert mass == pytest.approx(5.0, rel=1e-4)
    assert weighted / mass == pytest.approx(model.mean_residence_mL, rel=0.02)


def test_a_tank_of_measured_volume_is_a_cstr_of_that_volume() -> None:
    """A ``cstr`` line unit: its volume comes from a signal. A pulse leaves after the volume
    the signal gives, on average, whatever the flow does; its content follows the level."""
    rng = random.Random(5)
    tanks = Tanks(1, 800.0)
    flowed = weighted = mass = 0.0
    entered = math.nan
    for step in range(3000):
        flow = 10.0 if step == 10 else rng.choice([0.0, 5.0, 10.0, 30.0])
        inlet = {0: flow}
        if step == 10:
            inlet[1] = 2.0
            entered = flowed + flow / 2  # it enters spread over the step
        out = tanks.step(inlet, flow, volume_mL=800.0)
        flowed += flow
        weighted += out.get(1, 0.0) * (flowed - flow / 2)
        mass += out.get(1, 0.0)
    assert mass == pytest.approx(2.0, rel=1e-3)
    assert weighted / mass - entered == pytest.approx(800.0, rel=0.02)
    level = Tanks(1, 500.0)
    for step in range(200):  # in > out: the level rises 500 -> 900 mL; then it falls back
        rising = step < 100
        volume = 500.0 + 4.0 * (step + 1 if rising else 199 - step)
        level.step({step: 12.0 if rising else 8.0}, 8.0 if rising else 12.0, volume_mL=volume)
        if step == 99:
            assert sum(level.content().values()) == pytest.approx(900.0, rel=0.01)
    # The outflow is its share of the content by the measured level: a few % off after the
    # swing (the level is sampled once a step); once it holds, within one step's flow of it
    # (what entered during a step is counted in before the step's outflow).
    assert sum(level.content().values()) == pytest.approx(500.0, rel=0.03)
    for step in range(200, 400):
        level.step({step: 10.0}, 10.0, volume_mL=500.0)
    assert 500.0 - 10.0 - 0.1 <= sum(level.content().values()) <= 500.0  # 0.1: traces pruned


def test_the_bioreactor_mixes_a_new_media_lot_in_as_a_cstr() -> None:
    reactor = Reactor(entry_h=0.5)
    volume, inflow = 2000.0, 50.0  # mL, mL per 0.1 h step
    b = HarvestBin(0, 0, 0)
    for k in range(400):
        lot = "1" if k < 100 else "2"
        reactor.step(k * 0.1, (k + 1) * 0.1, inflow, volume, lot, frozenset())
        reactor.composition(b)
        if k >= 100:
            exchanged = inflow * (k - 99)
            assert b.lots["2"] == pytest.approx(1 - math.exp(-exchanged / volume), rel=1e-9)
    # What was in the reactor before tracing is "unknown", and washes out the same way.
    assert b.lots["unknown"] == pytest.approx(math.exp(-400 * inflow / volume), rel=1e-6)
    assert sum(b.lots.values()) == pytest.approx(1.0)
    # A deviation at the media inlet marks what entered during it, with its padding.
    reactor.flag_since("media_glucose", 39.0)  # the last hour (two entries of 0.5 h)
    reactor.composition(b)
    assert b.media["media_glucose"] == pytest.approx(1 - math.exp(-10 * inflow / volume), rel=1e-6)


def test_columns_take_the_feed_by_state_and_the_secondary_the_breakthrough() -> None:
    capture = Capture(3)
    capture.load({5: 100.0}, [1, 2, 0], [0.2, 0.0, 0.0], passing=0.25)
    assert capture.columns[0] == {5: pytest.approx(80.0)}
    assert capture.columns[1] == {5: pytest.approx(15.0)}
    assert capture.lost == pytest.approx(5.0)
    capture.lost = 0.0
    capture.columns[1] = {5: 20.0}
    # No secondary interconnected: the breakthrough goes to the flow-through, lost.
    capture.load({6: 100.0}, [0, 1, 3], [0.0, 0.3, 0.0])
    assert capture.columns[1] == {5: pytest.approx(20.0), 6: pytest.approx(70.0)}
    assert capture.lost == pytest.approx(30.0)
    # No column loading: nothing is captured.
    capture.load({7: 10.0}, [3, 4, 5], [0.0] * 3)
    assert capture.not_loaded == pytest.approx(10.0)
    assert capture.take(1) == {5: pytest.approx(20.0), 6: pytest.approx(70.0)}
    assert capture.columns[1] == {}


def test_add_into_scales() -> None:
    target = {1: 1.0}
    add_into(target, {1: 2.0, 2: 4.0}, 0.5)
    assert target == {1: 2.0, 2: 2.0}


# --- the processor on a scripted line -----------------------------------------------------------


class _Out:
    def __init__(self, sink: list[tuple[str, Any, int, Quality, str | None]], name: str) -> None:
        self.sink, self.name = sink, name

    def publish(
        self, value: Any, source_ts: int | None = None, quality: Quality = Quality.GOOD,
        reason: str | None = None,
    ) -> None:  # fmt: skip
        self.sink.append((self.name, value, source_ts or 0, quality, reason))


class _IO:
    """The runtime's side as a processor sees it: outputs, process time, audit notes."""

    processor_id = "trace"

    def __init__(self) -> None:
        self.published: list[tuple[str, Any, int, Quality, str | None]] = []
        self.notes: list[dict[str, Any]] = []

    def output(self, channel: str) -> _Out:
        return _Out(self.published, channel)

    def process_time_h(self, ts_ns: int) -> float:
        return ts_ns / HOUR_NS

    def note(self, action: str, **fields: Any) -> None:
        self.notes.append({"action": action, **fields})

    def values(self, channel: str) -> list[Any]:
        return [v for name, v, *_ in self.published if name == channel]


def surge_model(folder: Path, unit: str = "surge_tank") -> Path:
    path = folder / "surge-rtd.json"
    save_rtd_model(RtdModel("surge", "1", unit, **SURGE), path)  # type: ignore[arg-type]
    return path


def bound(tmp_path: Path, **extra: Any) -> TraceProcessor:
    options = TraceOptions.model_validate(traceline.options(str(surge_model(tmp_path)), **extra))
    processor = TraceProcessor(options, PluginContext("trace", tmp_path / "data"))
    processor.bind({name: Signal(f"a/{name}", SIGNALS[name.split("/")[1]])
                    for name in processor.inputs()})  # fmt: skip
    return processor


def run_line(
    processor: TraceProcessor, io: _IO, hours: float, every_h: float = 0.01, start_h: float = 0.0
) -> None:
    for k in range(round((hours - start_h) / every_h)):
        t = start_h + k * every_h
        ts = round(t * HOUR_NS)
        for name, value in values_at(t).items():
            sample = Sample(f"a/line/{name}", value, SIGNALS[name], ts, ts, Quality.GOOD, 0)
            processor.process(sample, io)  # type: ignore[arg-type]


def fractions(tmp_path: Path) -> dict[int, dict[str, Any]]:
    path = tmp_path / "data" / "traceability" / "trace.genealogy.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {f["fraction"]: f for f in lines if f["type"] == "fraction"}


def test_each_fraction_holds_the_harvest_the_rtd_says_and_the_excursion_share(
    tmp_path: Path,
) -> None:
    processor = bound(tmp_path, pools=[{"name": "batch-1", "fractions": [9, 12]}])
    io = _IO()
    run_line(processor, io, 30.0)
    found = fractions(tmp_path)
    assert sorted(found) == list(range(1, 15))
    assert io.values("fraction") == list(range(1, 15))
    # Columns seen loading when tracing started hold material nobody traced: not vouched for.
    assert not found[1]["complete"] and not found[2]["complete"]
    assert found[1]["recommendation"]["divert"] and found[2]["recommendation"]["divert"]
    checked = 0
    for number in range(4, 15):
        f = found[number]
        assert f["complete"] and f["column"] == (number - 1) % 3 + 1
        window = (EXCURSION_H[0] - PADDING_H, EXCURSION_H[1] + PADDING_H)
        expected = expected_share(number, window)
        affected = f["deviations"]["temperature"] + f["unknown_share"]
        # 0.02: the 0.05 h bins' discretization (0.004 with 0.01 h bins).
        assert affected == pytest.approx(expected, abs=0.02), (number, f)
        assert f["affected_share"] == pytest.approx(affected, abs=1e-9)
        assert f["recommendation"]["divert"] is (f["affected_share"] > 0.01)
        # The summary of the signal over its harvest window: vcd is the harvest hour itself.
        low, high = f["harvest_window_h"]
        vcd = f["signals"]["vcd"]
        assert low - 0.01 <= vcd["min"] <= vcd["mean"] <= vcd["max"] <= high
        checked += expected > 0.05
    assert checked >= 2  # the excursion reached some fractions
    clean = [n for n in range(4, 15) if found[n]["affected_share"] < 1e-3]
    assert len(clean) >= 5 and all(not found[n]["recommendation"]["divert"] for n in clean)
    # The media lot changed at 10 h: fractions before it are lot 1 (and what predates
    # tracing), after it ever more lot 2.
    lot2 = [found[n]["lots"].get("2", 0.0) for n in range(4, 15)]
    assert lot2[0] == 0 and lot2 == sorted(lot2) and lot2[-1] > 0.3
    # The excursion, recommendations: in the audit trail; the pool: once fraction 12 is in.
    episodes = [
        (n["action"], n["details"]["process_time_h"])
        for n in io.notes
        if n["action"].startswith("trace.deviation")
    ]
    assert episodes == [
        ("trace.deviation_started", pytest.approx(EXCURSION_H[0])),
        ("trace.deviation_ended", pytest.approx(EXCURSION_H[1])),
    ]
    noted = [
        n["details"]["fraction"] for n in io.notes if n["action"] == "trace.divert_recommended"
    ]
    assert noted == [n for n in range(1, 15) if found[n]["recommendation"]["divert"]]
    path = tmp_path / "data" / "traceability" / "trace.genealogy.jsonl"
    (pool,) = [json.loads(x) for x in path.read_text().splitlines() if '"pool"' in x]
    assert pool["present"] == [9, 10, 11, 12] and pool["missing"] == []
    weights = [found[n]["loaded"] for n in range(9, 13)]
    mixed = sum(w * found[n]["affected_share"] for w, n in zip(weights, range(9, 13), strict=True))
    assert pool["affected_share"] == pytest.approx(mixed / sum(weights))
    assert io.values("pool_affected_share") == [pool["affected_share"]]


def test_memory_stays_bounded_over_a_long_run(tmp_path: Path) -> None:
    processor = bound(tmp_path)
    io = _IO()
    run_line(processor, io, 200.0, every_h=0.05)
    # Only bins still in the line (the tank's traces down to 1e-9 of its content) or in a
    # column are kept: a day's worth at most, not 200 h of them.
    oldest = min(b.start_h for b in processor._bins.values())
    assert oldest > 200 - 24 and len(processor._bins) < 24 / 0.05
    # The reactor's media entries: older ones merge into a tail by (lot, deviations).
    assert len(processor._reactor.entries) < 24 * 14 / 0.5 and len(processor._reactor.tail) <= 3
    assert processor.counts["fractions"] == 99


def test_a_restarted_processor_continues_after_the_last_fraction_it_wrote(tmp_path: Path) -> None:
    processor = bound(tmp_path)
    run_line(processor, _IO(), 9.0)
    assert sorted(fractions(tmp_path)) == [1, 2, 3, 4]
    # The gateway restarts while the skid elutes fraction 4: 5 and 6 come next, once each.
    again = bound(tmp_path)
    io = _IO()
    run_line(again, io, 13.0, start_h=8.5)
    assert sorted(fractions(tmp_path)) == [1, 2, 3, 4, 5, 6] and io.values("fraction") == [5, 6]
    # A numbering that starts afresh (a new campaign) is a new baseline, not fraction 0.
    run_line(again, io, 5.0)
    assert io.values("fraction") == [5, 6, 1, 2]


def test_a_model_fitted_on_another_unit_is_refused(tmp_path: Path) -> None:
    options = TraceOptions.model_validate(
        traceline.options(str(surge_model(tmp_path, unit="hold_loop")))
    )
    with pytest.raises(ValueError, match="fitted on unit 'hold_loop', not 'surge_tank'"):
        TraceProcessor(options, PluginContext("trace", tmp_path))


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ([[1, 4], [4, 6]], "overlap"),
        ([[5, 8], [1, 6]], "overlap"),
        ([[3, 2]], "no range"),
    ],
)
def test_pools_that_overlap_are_refused(
    tmp_path: Path, pools: list[list[int]], message: str
) -> None:
    doc = traceline.options("m.json", pools=[{"name": f"p{k}", "fractions": f}
                                             for k, f in enumerate(pools)])  # fmt: skip
    with pytest.raises(ValueError, match=message):
        TraceOptions.model_validate(doc)


def test_late_samples_are_used_and_a_new_batch_restarts_the_line(tmp_path: Path) -> None:
    processor = bound(tmp_path)
    io = _IO()
    run_line(processor, io, 9.0)
    steps = processor.counts["steps"]
    # Another instrument's sample, 0.3 process h late (its slower path): used, no restart.
    late = round(8.7 * HOUR_NS)
    now = round(9.0 * HOUR_NS)
    processor.process(Sample("a/line/vcd", 1.0, "", late, now, Quality.GOOD, 0), io)  # type: ignore[arg-type]
    assert processor.counts["time_went_back"] == 0 and processor._bins
    # Stamped far ahead of its arrival (a clock stepped forward): not used at all.
    ahead = now + 10 * HOUR_NS
    processor.process(Sample("a/line/vcd", 1.0, "", ahead, now, Quality.GOOD, 0), io)  # type: ignore[arg-type]
    assert processor.counts["future_stamped"] == 1 and processor.counts["steps"] == steps
    # The batch age restarts (a new batch): the line's state is unknown again.
    early = round(1.0 * HOUR_NS)
    processor.process(Sample("a/line/vcd", 1.0, "", early, early, Quality.GOOD, 0), io)  # type: ignore[arg-type]
    assert processor.counts["time_went_back"] == 1 and not processor._bins


def test_a_genealogy_the_disk_refuses_is_kept_and_written_in_order_later(tmp_path: Path) -> None:
    processor = bound(tmp_path)
    io = _IO()
    run_line(processor, io, 7.0)
    path = tmp_path / "data" / "traceability" / "trace.genealogy.jsonl"
    text = path.read_text()
    path.unlink()
    path.mkdir()  # every append now fails (as on a full or read-only disk)
    run_line(processor, io, 13.0, start_h=7.0)
    assert processor.counts["genealogy_write_failures"] >= 3
    assert processor.status()["genealogy_lines_waiting"] == 3  # fractions 4, 5, 6
    path.rmdir()
    path.write_text(text)
    run_line(processor, io, 15.0, start_h=13.0)
    assert sorted(fractions(tmp_path)) == list(range(1, 8))
    numbers = [json.loads(x)["fraction"] for x in path.read_text().splitlines()]
    assert numbers == sorted(numbers)


def test_a_torn_last_line_is_skipped_and_the_run_continues_after_the_good_ones(
    tmp_path: Path,
) -> None:
    processor = bound(tmp_path)
    run_line(processor, _IO(), 7.0)
    path = tmp_path / "data" / "traceability" / "trace.genealogy.jsonl"
    with path.open("a") as out:
        out.write('{"type": "fraction", "fraction": 4, "col')  # killed mid-write
    again = bound(tmp_path)
    assert again._last_fraction == 3
    io = _IO()
    run_line(again, io, 11.0, start_h=6.5)
    assert io.values("fraction") == [4, 5]
    # The lines written after the restart are lines of their own, not glued onto the torn one.
    genealogy = read_genealogy(path)
    assert [f["fraction"] for f in genealogy.fractions] == [1, 2, 3, 4, 5]
    assert genealogy.skipped == 1


def test_a_fraction_into_which_nothing_was_traced_is_not_released(tmp_path: Path) -> None:
    """A column into which no material was traced (the feed's UV read nothing while it
    loaded): the gateway cannot vouch for what the fraction holds."""
    processor = bound(tmp_path)
    record = processor._describe(5, 1, {}, False, 20.0, 0)
    assert record["recommendation"]["divert"] is True
    assert "no material traced" in record["recommendation"]["why"]


def test_media_entering_during_a_deviation_is_traced_through_the_reactor(tmp_path: Path) -> None:
    """A deviation at the media inlet marks the medium that entered during it: what the harvest
    carries of it rises and washes out as a CSTR's content does (tau = V / perfusion)."""
    SIGNALS["media_alarm"] = "1"
    try:
        extra = {
            "name": "media_alarm",
            "signal": "line/media_alarm",
            "kind": "flag",
            "at": "media",
            "padding_h": 0.0,
        }
        doc = traceline.options(str(surge_model(tmp_path)))
        doc["deviations"] = [*doc["deviations"], extra]
        processor = TraceProcessor(
            TraceOptions.model_validate(doc), PluginContext("trace", tmp_path / "data")
        )
        processor.bind(
            {name: Signal(f"a/{name}", SIGNALS[name.split("/")[1]]) for name in processor.inputs()}
        )
        io = _IO()
        every = 0.01
        for k in range(round(30.0 / every)):
            t = k * every
            ts = round(t * HOUR_NS)
            values = values_at(t)
            values["media_alarm"] = 2.0 if 4.0 <= t < 6.0 else 0.0
            for name, value in values.items():
                sample = Sample(f"a/line/{name}", value, SIGNALS[name], ts, ts, Quality.GOOD, 0)
                processor.process(sample, io)  # type: ignore[arg-type]
    finally:
        del SIGNALS["media_alarm"]
    tau = traceline.REACTOR_ML / traceline.PERFUSION_ML_H

    def flagged_at(h: float) -> float:  # share of the reactor's content that entered 4-6 h
        if h <= 4.0:
            return 0.0
        if h <= 6.0:
            return 1 - math.exp(-(h - 4.0) / tau)
        return (1 - math.exp(-2.0 / tau)) * math.exp(-(h - 6.0) / tau)

    found = fractions(tmp_path)
    for number in range(4, 15):
        f = found[number]
        # From the fraction's own harvest windows, what the reactor's mixing says.
        expected = sum(s * flagged_at((a + b) / 2) for a, b, s in f["bins"])
        assert f["deviations"]["media_alarm"] == pytest.approx(expected, abs=0.003), number
    assert max(found[n]["deviations"]["media_alarm"] for n in range(4, 15)) > 0.05


def test_a_tank_whose_level_a_signal_gives_stands_in_for_an_rtd_model(tmp_path: Path) -> None:
    """The surge tank as one mixed tank of measured volume (``kind: cstr``): the fractions hold
    what a CSTR of that volume passes on (the analytic RTD of one tank)."""
    SIGNALS["tank_volume"] = "mL"
    try:
        doc = traceline.options("unused.json")
        doc["line"] = [
            {"name": "surge_tank", "kind": "cstr", "volume": "line/tank_volume",
             "flow": "line/feed_flow"}
        ]  # fmt: skip
        processor = TraceProcessor(
            TraceOptions.model_validate(doc), PluginContext("trace", tmp_path / "data")
        )
        processor.bind(
            {name: Signal(f"a/{name}", SIGNALS[name.split("/")[1]]) for name in processor.inputs()}
        )
        io = _IO()
        every = 0.01
        for k in range(round(30.0 / every)):
            t = k * every
            ts = round(t * HOUR_NS)
            values = values_at(t)
            values["tank_volume"] = 120.0
            for name, value in values.items():
                sample = Sample(f"a/line/{name}", value, SIGNALS[name], ts, ts, Quality.GOOD, 0)
                processor.process(sample, io)  # type: ignore[arg-type]
    finally:
        del SIGNALS["tank_volume"]
    cstr = {"n_tanks": 1, "volume_mL": 120.0, "dead_volume_mL": 0.0}
    window = (EXCURSION_H[0] - PADDING_H, EXCURSION_H[1] + PADDING_H)
    found = fractions(tmp_path)
    for number in range(4, 15):
        f = found[number]
        affected = f["deviations"]["temperature"] + f["unknown_share"]
        assert affected == pytest.approx(expected_share(number, window, cstr), abs=0.02), number
    assert max(found[n]["affected_share"] for n in range(4, 15)) > 0.3
