"""What differs between POSIX and Windows in the gateway's own file handling, in one place.

- :data:`O_BINARY`: Windows' C runtime opens a descriptor in text mode unless told otherwise
  (it writes ``\\r\\n`` for ``\\n`` and stops reading at ``\\x1a``), so every ``os.open`` of a
  data file adds it; 0 elsewhere.
- :func:`read_at`: ``os.pread`` is POSIX-only.
- :func:`fsync_folder`: Windows opens no folder as a file, and NTFS journals folder entries
  itself: nothing to do there.
- :func:`os_user`: the login name, else the user id (POSIX), else ``"unknown"``.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

__all__ = ["O_BINARY", "fsync_folder", "os_user", "read_at"]

O_BINARY: int = getattr(os, "O_BINARY", 0)
"""``os.O_BINARY`` on Windows, 0 elsewhere."""


def read_at(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes of ``fd`` at ``offset``: ``os.pread`` where there is one, else a
    seek and a read (the descriptor's position moves; ``O_APPEND`` writes ignore it)."""
    pread = getattr(os, "pread", None)
    if pread is not None:
        data: bytes = pread(fd, size, offset)
        return data
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX); nothing on Windows."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_user() -> str:
    """Who runs this process, as the operating system names them."""
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):  # no name for this uid (a container); Windows
        getuid = getattr(os, "getuid", None)  # without USERNAME: Python 3.11 then imports pwd
        return str(getuid()) if getuid is not None else "unknown"
