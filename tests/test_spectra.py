"""Spectra as first-class values: the types, their JSON form, the store, the runtime and export.

The spectrometer driver and its emulator have their own tests; here a small inline driver
publishes spectra through the real runtime into a real store, and the JCAMP-DX export is read
back with a third-party reader (the ``jcamp`` package).
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jcamp
import numpy as np
import pytest
from conftest import running, wait_for, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel, ConfigDict
from test_runtime import Recorder, SinkOptions

from gateway import (
    Channel,
    InstrumentIO,
    PluginContext,
    Quality,
    Registry,
    Sample,
    SignalKind,
    SpectralAxis,
    Spectrum,
    StoreError,
    UnitError,
    build_registry,
    hookimpl,
    load_plan,
    sample_to_json,
    sample_to_json_dict,
)
from gateway.cli import main as patgw
from gateway.export import write_csv, write_jcamp, write_jsonl
from gateway.spectra import count_peaks, decode_values, encode_values, spectrum_summary
from gateway.store import SampleStore
from gateway.store.sqlite import SCHEMA_VERSION

NS = 1_800_000_000_000_000_000


def raman_axis(points: int = 64, offset: float = 0.0) -> SpectralAxis:
    return SpectralAxis(np.linspace(200.0, 2000.0, points) + offset, "cm-1")


# --- the types ------------------------------------------------------------------------------


def test_spectrum_copies_and_freezes_what_it_is_given() -> None:
    axis_values = np.linspace(100.0, 200.0, 4)
    axis = SpectralAxis(axis_values, "cm-1")
    buffer = np.array([1, 2, 3, 4], dtype=np.uint16)
    spectrum = Spectrum(buffer, axis)
    buffer[0] = 99
    axis_values[0] = -1.0
    assert spectrum.values.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert spectrum.values.dtype == np.float32
    assert axis.values[0] == 100.0
    with pytest.raises(ValueError, match="read-only"):
        spectrum.values[0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        axis.values[0] = 5.0


def test_axis_key_identifies_unit_and_values() -> None:
    a, b = raman_axis(), raman_axis()
    assert a.key == b.key and a == b and hash(a) == hash(b)
    assert raman_axis(offset=1e-9).key != a.key
    assert SpectralAxis(a.values, "nm").key != a.key


@pytest.mark.parametrize(
    ("values", "unit", "error", "match"),
    [
        ([[1.0, 2.0], [3.0, 4.0]], "cm-1", ValueError, "1-D"),
        ([1.0], "cm-1", ValueError, "2 or more"),
        ([1.0, float("nan")], "cm-1", ValueError, "NaN"),
        ([1.0, 2.0], "cm-1x", UnitError, "cm-1x"),
    ],
)
def test_invalid_axes_are_refused(values: Any, unit: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SpectralAxis(values, unit)


def test_spectrum_must_match_its_axis() -> None:
    axis = raman_axis(8)
    with pytest.raises(ValueError, match="7 values for an axis of 8"):
        Spectrum(np.zeros(7), axis)
    with pytest.raises(ValueError, match="1-D"):
        Spectrum(np.zeros((2, 4)), axis)
    with pytest.raises(TypeError, match="SpectralAxis"):
        Spectrum(np.zeros(8), np.arange(8))  # type: ignore[arg-type]


def test_stored_form_round_trips_and_rejects_other_bytes() -> None:
    spectrum = Spectrum(np.arange(64) * 1.5, raman_axis())
    key, values = decode_values(encode_values(spectrum))
    assert key == spectrum.axis.key
    assert np.array_equal(values, spectrum.values)
    for blob in (b"", b"SPC1", b"XXXX" + bytes(20), encode_values(spectrum)[:-1]):
        with pytest.raises(ValueError, match="not a stored spectrum"):
            decode_values(blob)


def test_summary_counts_the_bands_not_the_noise() -> None:
    axis = SpectralAxis(np.linspace(200, 1800, 2048), "cm-1")
    x = axis.values
    rng = np.random.default_rng(3)
    y = 1000 + 0.2 * x + rng.normal(0, 8, x.size)
    for centre, height in ((520, 400), (1125, 900), (1640, 1500)):
        y += height * np.exp(-(((x - centre) / 8) ** 2))
    text = spectrum_summary(Spectrum(y, axis))
    assert text.startswith("2048 pts 200-1800 cm-1, max ")
    assert text.endswith(" 3 peaks")
    assert count_peaks(np.ones(10)) == 0


# --- JSON form ------------------------------------------------------------------------------


def spectrum_sample(spectrum: Spectrum | None, **changes: Any) -> Sample:
    sample = Sample("r/raman/spectrum", spectrum, "{counts}", NS, NS + 7, Quality.GOOD, 5)
    return sample._replace(**changes)


def test_json_form_of_a_spectrum_carries_values_and_axis() -> None:
    axis = SpectralAxis([400.0, 1000.5, 1800.25], "cm-1")
    sample = spectrum_sample(Spectrum([1.0, 2.5, 65535.0], axis))
    parsed = json.loads(sample_to_json(sample))
    assert list(parsed) == [
        *("signal", "value", "unit", "axis", "source_ts", "gateway_ts", "quality", "seq"),
    ]
    assert parsed["value"] == [1.0, 2.5, 65535.0]
    assert parsed["axis"] == {"key": axis.key, "unit": "cm-1", "values": [400.0, 1000.5, 1800.25]}
    bad = spectrum_sample(None, quality=Quality.BAD, reason="no reply")
    assert json.loads(sample_to_json(bad))["value"] is None


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.integers(2, 40),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    st.sampled_from([Quality.GOOD, Quality.UNCERTAIN]),
)
def test_fast_json_equals_json_dumps_and_reads_back_exactly(
    values: np.ndarray[Any, Any], quality: Quality
) -> None:
    axis = SpectralAxis(np.arange(values.size, dtype=np.float64) * 1.1 + 100, "cm-1")
    sample = spectrum_sample(Spectrum(values, axis), quality=quality, reason="saturated: 1")
    text = sample_to_json(sample)
    assert text == json.dumps(
        sample_to_json_dict(sample), separators=(",", ":"), ensure_ascii=False
    )
    back = np.array(json.loads(text)["value"], dtype=np.float32)
    assert np.array_equal(back, values)  # the shortest decimal still reads as the same float32


# --- store ----------------------------------------------------------------------------------


def test_store_keeps_spectra_compact_and_each_axis_once(tmp_path: Path) -> None:
    from gateway import Signal

    store = SampleStore(tmp_path / "s.sqlite")
    try:
        signal = Signal("r/raman/spectrum", "{counts}", SignalKind.SPECTRUM)
        def_id = store.define([signal])[signal.id].def_id
        first, second = raman_axis(2048), raman_axis(2048, offset=0.5)
        spectra = [Spectrum(np.full(2048, float(i)), first if i < 3 else second) for i in range(5)]
        rows = [(def_id, i, NS + i, NS + i, 2, s, None) for i, s in enumerate(spectra)]
        store.commit(rows[:3], {signal.id: 3})
        store.commit(rows[3:], {signal.id: 5})
        back = list(store.samples())
    finally:
        store.close()
    assert [s.value for s in back] == spectra
    assert back[3].value.axis == second and back[0].value.axis == first
    db = sqlite3.connect(tmp_path / "s.sqlite")
    try:
        assert db.execute("SELECT count(*) FROM axis").fetchone()[0] == 2
        sizes = [r[0] for r in db.execute("SELECT length(value) FROM sample")]
        assert sizes == [20 + 4 * 2048] * 5  # float32 binary, not JSON text
    finally:
        db.close()


def test_a_failed_commit_does_not_count_its_axis_as_stored(tmp_path: Path) -> None:
    from gateway import Signal

    store = SampleStore(tmp_path / "s.sqlite")
    try:
        signal = Signal("x", "{counts}", SignalKind.SPECTRUM)
        def_id = store.define([signal])["x"].def_id
        axis = raman_axis(2048)
        batch = [(def_id, i, NS, NS, 2, Spectrum(np.ones(2048), axis), None) for i in range(50)]
        store.limit_pages(store._db.execute("PRAGMA page_count").fetchone()[0])  # full disk
        with pytest.raises(StoreError, match="full"):
            store.commit(batch, {"x": 50})
        store.limit_pages(1_000_000)
        store.commit(batch, {"x": 50})  # the retry must bring the axis along
        back = list(store.samples())
    finally:
        store.close()
    assert [s.value for s in back] == [row[5] for row in batch]


def test_a_damaged_spectrum_row_is_reported_bad_and_the_rest_still_reads(tmp_path: Path) -> None:
    from gateway import Signal

    store = SampleStore(tmp_path / "s.sqlite")
    try:
        signal = Signal("x", "{counts}", SignalKind.SPECTRUM)
        def_id = store.define([signal])["x"].def_id
        a, b = raman_axis(), raman_axis(offset=1.0)
        spectra = [Spectrum(np.full(64, float(i)), axis) for i, axis in enumerate((a, b, a, a))]
        rows = [(def_id, i, NS + i, NS + i, 2, x, None) for i, x in enumerate(spectra)]
        store.commit(rows, {"x": 4})
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    with db:
        db.execute("DELETE FROM axis WHERE key=?", (b.key,))  # an orphaned spectrum
        db.execute("UPDATE sample SET value=x'00' WHERE seq=2")  # a corrupt one
    db.close()
    store = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        back = list(store.samples())
    finally:
        store.close()
    assert [s.seq for s in back] == [0, 1, 2, 3]
    assert back[0].value == spectra[0] and back[3].value == spectra[3]
    for damaged in back[1:3]:
        assert damaged.quality == Quality.BAD and damaged.value is None
    assert back[1].reason == f"stored spectrum unreadable: its axis {b.key} is missing or corrupt"
    assert (back[2].reason or "").startswith("stored spectrum unreadable: corrupt value")


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE signal (name TEXT PRIMARY KEY, next_seq INTEGER NOT NULL DEFAULT 0)"
        " WITHOUT ROWID; PRAGMA user_version=1;"
    )
    db.close()
    SampleStore(path).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT count(*) FROM axis").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM sink_cursor").fetchone()[0] == 0
    finally:
        db.close()


# --- runtime --------------------------------------------------------------------------------


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: int = 256


class Spectrometer:
    """Publishes a spectrum every 10 ms, changing calibration halfway, plus mistakes."""

    def __init__(self, options: Options, context: PluginContext) -> None:
        self.points = options.points

    def channels(self) -> Sequence[Channel]:
        return [
            Channel("spectrum", "{counts}", SignalKind.SPECTRUM),
            Channel("temperature", "Cel"),
        ]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        spectrum, temperature = io.output("spectrum"), io.output("temperature")
        axes = [raman_axis(self.points), raman_axis(self.points, offset=2.0)]
        for n in range(12):
            axis = axes[n // 6]
            if n == 2:
                spectrum.publish([1.0, 2.0])  # a list, not a Spectrum
            elif n == 3:
                values = np.full(self.points, 5.0)
                values[7] = np.nan
                spectrum.publish(Spectrum(values, axis))
            elif n == 4:
                temperature.publish(Spectrum(np.zeros(self.points), axis))  # wrong signal
                spectrum.publish(Spectrum(np.full(self.points, 4.0), axis))
            else:
                spectrum.publish(
                    Spectrum(np.full(self.points, float(n)), axis),
                    quality=Quality.UNCERTAIN if n == 5 else Quality.GOOD,
                    reason="saturated: 3 pixels" if n == 5 else None,
                )
            await asyncio.sleep(0.01)
        await asyncio.Event().wait()


class Inline:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("spectrometer", Spectrometer, Options)

    @hookimpl
    def pat_gateway_register_sinks(self, registry: Registry) -> None:
        registry.add_sink("recorder", Recorder, SinkOptions)


def spectra_plan(tmp_path: Path, signals: list[dict[str, Any]] | None = None) -> Any:
    config = {
        "area": "r",
        "site": "lab",
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [
            {
                "id": "raman",
                "driver": "spectrometer",
                "signals": signals or [{"id": "spectrum"}, {"id": "temperature"}],
            }
        ],
        "sinks": [{"id": "rec", "type": "recorder"}],
    }
    path = write_config(tmp_path / "g.yaml", config)
    return load_plan(path, build_registry([Inline()], entry_points=False)), path


@pytest.mark.asyncio
async def test_spectra_run_through_runtime_store_and_sinks(tmp_path: Path) -> None:
    plan, _ = spectra_plan(tmp_path)
    async with running(plan) as (gateway, _task):
        await wait_for(lambda: gateway.stats.committed >= 13, what="13 samples committed")
        recorder = plan.sinks[0].instance
        await wait_for(lambda: len(recorder.received) >= 13, what="sink got every sample")
    store = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        stored = list(store.samples("r/raman/spectrum"))
        temperature = list(store.samples("r/raman/temperature"))
    finally:
        store.close()
    assert [s.seq for s in stored] == list(range(12))
    by_seq = {s.seq: s for s in stored}
    assert by_seq[2].quality == Quality.BAD and by_seq[2].value is None
    assert "expected a Spectrum, got list" in (by_seq[2].reason or "")
    assert by_seq[3].quality == Quality.BAD and by_seq[3].value is None
    assert by_seq[3].reason == "non-finite values in 1 points"
    assert by_seq[5].quality == Quality.UNCERTAIN and by_seq[5].value.values[0] == 5.0
    assert by_seq[0].value.axis != by_seq[11].value.axis  # the new calibration was stored
    assert by_seq[11].value.values.tolist() == [11.0] * 256
    assert temperature[0].quality == Quality.BAD
    assert "spectrum published on a scalar signal" in (temperature[0].reason or "")
    sent = [s for s in recorder.received if s.signal == "r/raman/spectrum"]
    assert [s.value for s in sent] == [s.value for s in stored]


@pytest.mark.asyncio
async def test_spectrum_values_are_converted_like_scalars(tmp_path: Path) -> None:
    # A made-up but valid conversion: counts to kilo-counts.
    plan, _ = spectra_plan(
        tmp_path, [{"id": "spectrum", "unit": "10*3.{counts}"}, {"id": "temperature"}]
    )
    async with running(plan) as (gateway, _task):
        await wait_for(lambda: gateway.stats.committed >= 13, what="13 samples committed")
    store = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        last = list(store.samples("r/raman/spectrum"))[-1]
    finally:
        store.close()
    assert last.unit == "10*3.{counts}"
    assert np.allclose(last.value.values, 0.011)


# --- export ---------------------------------------------------------------------------------


def stored_samples(tmp_path: Path) -> list[Sample]:
    store = SampleStore(tmp_path / "s.sqlite", read_only=True)
    try:
        return list(store.samples())
    finally:
        store.close()


@pytest.mark.asyncio
async def test_export_formats_and_a_third_party_jcamp_reader(tmp_path: Path) -> None:
    plan, config_path = spectra_plan(tmp_path)
    async with running(plan) as (gateway, _task):
        await wait_for(lambda: gateway.stats.committed >= 13, what="13 samples committed")
    samples = stored_samples(tmp_path)
    spectra = [s for s in samples if isinstance(s.value, Spectrum)]
    assert len(spectra) == 10

    text = io.StringIO()
    assert write_jsonl(samples, text).written == len(samples)
    lines = [json.loads(line) for line in text.getvalue().splitlines()]
    with_axis = [line for line in lines if "axis" in line]
    assert len(with_axis) == 10 and with_axis[0]["axis"]["unit"] == "cm-1"

    text = io.StringIO()
    result = write_csv(samples, text)
    assert result.written == len(samples) - 10
    assert list(result.skipped.values()) == [10]

    # Several spectra: a compound (LINK) file, one block per spectrum.
    out = tmp_path / "all.jdx"
    assert patgw(["export", str(config_path), "--format", "jcamp", "-o", str(out)]) == 0
    parsed = jcamp.readfile(str(out))
    assert parsed["data type"] == "LINK" and parsed["blocks"] == 10
    assert len(parsed["children"]) == 10
    for child, sample in zip(parsed["children"], spectra, strict=True):
        assert child["data type"] == "RAMAN SPECTRUM"
        assert child["xunits"] == "1/CM"
        assert child["$patgw seq"] == sample.seq
        assert np.array_equal(child["x"], sample.value.axis.values)
        assert np.array_equal(child["y"].astype(np.float32), sample.value.values)

    # Filtered by signal and time: still the same ten, in one compound file.
    single = tmp_path / "filtered.jdx"
    since = "2000-01-01T00:00:00Z"
    filters = ["--signal", "r/raman/spectrum", "--since", since]
    code = patgw(["export", str(config_path), "--format", "jcamp", *filters, "-o", str(single)])
    assert code == 0
    with single.open() as handle:
        assert sum(1 for line in handle if line.startswith("##TITLE")) == 1 + 10

    # One spectrum: a plain file.
    lone = tmp_path / "lone.jdx"
    with lone.open("w") as handle:
        assert write_jcamp(spectra[-1:], handle, "test").written == 1
    parsed = jcamp.readfile(str(lone))
    assert "children" not in parsed and parsed["npoints"] == 256
    assert parsed["$patgw quality"] == "good"


@pytest.mark.asyncio
async def test_jcamp_export_without_spectra_is_an_error_and_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, config_path = spectra_plan(tmp_path)
    async with running(plan) as (gateway, _task):
        await wait_for(lambda: gateway.stats.committed >= 13, what="13 samples committed")
    out = tmp_path / "none.jdx"
    args = ["export", str(config_path), "--format", "jcamp", "--signal", "*/temperature"]
    assert patgw([*args, "-o", str(out)]) == 2
    assert not out.exists()
    assert "no spectra of signals matching '*/temperature'" in capsys.readouterr().err
