"""An online copy of a store: SQLite's backup API, while the gateway runs and commits.

The copy is taken in one step from a read-only connection, so it is one consistent snapshot
(the last commit before the copy started, samples and counters together); in WAL mode the
gateway's commits go on meanwhile. It is written to a temporary file beside the target, checked
with ``PRAGMA integrity_check``, synced, and only then renamed into place, so the target is
either a complete, checked copy or untouched.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError

__all__ = ["BackupResult", "backup_store"]


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What a backup copied."""

    target: Path
    pages: int
    page_size: int
    schema_version: int

    @property
    def size_bytes(self) -> int:
        """Size of the copy."""
        return self.pages * self.page_size


def backup_store(source: Path, target: Path, *, replace: bool = False) -> BackupResult:
    """Copy the store at ``source`` to ``target``; :class:`FileExistsError` if ``target``
    exists and not ``replace``, :class:`ValueError` if it is the store itself,
    :class:`StoreError` if the copy fails (nothing is left behind then)."""
    if target.exists():
        if target.is_dir():
            raise IsADirectoryError(f"{target} is a folder")
        if os.path.samefile(source, target):
            raise ValueError(f"{target} is the store itself")
        if not replace:
            raise FileExistsError(f"{target} exists")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"{target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        result = _copy(source, partial, target)
        with open(partial, "rb") as copy:
            os.fsync(copy.fileno())
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise StoreError(f"backup of {source} failed: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"backup of {source} to {target} failed: {exc}") from exc
    finally:
        for suffix in ("", "-journal", "-wal", "-shm"):
            leftover = partial.with_name(partial.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return result


def _copy(source: Path, partial: Path, target: Path) -> BackupResult:
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        src.execute("PRAGMA busy_timeout=5000")
        dst = sqlite3.connect(partial)
        try:
            # One step (pages=-1): a stepped copy restarts whenever the gateway commits.
            src.backup(dst)
            # A single self-contained file: no WAL beside a file about to be renamed.
            dst.execute("PRAGMA journal_mode=DELETE")
            problems = [row[0] for row in dst.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise StoreError(f"the copy fails integrity_check: {'; '.join(problems[:5])}")
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
            page_size = int(dst.execute("PRAGMA page_size").fetchone()[0])
            version = int(dst.execute("PRAGMA user_version").fetchone()[0])
        finally:
            dst.close()
    finally:
        src.close()
    return BackupResult(target, pages, page_size, version)
