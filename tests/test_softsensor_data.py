"""Calibration data: reading exports and laboratory CSV files, and matching them in time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway import Quality, Sample, SpectralAxis, Spectrum, parse_iso_ns, sample_to_json
from gateway.model import historical_json
from plugins.softsensor.data import (
    DataError,
    References,
    SpectraSet,
    match,
    read_references_csv,
    read_spectra_jsonl,
)

AXIS = SpectralAxis([400.0, 500.0, 600.0, 700.0], "cm-1")
T0 = parse_iso_ns("2026-11-26T16:00:00Z")
S = 1_000_000_000
RAMAN = "reactor1/raman/spectrum"


def spectrum_line(
    ts: int,
    values: list[float],
    signal: str = RAMAN,
    axis: SpectralAxis = AXIS,
    quality: Quality = Quality.GOOD,
    seq: int = 0,
) -> str:
    value = None if values == [] else Spectrum(values, axis)
    reason = None if quality == Quality.GOOD else "saturated"
    return sample_to_json(Sample(signal, value, "{counts}", ts, ts + 5, quality, seq, reason))


def scalar_line(ts: int) -> str:
    return sample_to_json(Sample("reactor1/dcu/ph", 7.01, "[pH]", ts, ts, Quality.GOOD, 0))


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_reads_good_spectra_of_one_signal_and_counts_the_rest(tmp_path: Path) -> None:
    lines = [
        spectrum_line(T0, [1.0, 2.0, 3.0, 4.0]),
        scalar_line(T0 + S),
        spectrum_line(T0 + 60 * S, [0.0, 0.0, 0.0, 0.0], quality=Quality.UNCERTAIN),
        spectrum_line(T0 + 90 * S, [], quality=Quality.BAD),  # a bad spectrum without value
        spectrum_line(T0 + 120 * S, [5.0, 6.5, 7.0, 8.25]),
        historical_json(
            Sample(
                RAMAN, Spectrum([9, 9, 9, 9], AXIS), "{counts}", T0 + 180 * S, 0, Quality.GOOD, 3
            )
        ),
        spectrum_line(T0 + 120 * S, [5.0, 6.5, 7.0, 8.25]),  # exported twice
        "",
    ]
    found = read_spectra_jsonl(write(tmp_path / "export.jsonl", lines))
    assert found.signal == RAMAN and found.unit == "{counts}" and found.axis == AXIS
    assert found.values.dtype == np.float64
    assert found.values.tolist() == [[1, 2, 3, 4], [5, 6.5, 7, 8.25], [9, 9, 9, 9]]
    assert found.source_ts.tolist() == [T0, T0 + 120 * S, T0 + 180 * S]
    assert found.skipped == {
        "not a spectrum": 1,
        "not good quality": 2,
        "duplicate source_ts": 1,
    }


def test_several_spectrum_signals_need_a_glob(tmp_path: Path) -> None:
    other = "reactor2/raman/spectrum"
    path = write(
        tmp_path / "export.jsonl",
        [
            spectrum_line(T0, [1.0, 2.0, 3.0, 4.0]),
            spectrum_line(T0, [1.0, 2.0, 3.0, 4.0], signal=other),
            spectrum_line(T0 + S, [1.0, 2.0, 3.0, 4.0], signal=other),
        ],
    )
    with pytest.raises(
        DataError,
        match=r"export\.jsonl: spectra of several signals: reactor1/raman/spectrum \(1\),"
        r" reactor2/raman/spectrum \(2\); choose one with --signal",
    ):
        read_spectra_jsonl(path)
    found = read_spectra_jsonl(path, "reactor2/*")
    assert found.signal == other and len(found.values) == 2
    assert found.skipped == {"other signal": 1}
    with pytest.raises(DataError, match=r"no good-quality spectra matching 'r9/\*' \(skipped: 3"):
        read_spectra_jsonl(path, "r9/*")


def test_spectra_on_two_axes_are_refused_with_both_named(tmp_path: Path) -> None:
    recalibrated = SpectralAxis([401.0, 501.0, 601.0, 701.0], "cm-1")
    path = write(
        tmp_path / "export.jsonl",
        [
            spectrum_line(T0, [1.0, 2.0, 3.0, 4.0]),
            spectrum_line(T0 + S, [1.0, 2.0, 3.0, 4.0]),
            spectrum_line(T0 + 2 * S, [1.0, 2.0, 3.0, 4.0], axis=recalibrated),
        ],
    )
    with pytest.raises(DataError) as caught:
        read_spectra_jsonl(path)
    message = str(caught.value)
    assert "on 2 different axes" in message
    assert f"{AXIS.key[:12]} (4 points, cm-1): 2 spectra" in message
    assert f"{recalibrated.key[:12]} (4 points, cm-1): 1 spectra" in message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"x\.jsonl:2: not a JSON object"),
        ('{"value": 1}', r"x\.jsonl:2: not an exported sample \(no 'signal'\)"),
        (
            spectrum_line(T0, [1.0, 2.0, 3.0, 4.0]).replace("[1.0,2.0,3.0,4.0]", "[1.0,2.0]"),
            r"x\.jsonl:2: column 'value': 2 values on an axis of 4",
        ),
        (
            spectrum_line(T0, [1.0, 2.0, 3.0, 4.0]).replace("[1.0,2.0,3.0,4.0]", '[1,2,3,"x"]'),
            r"x\.jsonl:2: column 'value': not a list of numbers",
        ),
        (
            spectrum_line(T0, [1.0, 2.0, 3.0, 4.0]).replace("2026-11-26T16", "Thursday"),
            r"x\.jsonl:2: column 'source_ts': 'Thursday:00:00.000000000Z' is not an ISO 8601",
        ),
    ],
)
def test_malformed_export_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "x.jsonl", [spectrum_line(T0 - S, [1.0, 2.0, 3.0, 4.0]), line])
    with pytest.raises(DataError, match=message):
        read_spectra_jsonl(path)
    with pytest.raises(DataError, match=r"missing\.jsonl: cannot read \(No such file"):
        read_spectra_jsonl(tmp_path / "missing.jsonl")


def test_reads_a_reference_csv(tmp_path: Path) -> None:
    path = tmp_path / "lab.csv"
    path.write_text(
        "\ufefftime,batch,glucose [g/L], lactate [g/L]\n"  # Excel's byte order mark, spaces
        "2026-11-26T16:00:05Z,B1,4.5,0.8\n"
        "\n"
        "2026-11-26T17:00:00+01:00,B1,,1.2\n"  # 16:00 UTC; glucose not measured
        "2026-11-26T16:30:00.25Z,B2,3.0,\n",
        encoding="utf-8",
    )
    refs = read_references_csv(path)
    assert refs.targets == (("glucose", "g/L"), ("lactate", "g/L"))
    assert refs.times.tolist() == [T0 + 5 * S, T0, T0 + 1800 * S + S // 4]
    assert np.array_equal(refs.values, [[4.5, 0.8], [np.nan, 1.2], [3.0, np.nan]], equal_nan=True)
    assert refs.batches == ("B1", "B1", "B2")
    path.write_text("time,glucose [g/L]\n2026-11-26T16:00:05Z,4.5\n", encoding="utf-8")
    assert read_references_csv(path).batches is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"lab\.csv: empty file"),
        ("when,glucose [g/L]\n", r"lab\.csv:1: no 'time' column"),
        ("time,batch\n", r"lab\.csv:1: no target column"),
        ("time,glucose g/L\n", r"lab\.csv:1: column 'glucose g/L': expected 'name \[unit\]'"),
        ("time,glucose [grams]\n", r"lab\.csv:1: column 'glucose \[grams\]': unknown UCUM"),
        ("time,a [g/L],a [mg/L]\n", r"lab\.csv:1: column 'a \[mg/L\]': target 'a' appears twice"),
        ("time,glucose [g/L]\n", r"lab\.csv: no reference rows after the header"),
        (
            "time,glucose [g/L]\n2026-11-26T16:00:00Z,1\n2026-11-26 16:05,2\n",
            r"lab\.csv:3: column 'time': '2026-11-26 16:05' has no UTC offset",
        ),
        (
            "time,glucose [g/L]\n2026-11-26T16:00:00Z,1\n2026-13-26T16:05Z,2\n",
            r"lab\.csv:3: column 'time': '2026-13-26T16:05Z' is not an ISO 8601 time",
        ),
        (
            "time,glucose [g/L]\n2026-11-26T16:00:00Z,1\n\n2026-11-26T16:05Z,n.d.\n",
            r"lab\.csv:4: column 'glucose \[g/L\]': 'n\.d\.' is not a number",
        ),
        (
            "time,glucose [g/L]\n2026-11-26T16:00:00Z,inf\n",
            r"lab\.csv:2: column 'glucose \[g/L\]': 'inf' is not a finite number",
        ),
        (
            "time,glucose [g/L]\n2026-11-26T16:00:00Z,1,2\n",
            r"lab\.csv:2: 3 cells, the header has 2",
        ),
        (
            "time,batch,glucose [g/L]\n2026-11-26T16:00:00Z,,1\n",
            r"lab\.csv:2: column 'batch': empty",
        ),
    ],
)
def test_csv_errors_name_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "lab.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_references_csv(path)


def spectra_at(*seconds: float) -> SpectraSet:
    times = np.array([T0 + round(s * S) for s in seconds], dtype=np.int64)
    values = np.arange(len(seconds), dtype=np.float64)[:, None] * np.ones((1, 4))
    return SpectraSet(AXIS, values, times, RAMAN, "{counts}", {})


def references_at(*seconds: float, batches: tuple[str, ...] | None = None) -> References:
    times = np.array([T0 + round(s * S) for s in seconds], dtype=np.int64)
    values = np.arange(len(seconds), dtype=np.float64)[:, None] * 10.0
    return References(times, values, (("glucose", "g/L"),), batches)


def test_each_reference_gets_the_nearest_spectrum_within_the_gap() -> None:
    # Spectra (out of order in the file) at 0, 100, 200 s: spectrum row i has value i.
    spectra = spectra_at(200.0, 0.0, 100.0)
    refs = references_at(-30.0, 40.0, 60.0, 150.0, 290.0, 500.0, batches=tuple("ABCDEF"))
    matched = match(spectra, refs, max_gap_s=90.0)
    # -30 → 0 s; 40 → 0 s; 60 → 100 s; 150 → a tie, the earlier (100 s); 290 → 200 s (90 s
    # away, just within); 500 → nothing within 90 s.
    assert matched.x[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 0.0]
    assert matched.source_ts.tolist() == [T0, T0, T0 + 100 * S, T0 + 100 * S, T0 + 200 * S]
    assert matched.y[:, 0].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert matched.groups == ("A", "B", "C", "D", "E")
    assert matched.unmatched == 1
    tight = match(spectra, refs, max_gap_s=30.0)
    assert tight.y[:, 0].tolist() == [0.0] and tight.unmatched == 5
    assert match(spectra_at(), refs).unmatched == 6
    with pytest.raises(ValueError, match="max_gap_s"):
        match(spectra, refs, max_gap_s=-1.0)


def test_matched_pairs_are_in_time_order_whatever_the_csv_row_order() -> None:
    # Cross-validation takes contiguous blocks of the matched rows as blocks of time: the
    # laboratory's rows (sorted by analyte, by batch, pasted from two sheets) must not change
    # them. Replicates (two references at 60 s, one spectrum) are ordered by their values.
    spectra = spectra_at(200.0, 0.0, 100.0, 300.0)
    seconds = [0.0, 60.0, 60.0, 110.0, 200.0, 290.0, 500.0]
    values = [[1.0], [7.0], [5.0], [2.0], [np.nan], [4.0], [9.0]]
    batches = ("A", "B", "C", "D", "E", "F", "G")
    ordered = match(spectra, References(
        np.array([T0 + round(s * S) for s in seconds], dtype=np.int64),
        np.array(values), (("glucose", "g/L"),), batches,
    ))  # fmt: skip
    assert ordered.source_ts.tolist() == sorted(ordered.source_ts.tolist())
    # 0 → 0 s; both 60 and 110 → 100 s; 200 → 200 s; 290 → 300 s; 500 → nothing.
    expected = [1.0, 5.0, 7.0, 2.0, np.nan, 4.0]
    assert np.array_equal(ordered.y[:, 0], expected, equal_nan=True)
    assert ordered.groups == ("A", "C", "B", "D", "E", "F")
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(seconds))
        shuffled = match(spectra, References(
            np.array([T0 + round(seconds[i] * S) for i in order], dtype=np.int64),
            np.array(values)[order], (("glucose", "g/L"),), tuple(batches[i] for i in order),
        ))  # fmt: skip
        assert np.array_equal(shuffled.x, ordered.x)
        assert np.array_equal(shuffled.y, ordered.y, equal_nan=True)
        assert np.array_equal(shuffled.source_ts, ordered.source_ts)
        assert shuffled.groups == ordered.groups and shuffled.unmatched == 1
