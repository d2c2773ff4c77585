"""The console's static files (stylesheet, scripts, the vendored uPlot), served from memory.

Every file under ``gateway/console/static/`` is read once, at first use, into a manifest: its
name relative to that folder (``console.js``, ``uplot/uPlot.iife.min.js``) → content type and
bytes. A request's path is only ever a key in that dictionary, never a file-system path, so no
URL can reach a file outside it (``/static/../gateway/config.py`` is simply no key: ``404``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

__all__ = ["Asset", "asset", "manifest"]

_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Asset:
    content_type: str
    body: bytes


@functools.cache
def manifest() -> dict[str, Asset]:
    """Every static file by its name (``/`` between folders); read once."""
    found: dict[str, Asset] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
                continue
            suffix = entry.name[entry.name.rfind(".") :] if "." in entry.name else ""
            if entry.name == "LICENSE":
                suffix = ".txt"
            content_type = _TYPES.get(suffix)
            if content_type is not None:
                found[prefix + entry.name] = Asset(content_type, entry.read_bytes())

    walk(files("gateway.console").joinpath("static"), "")
    return found


def asset(name: str) -> Asset | None:
    """The static file called ``name``, or None: ``name`` is a key, never a path."""
    return manifest().get(name)
