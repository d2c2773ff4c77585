"""The ``csv_file`` sink: every committed sample appended to a CSV file, one row per sample.

A store-and-forward sink (it defines ``forward``): the gateway feeds it from the store through a
cursor of its own and counts a batch as delivered only when ``forward`` returns, so a full disk
or a crash delays rows but loses none. After a crash a few rows may be written twice; readers
de-duplicate on ``(signal, seq)``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
from collections.abc import Sequence
from typing import TextIO

from pydantic import BaseModel, ConfigDict, Field

from gateway import ConfigPath, PluginContext, Sample, Spectrum, format_ns

COLUMNS = ("signal", "value", "unit", "source_ts", "quality", "reason", "seq", "historical")


class CsvFileOptions(BaseModel):
    """The sink's `options:` block; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: ConfigPath = Field(
        description="CSV file to append to (relative: to the config's folder)."
    )
    fsync: bool = Field(default=False, description="fsync after every batch (slower, safer).")


class CsvFileSink:
    """Appends rows on a worker thread, so the event loop never waits for the disk."""

    def __init__(self, options: CsvFileOptions, context: PluginContext) -> None:
        # No I/O here: `patgw check` builds the sink too.
        self.options = options
        self.skipped_spectra = 0
        self._file: TextIO | None = None

    async def __aenter__(self) -> CsvFileSink:
        await asyncio.to_thread(self._open)
        return self

    def _open(self) -> None:
        path = self.options.path
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", encoding="utf-8", newline="")
        if new:
            csv.writer(self._file).writerow(COLUMNS)
            self._file.flush()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def send(self, samples: Sequence[Sample]) -> None:
        # Not called for a sink with `forward`; a plain sink would implement only this.
        await self.forward(samples, historical=False)

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        # Encode now (before the first await): the runtime may call forward again meanwhile,
        # and rows must reach the file in call order.
        text = self._rows(samples, historical)
        await asyncio.to_thread(self._append, text)

    def _rows(self, samples: Sequence[Sample], historical: bool) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        late = int(historical)
        for s in samples:
            if isinstance(s.value, Spectrum):  # thousands of numbers: not for a CSV cell
                self.skipped_spectra += 1
                continue
            value = "" if s.value is None else s.value
            when, reason = format_ns(s.source_ts), s.reason or ""
            writer.writerow((s.signal, value, s.unit, when, s.quality.label, reason, s.seq, late))
        return buffer.getvalue()

    def _append(self, text: str) -> None:
        if self._file is None:
            raise OSError(f"{self.options.path} is not open")
        self._file.write(text)
        self._file.flush()  # an error (disk full) raises here: the runtime retries the batch
        if self.options.fsync:
            os.fsync(self._file.fileno())
