"""Calibration data for a soft sensor: exported spectra, laboratory references, and pairs of
the two matched in time.

* Spectra come from ``patgw export --format jsonl``: one sample per line, spectra carrying
  their axis (see ``docs/decisions/0004-spectra-as-data.md``). Only good-quality spectra of one
  signal on one axis are used; everything else is counted, by reason, in
  :attr:`SpectraSet.skipped`.
* References are a CSV file from the laboratory: a ``time`` column (ISO 8601 with a UTC
  offset), an optional ``batch`` column, and one column per analyte headed ``name [unit]``
  (``glucose [g/L]``). An empty cell means "not measured".
* :func:`match` pairs each reference with the spectrum nearest to it in source time, within a
  maximum gap, and returns the pairs in time order whatever the order of the CSV's rows.

Errors are :class:`DataError` (a ``ValueError``) naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway import Quality, SpectralAxis, UnitError, parse_iso_ns, validate_ucum
from gateway.export import sample_from_json

__all__ = [
    "DataError",
    "Matched",
    "References",
    "ScalarSeries",
    "SpectraSet",
    "match",
    "read_references_csv",
    "read_scalar_series",
    "read_spectra_jsonl",
]

Array = NDArray[np.float64]

#: Reasons a line of an export is not used, as counted in :attr:`SpectraSet.skipped`.
NOT_A_SPECTRUM = "not a spectrum"
OTHER_SIGNAL = "other signal"
NOT_GOOD = "not good quality"
DUPLICATE = "duplicate source_ts"

# A target column: "name [unit]". Names become signal names ("glucose", "glucose_t2"), so they
# are kept to letters, digits, "_" and "-".
_TARGET_HEADER = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_-]*)\s*\[(?P<unit>[^\[\]]+)\]$")
# An explicit UTC offset at the end of an ISO 8601 time: Z, +hh:mm, +hhmm or +hh.
_OFFSET = re.compile(r"(?:[Zz]|[+-]\d\d(?::?\d\d)?)$")


class DataError(ValueError):
    """Calibration data that cannot be used; the message names the file, line and column."""


@dataclass(frozen=True, eq=False)
class SpectraSet:
    """Good-quality spectra of one signal on one axis, in file order."""

    axis: SpectralAxis
    #: ``(n, len(axis))``.
    values: Array
    #: Source time of each spectrum, UTC nanoseconds ``(n,)``.
    source_ts: NDArray[np.int64]
    signal: str
    #: Unit of the spectrum values, e.g. ``{counts}``.
    unit: str
    #: Lines not used, by reason: ``"not a spectrum"``, ``"other signal"``, ``"not good
    #: quality"``, ``"duplicate source_ts"``.
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class References:
    """Reference (laboratory) values: ``m`` samples, ``k`` targets."""

    #: When each sample was drawn, UTC nanoseconds ``(m,)``.
    times: NDArray[np.int64]
    #: ``(m, k)``, NaN where a target was not measured.
    values: Array
    #: ``(name, unit)`` of each column of :attr:`values`.
    targets: tuple[tuple[str, str], ...]
    #: The batch of each sample, when the file has a ``batch`` column.
    batches: tuple[str, ...] | None


@dataclass(frozen=True, eq=False)
class Matched:
    """References paired with spectra: row ``i`` of :attr:`x` is the spectrum nearest in time
    to the reference in row ``i`` of :attr:`y`. Rows are in time order (of the spectrum, then
    of the reference)."""

    #: ``(n, p)`` spectra (one spectrum may serve several references).
    x: Array
    #: ``(n, k)`` reference values, NaN where not measured.
    y: Array
    #: Source time of each matched spectrum ``(n,)``.
    source_ts: NDArray[np.int64]
    groups: tuple[str, ...] | None
    #: References with no spectrum within the maximum gap.
    unmatched: int


# --- spectra -----------------------------------------------------------------------------------


@dataclass
class _Spectra:
    """What :func:`read_spectra_jsonl` collects while reading."""

    values: list[Array] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    signals: Counter[str] = field(default_factory=Counter)
    units: dict[str, str] = field(default_factory=dict)
    axes: dict[str, tuple[str, list[float]]] = field(default_factory=dict)
    axis_counts: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    #: Every signal seen carrying a spectrum, and lines without one by signal: a bad spectrum
    #: sample may carry no value (and so no axis), and is told from a scalar only at the end.
    spectrum_signals: set[str] = field(default_factory=set)
    without_axis: Counter[str] = field(default_factory=Counter)

    def settle(self, pattern: str | None) -> None:
        """Count the lines without a spectrum: a signal that carries spectra elsewhere had a
        bad (valueless) one; any other is not a spectrum signal."""
        for name, count in self.without_axis.items():
            if name not in self.spectrum_signals:
                self.skipped[NOT_A_SPECTRUM] += count
            elif pattern is not None and not fnmatch.fnmatchcase(name, pattern):
                self.skipped[OTHER_SIGNAL] += count
            else:
                self.skipped[NOT_GOOD] += count


def read_spectra_jsonl(path: Path, signal: str | None = None) -> SpectraSet:
    """The good-quality spectra in a JSONL export, of the one spectrum signal in it or the one
    matching ``signal`` (a shell-style glob). Duplicates of a source time (the same spectrum
    exported twice) are kept once.

    ``DataError`` when the file cannot be read, a line is malformed, no spectrum is left,
    several spectrum signals remain (naming them), or the spectra are not all on one axis
    (naming the axes and how many spectra each has).
    """
    found = _Spectra()
    for number, sample in _json_lines(path):
        _collect(found, sample, signal, f"{path}:{number}")
    found.settle(signal)
    where = f" matching {signal!r}" if signal else ""
    if not found.signals:
        skipped = _skipped_text(found.skipped)
        raise DataError(f"{path}: no good-quality spectra{where}{skipped}")
    if len(found.signals) > 1:
        names = ", ".join(f"{name} ({count})" for name, count in sorted(found.signals.items()))
        raise DataError(
            f"{path}: spectra of several signals{where}: {names}; choose one with --signal"
        )
    (name,) = found.signals
    axis = _one_axis(found, path)
    values = np.vstack(found.values)
    times = np.array(found.times, dtype=np.int64)
    values, times = _without_duplicates(values, times, found.skipped)
    return SpectraSet(axis, values, times, name, found.units[name], dict(found.skipped))


@dataclass
class ScalarSeries:
    """The good samples of one scalar signal of an export, in file order."""

    signal: str
    unit: str
    times: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def read_scalar_series(path: Path, globs: dict[str, str | None]) -> dict[str, ScalarSeries]:
    """For each role, the good, finite samples of the first signal of a ``patgw export`` JSONL
    file matching the role's glob (``None``: not read). Spectra are skipped."""
    chosen: dict[str, str] = {}
    out: dict[str, ScalarSeries] = {}
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip() or '"axis"' in line:
                continue  # spectra: not read here
            try:
                sample = sample_from_json(line)
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{number}: not a 'patgw export' line ({exc!r})") from None
            for role, glob in globs.items():
                if glob is None or not fnmatch.fnmatchcase(sample.signal, glob):
                    continue
                if chosen.setdefault(role, sample.signal) != sample.signal:
                    continue
                series = out.setdefault(role, ScalarSeries(sample.signal, sample.unit))
                value = sample.value
                if sample.quality != Quality.GOOD or not isinstance(value, int | float):
                    continue
                if math.isfinite(value):
                    series.times.append(sample.source_ts)
                    series.values.append(float(value))
    return out


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with Path(path).open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    sample = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}:{number}: not a JSON object ({exc})") from None
                if not isinstance(sample, dict) or not isinstance(sample.get("signal"), str):
                    raise DataError(f"{path}:{number}: not an exported sample (no 'signal')")
                yield number, sample
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _collect(found: _Spectra, sample: dict[str, Any], pattern: str | None, where: str) -> None:
    """Add one exported sample to ``found``, or count why it is skipped."""
    name = sample["signal"]
    if not isinstance(sample.get("axis"), dict):
        found.without_axis[name] += 1
        return
    found.spectrum_signals.add(name)
    if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
        found.skipped[OTHER_SIGNAL] += 1
        return
    if sample.get("quality") != "good":
        found.skipped[NOT_GOOD] += 1
        return
    axis = sample["axis"]
    key, unit, points = axis.get("key"), axis.get("unit"), axis.get("values")
    if not isinstance(key, str) or not isinstance(unit, str) or not isinstance(points, list):
        raise DataError(f"{where}: column 'axis': expected {{key, unit, values}}")
    values = _spectrum_values(sample.get("value"), len(points), where)
    if found.units.setdefault(name, str(sample.get("unit"))) != sample.get("unit"):
        raise DataError(
            f"{where}: column 'unit': {sample.get('unit')!r}, earlier spectra of {name} were in"
            f" {found.units[name]!r}"
        )
    try:
        found.times.append(parse_iso_ns(str(sample.get("source_ts"))))
    except ValueError:
        raise DataError(
            f"{where}: column 'source_ts': {sample.get('source_ts')!r} is not an ISO 8601 time"
        ) from None
    found.values.append(values)
    found.signals[name] += 1
    found.axes.setdefault(key, (unit, points))
    found.axis_counts[key] += 1


def _spectrum_values(values: Any, points: int, where: str) -> Array:
    if not isinstance(values, list) or len(values) != points:
        size = len(values) if isinstance(values, list) else type(values).__name__
        raise DataError(f"{where}: column 'value': {size} values on an axis of {points}")
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: column 'value': not a list of numbers") from None
    if not np.isfinite(array).all():
        raise DataError(f"{where}: column 'value': contains values that are not finite")
    return array


def _one_axis(found: _Spectra, path: Path) -> SpectralAxis:
    if len(found.axes) > 1:
        described = "; ".join(
            f"{key[:12]} ({len(found.axes[key][1])} points, {found.axes[key][0]}): {count} spectra"
            for key, count in found.axis_counts.most_common()
        )
        raise DataError(
            f"{path}: the spectra are on {len(found.axes)} different axes (a recalibration?):"
            f" {described}; export one calibration at a time (--since)"
        )
    (unit, points) = next(iter(found.axes.values()))
    try:
        return SpectralAxis(np.array(points, dtype=np.float64), unit)
    except (ValueError, TypeError, UnitError) as exc:
        raise DataError(f"{path}: column 'axis': {exc}") from None


def _without_duplicates(
    values: Array, times: NDArray[np.int64], skipped: Counter[str]
) -> tuple[Array, NDArray[np.int64]]:
    """Keep the first spectrum of each source time (an export concatenated with an overlapping
    one, or a sample delivered twice)."""
    _, first = np.unique(times, return_index=True)
    if len(first) == len(times):
        return values, times
    keep = np.sort(first)
    skipped[DUPLICATE] += len(times) - len(keep)
    return values[keep], times[keep]


def _skipped_text(skipped: Counter[str]) -> str:
    if not skipped:
        return " (the file has no samples)"
    return " (skipped: " + ", ".join(f"{n} {why}" for why, n in skipped.most_common()) + ")"


# --- references --------------------------------------------------------------------------------


def read_references_csv(path: Path) -> References:
    """The reference values in a laboratory CSV file (see the module docstring for its form).

    ``DataError`` ``"<file>:<line>: column '<name>': <problem>"`` for a missing ``time``
    column, a header that is not ``name [unit]``, an invalid UCUM unit, a time without UTC
    offset, a value that is not a finite number, a row of the wrong length, or no rows.
    """
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a CSV text file ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file (expected a header: time,[batch,]name [unit],...)")
    header = [cell.strip() for cell in rows[0]]
    time_column, batch_column, targets = _header(header, path)
    times: list[int] = []
    values: list[list[float]] = []
    batches: list[str] = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{number}"
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} cells, the header has {len(header)}")
        times.append(_time(row[time_column], f"{where}: column 'time'"))
        if batch_column is not None:
            batch = row[batch_column].strip()
            if not batch:
                raise DataError(f"{where}: column 'batch': empty (name the batch)")
            batches.append(batch)
        values.append(
            [_value(row[column], f"{where}: column {header[column]!r}") for column, *_ in targets]
        )
    if not times:
        raise DataError(f"{path}: no reference rows after the header")
    return References(
        times=np.array(times, dtype=np.int64),
        values=np.array(values, dtype=np.float64).reshape(len(times), len(targets)),
        targets=tuple((name, unit) for _, name, unit in targets),
        batches=tuple(batches) if batch_column is not None else None,
    )


def _header(header: list[str], path: Path) -> tuple[int, int | None, list[tuple[int, str, str]]]:
    """Positions of ``time`` and ``batch``, and ``(position, name, unit)`` of each target."""
    where = f"{path}:1"
    if "time" not in header:
        raise DataError(f"{where}: no 'time' column (the header is {','.join(header)!r})")
    targets: list[tuple[int, str, str]] = []
    for column, title in enumerate(header):
        if title in ("time", "batch"):
            if header.count(title) > 1:
                raise DataError(f"{where}: column {title!r} appears twice")
            continue
        parsed = _TARGET_HEADER.match(title)
        if parsed is None:
            raise DataError(
                f"{where}: column {title!r}: expected 'name [unit]', e.g. 'glucose [g/L]'"
                " (name: a letter, then letters, digits, _ or -)"
            )
        name, unit = parsed["name"], parsed["unit"].strip()
        try:
            validate_ucum(unit)
        except UnitError as exc:
            raise DataError(f"{where}: column {title!r}: {exc}") from None
        if any(name == other for _, other, _ in targets):
            raise DataError(f"{where}: column {title!r}: target {name!r} appears twice")
        targets.append((column, name, unit))
    if not targets:
        raise DataError(f"{where}: no target column (e.g. 'glucose [g/L]')")
    batch = header.index("batch") if "batch" in header else None
    return header.index("time"), batch, targets


def _time(cell: str, where: str) -> int:
    text = cell.strip()
    if not _OFFSET.search(text):
        raise DataError(
            f"{where}: {text!r} has no UTC offset; write e.g. 2026-11-26T16:00:00Z or"
            " 2026-11-26T17:00:00+01:00"
        )
    try:
        return parse_iso_ns(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not an ISO 8601 time") from None


def _value(cell: str, where: str) -> float:
    text = cell.strip()
    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{where}: {text!r} is not a number (leave the cell empty if not measured)"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {text!r} is not a finite number")
    return value


# --- matching ----------------------------------------------------------------------------------


def match(spectra: SpectraSet, refs: References, max_gap_s: float = 60.0) -> Matched:
    """Pair each reference with the spectrum nearest to it in source time, if one lies within
    ``max_gap_s`` (a tie goes to the earlier spectrum); count the others as unmatched.

    A spectrum may serve several references (replicates drawn together). Rows are sorted by
    the spectrum's source time, then the reference's time, then the values: the same data in
    any row order gives the same :class:`Matched`, and cross-validation's contiguous blocks
    are blocks of time, as the fit assumes.
    """
    if not math.isfinite(max_gap_s) or max_gap_s < 0:
        raise ValueError(f"max_gap_s must be a finite number >= 0, not {max_gap_s}")
    order = np.argsort(spectra.source_ts, kind="stable")
    times = spectra.source_ts[order]
    count = len(times)
    if count == 0:
        nearest = np.zeros(len(refs.times), dtype=np.intp)
        within = np.zeros(len(refs.times), dtype=bool)
    else:
        after = np.clip(np.searchsorted(times, refs.times), 0, count - 1)
        before = np.clip(after - 1, 0, count - 1)
        gap_before = np.abs(refs.times - times[before])
        gap_after = np.abs(refs.times - times[after])
        nearest = np.where(gap_before <= gap_after, before, after)
        gap = np.minimum(gap_before, gap_after)
        within = gap <= round(max_gap_s * 1e9)
    kept = np.flatnonzero(within)
    rows = order[nearest[kept]]
    values = refs.values[kept]
    # np.lexsort sorts by its last key first. The values break ties between replicates (one
    # spectrum, references drawn at the same time), so not even their order depends on the
    # file's.
    keys = (*values.T[::-1], refs.times[kept], spectra.source_ts[rows])
    by_time = np.lexsort(keys) if len(kept) else kept
    groups = None
    if refs.batches is not None:
        groups = tuple(refs.batches[i] for i in kept[by_time])
    return Matched(
        x=spectra.values[rows[by_time]],
        y=values[by_time],
        source_ts=spectra.source_ts[rows[by_time]],
        groups=groups,
        unmatched=int((~within).sum()),
    )
