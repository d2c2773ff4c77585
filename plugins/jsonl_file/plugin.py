"""The ``jsonl_file`` sink: committed samples appended to a file, one JSON object per line.

Useful for handing data to a script or a log shipper. The file receives samples only after the
durable store committed them. It is a store-and-forward sink: a batch counts as delivered once
written and flushed (and fsynced with ``fsync: true``), so a full disk or a crash delays lines
but loses none; samples written late (after a restart) carry ``"historical":true``, and a crash
between a write and the save of the cursor can repeat a few lines (same ``signal`` and ``seq``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from gateway import (
    ConfigPath,
    PluginContext,
    Registry,
    Sample,
    historical_json,
    hookimpl,
    sample_to_json,
)

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"

__all__ = ["JsonlFileOptions", "JsonlFileSink"]


class JsonlFileOptions(BaseModel):
    """Options of the ``jsonl_file`` sink."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: ConfigPath = Field(
        description="File to append to; a relative path is relative to the config file's folder."
    )
    fsync: bool = Field(default=False, description="fsync after every batch (slower, safer).")


class JsonlFileSink:
    """Appends batches to one file, on a worker thread so the event loop never blocks.

    A batch is written whole or not at all: a failed write (disk full) is cut back to where it
    began, and a line left half-written by a crash is cut off at the next start, so the file
    only ever holds complete lines (the runtime sends such a batch again).
    """

    def __init__(self, options: JsonlFileOptions, context: PluginContext) -> None:
        self.path = options.path
        self.fsync = options.fsync
        self._fd: int | None = None
        # One write at a time: a write abandoned by a timeout may still be running when the
        # runtime sends the batch again.
        self._lock = threading.Lock()

    async def __aenter__(self) -> JsonlFileSink:
        await asyncio.to_thread(self._open)
        return self

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_BINARY, 0o644)
        try:
            _cut_partial_line(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    async def __aexit__(self, *exc_info: object) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    async def send(self, samples: Sequence[Sample]) -> None:
        await self.forward(samples, False)

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        # Encoding costs microseconds per sample: do it on the worker thread with the write.
        await asyncio.to_thread(self._write, samples, historical)

    def _write(self, samples: Sequence[Sample], historical: bool) -> None:
        encode = historical_json if historical else sample_to_json
        data = "".join([encode(s) + "\n" for s in samples]).encode("utf-8")
        with self._lock:
            fd = self._fd
            if fd is None:
                raise OSError(f"{self.path} is closed")
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # no half batch, no half line
                raise


_O_BINARY: int = getattr(os, "O_BINARY", 0)
"""Windows opens a descriptor in text mode (``\\n`` written as ``\\r\\n``) unless told otherwise."""


def _read_at(fd: int, size: int, offset: int) -> bytes:
    """``os.pread``, which Windows lacks: there a seek and a read (appends ignore the seek)."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def _cut_partial_line(fd: int) -> None:
    """Truncate the file after its last newline (a crash may have left half a line)."""
    size = os.fstat(fd).st_size
    if size == 0 or _read_at(fd, 1, size - 1) == b"\n":
        return
    at = size
    while at > 0:
        step = min(at, 65536)
        chunk = _read_at(fd, step, at - step)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, at - step + newline + 1)
            return
        at -= step
    os.ftruncate(fd, 0)


@hookimpl
def pat_gateway_register_sinks(registry: Registry) -> None:
    registry.add_sink(
        "jsonl_file",
        JsonlFileSink,
        JsonlFileOptions,
        "Append committed samples to a JSON-lines file",
    )
