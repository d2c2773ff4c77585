"""``patgw export``: committed samples as JSON lines, CSV or JCAMP-DX.

JSON lines carry every sample in the JSON form of every sink, spectra included (values and
axis). CSV has one row per *scalar* sample; a spectrum does not fit a cell, so CSV skips spectra
and says so. JCAMP-DX 5.01 (``--format jcamp``) carries spectra only: one block per spectrum,
``##XYPOINTS=(XY..XY)`` because a calibrated axis is not evenly spaced; several spectra make a
compound (``##DATA TYPE=LINK``) file. Each spectrum's block names the device that measured it
(``##SPECTROMETER/DATA SYSTEM=`` and ``##$PATGW DEVICE ...`` lines: the identity its instrument
had in the store when the spectrum was received, see :class:`DeviceHistory`); JSON lines and CSV
have no header to hold it (``patgw export`` keeps them one sample per line).

With ``--include-archive``, the samples the store budget pruned are read back from the archive
files it recorded (JSON lines in this same form, each checked against its recorded SHA-256
first), before those still in the store: a long run exports whole.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from .api import DeviceIdentity
from .errors import GatewayError, StoreError
from .model import Quality, Sample, sample_to_json, sample_to_json_dict
from .spectra import SpectralAxis, Spectrum
from .timefmt import format_ns, parse_iso_ns

if TYPE_CHECKING:
    from .store.sqlite import IdentityRecord

__all__ = [
    "FORMATS",
    "DeviceHistory",
    "ExportResult",
    "read_archive",
    "sample_from_json",
    "write_csv",
    "write_jcamp",
    "write_jsonl",
]

_CSV_COLUMNS = ("signal", "value", "unit", "source_ts", "gateway_ts", "quality", "seq", "reason")

# JCAMP-DX names for the axis units a spectrum may have; anything else is written as its UCUM code.
_JCAMP_XUNITS = {"cm-1": "1/CM", "/cm": "1/CM", "nm": "NANOMETERS", "um": "MICROMETERS"}
_JCAMP_DATA_TYPE = {"1/CM": "RAMAN SPECTRUM"}


@dataclass
class ExportResult:
    """What an export wrote, and what it left out and why (for the command's message)."""

    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


class DeviceHistory:
    """Which device each signal's instrument was at a given time, from the store's identity
    records (:meth:`~gateway.store.SampleStore.identities`) and its signal definitions."""

    def __init__(self, records: Sequence[IdentityRecord], instruments: Mapping[str, str]) -> None:
        self._instruments = dict(instruments)  # signal id -> instrument id
        self._records: dict[str, list[IdentityRecord]] = {}
        for record in records:
            self._records.setdefault(record.instrument, []).append(record)

    def at(self, sample: Sample) -> DeviceIdentity | None:
        """The identity of the latest device identified at or before the sample's receipt;
        ``None`` before the first identification (or for a signal of no instrument)."""
        found = None
        for record in self._records.get(self._instruments.get(sample.signal, ""), ()):
            if record.first_seen_ns > sample.gateway_ts:
                break
            found = record.identity
        return found


class Writer(Protocol):
    """An export format: writes ``samples`` to ``out``; ``devices`` (where the format has room
    for it) names the device of each sample."""

    def __call__(
        self,
        samples: Iterable[Sample],
        out: TextIO,
        origin: str = "",
        *,
        devices: DeviceHistory | None = None,
    ) -> ExportResult: ...


def write_jsonl(
    samples: Iterable[Sample],
    out: TextIO,
    origin: str = "",
    *,
    devices: DeviceHistory | None = None,
) -> ExportResult:
    """One compact JSON object per line."""
    result = ExportResult()
    for sample in samples:
        out.write(sample_to_json(sample) + "\n")
        result.written += 1
    return result


def write_csv(
    samples: Iterable[Sample],
    out: TextIO,
    origin: str = "",
    *,
    devices: DeviceHistory | None = None,
) -> ExportResult:
    """A header line, then one row per scalar sample with the JSON form's fields."""
    writer = csv.DictWriter(out, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    result = ExportResult()
    for sample in samples:
        if isinstance(sample.value, Spectrum):
            result.skip("spectra (CSV has no place for them: use --format jsonl or jcamp)")
            continue
        writer.writerow(sample_to_json_dict(sample))
        result.written += 1
    return result


def write_jcamp(
    samples: Iterable[Sample],
    out: TextIO,
    origin: str = "",
    *,
    devices: DeviceHistory | None = None,
) -> ExportResult:
    """Every spectrum among ``samples`` as JCAMP-DX 5.01; scalar and value-less samples are
    skipped (and counted). One spectrum makes a plain file, more make a ``LINK`` file.

    Blocks go to a temporary file first (a compound file states its block count up front), so
    memory stays flat however many spectra there are.
    """
    result = ExportResult()
    first: str | None = None
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        for sample in samples:
            if not isinstance(sample.value, Spectrum):
                result.skip("samples without a spectrum (scalar signals, bad spectra)")
                continue
            device = devices.at(sample) if devices is not None else None
            block = _jcamp_block(sample, sample.value, origin, device)
            result.written += 1
            if result.written == 1:
                first = block
                continue
            if result.written == 2:
                assert first is not None
                spool.write(_with_block_id(first, 1))
            spool.write(_with_block_id(block, result.written))
        if result.written == 1:
            assert first is not None
            out.write(first)
        elif result.written > 1:
            out.write(
                f"##TITLE=PAT Gateway export, {result.written} spectra\n"
                "##JCAMP-DX=5.01\n"
                "##DATA TYPE=LINK\n"
                f"##ORIGIN={origin or 'PAT Gateway'}\n"
                "##OWNER=\n"
                f"##BLOCKS={result.written}\n"
            )
            spool.seek(0)
            while chunk := spool.read(1 << 20):
                out.write(chunk)
            out.write("##END=\n")
    return result


def _with_block_id(block: str, block_id: int) -> str:
    title, rest = block.split("\n", 1)
    return f"{title}\n##BLOCK_ID={block_id}\n{rest}"


def _jcamp_device(device: DeviceIdentity | None) -> list[str]:
    if device is None or device.is_empty():
        return []
    return [
        f"##SPECTROMETER/DATA SYSTEM={_one_line(device.label())}",
        *(
            f"##$PATGW DEVICE {name.upper().replace('_', ' ')}={_one_line(value)}"
            for name, value in device.fields().items()
            if value is not None
        ),
    ]


def _jcamp_block(
    sample: Sample, spectrum: Spectrum, origin: str, device: DeviceIdentity | None = None
) -> str:
    x = spectrum.axis.values
    y = spectrum.values
    xunits = _JCAMP_XUNITS.get(spectrum.axis.unit, spectrum.axis.unit.upper())
    when = datetime.fromtimestamp(sample.source_ts // 1_000_000_000, UTC)
    lines = [
        f"##TITLE={sample.signal} seq {sample.seq}",
        "##JCAMP-DX=5.01",
        f"##DATA TYPE={_JCAMP_DATA_TYPE.get(xunits, 'SPECTRUM')}",
        f"##ORIGIN={origin or 'PAT Gateway'}",
        "##OWNER=",
        f"##LONGDATE={when:%Y/%m/%d %H:%M:%S} +0000",
        *_jcamp_device(device),
        f"##$PATGW SIGNAL={sample.signal}",
        f"##$PATGW SEQ={sample.seq}",
        f"##$PATGW SOURCE TS={format_ns(sample.source_ts)}",
        f"##$PATGW GATEWAY TS={format_ns(sample.gateway_ts)}",
        f"##$PATGW QUALITY={Quality(sample.quality).label}",
        *([f"##$PATGW REASON={_one_line(sample.reason)}"] if sample.reason else []),
        f"##$PATGW YUNIT={sample.unit}",
        f"##$PATGW AXIS KEY={spectrum.axis.key}",
        f"##XUNITS={xunits}",
        f"##YUNITS={_yunits(sample.unit)}",
        "##XFACTOR=1",
        "##YFACTOR=1",
        f"##FIRSTX={float(x[0])!r}",
        f"##LASTX={float(x[-1])!r}",
        f"##MINX={float(x.min())!r}",
        f"##MAXX={float(x.max())!r}",
        f"##FIRSTY={y[0]!s}",
        f"##MINY={y.min()!s}",
        f"##MAXY={y.max()!s}",
        f"##NPOINTS={len(y)}",
        "##XYPOINTS=(XY..XY)",
    ]
    # str() prints a float32 as its shortest exact decimal (format() would widen it to a
    # float64's digits); the axis keeps float64 precision.
    lines.extend(f"{xv!r}, {yv!s}" for xv, yv in zip(x.tolist(), y, strict=True))
    lines.append("##END=")
    return "\n".join(lines) + "\n"


def _yunits(unit: str) -> str:
    return "COUNTS" if unit in ("{counts}", "{count}", "{cnt}") else unit.upper()


def _one_line(text: str) -> str:
    return " ".join(text.split())


FORMATS: dict[str, Writer] = {"jsonl": write_jsonl, "csv": write_csv, "jcamp": write_jcamp}


def sample_from_json(line: str) -> Sample:
    """The sample a line of ``--format jsonl`` (or of an archive file) holds: the inverse of
    :func:`~gateway.model.sample_to_json` (a non-finite float, written as null, stays None)."""
    doc: dict[str, Any] = json.loads(line)
    value = doc["value"]
    axis = doc.get("axis")
    if axis is not None and value is not None:
        value = Spectrum(value, SpectralAxis(axis["values"], axis["unit"]))
    return Sample(
        doc["signal"],
        value,
        doc["unit"],
        parse_iso_ns(doc["source_ts"]),
        parse_iso_ns(doc["gateway_ts"]),
        Quality.from_label(doc["quality"]),
        int(doc["seq"]),
        doc.get("reason"),
    )


def read_archive(
    path: Path, signal_glob: str | None = None, since_ns: int | None = None
) -> Iterator[Sample]:
    """The samples of one archive file (gzip-compressed JSON lines), filtered as
    :meth:`SampleStore.samples` filters."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    sample = sample_from_json(line)
                except (ValueError, KeyError, TypeError, GatewayError) as exc:
                    raise StoreError(f"{path}:{number}: not a sample: {exc}") from exc
                if signal_glob is not None and not fnmatch.fnmatchcase(sample.signal, signal_glob):
                    continue
                if since_ns is not None and sample.source_ts < since_ns:
                    continue
                yield sample
    except OSError as exc:
        raise StoreError(f"cannot read archive {path}: {exc}") from exc
