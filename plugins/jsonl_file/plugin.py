"""The ``jsonl_file`` sink: committed samples appended to a file, one JSON object per line.

Useful for handing data to a script or a log shipper. The file receives samples only after the
durable store committed them. It is a store-and-forward sink: a batch counts as delivered once
written and flushed (and fsynced with ``fsync: true``), so a full disk or a crash delays lines
but loses none; samples written late (after a restart) carry ``"historical":true``, and a crash
between a write and the save of the cursor can repeat a few lines (same ``signal`` and ``seq``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field

from gateway import PluginContext, Registry, Sample, historical_json, hookimpl, sample_to_json

__all__ = ["JsonlFileOptions", "JsonlFileSink"]


class JsonlFileOptions(BaseModel):
    """Options of the ``jsonl_file`` sink."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="File to append to; relative paths are under data_dir.")
    fsync: bool = Field(default=False, description="fsync after every batch (slower, safer).")


class JsonlFileSink:
    """Appends batches to one file, on a worker thread so the event loop never blocks."""

    def __init__(self, options: JsonlFileOptions, context: PluginContext) -> None:
        path = options.path
        self.path = path if path.is_absolute() else context.data_dir / path
        self.fsync = options.fsync
        self._file: IO[str] | None = None

    async def __aenter__(self) -> JsonlFileSink:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def send(self, samples: Sequence[Sample]) -> None:
        await self.forward(samples, False)

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        # Encoding costs microseconds per sample: do it on the worker thread with the write.
        await asyncio.to_thread(self._write, samples, historical)

    def _write(self, samples: Sequence[Sample], historical: bool) -> None:
        assert self._file is not None
        encode = historical_json if historical else sample_to_json
        self._file.write("".join([encode(s) + "\n" for s in samples]))
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())


@hookimpl
def pat_gateway_register_sinks(registry: Registry) -> None:
    registry.add_sink(
        "jsonl_file",
        JsonlFileSink,
        JsonlFileOptions,
        "Append committed samples to a JSON-lines file",
    )
