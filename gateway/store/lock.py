"""One store, one gateway: an exclusive lock on the store file's *identity*, not on its path.

The same store file can be reached through many paths: a symlinked folder, a bind mount,
another mount point, a hard link. A lock named after the path lets two gateways run on one file
(they hand out the same sequence numbers, and with a hard link SQLite even keeps two WAL files,
one per name, so commits are lost). A file's identity is its device and inode (``st_dev``,
``st_ino``; on Windows ``os.stat`` fills them with the volume serial number and the file index,
so the same key serves there).

The lock is an ``flock`` on a small separate file named ``patgw-store-<dev>-<ino>.lock``, taken
in two folders, because no single folder is reachable from every path to a file:

- the host's lock folder (``/run/lock``, else the temporary folder): whatever path a gateway on
  this host used, it finds the same name there (a hard link in another folder, a bind mount of
  the file itself);
- the store's own folder (symlinks resolved): anyone who reaches the store through its folder
  or an ancestor finds it, e.g. a second container sharing the volume, whose ``/run`` is its
  own.

Why ``flock`` on separate files and not ``fcntl``/``lockf`` on the store: byte-range locks belong
to the process and are dropped when *any* descriptor of the file closes (SQLite opens the store
several times), and they share the lock space SQLite uses for its own locks; an ``flock``
belongs to its open file description and is independent of SQLite's. A separate file also
leaves the store alone on Windows, where locks are mandatory: there ``msvcrt.locking`` on the
same lock files is the counterpart (Python's standard library, no dependency: decision 0038). It
locks one byte far past the holder's text, since a Windows lock keeps others from reading the
bytes it covers and a refused gateway must read who holds it; and a Windows file cannot be
removed while it is open, so there the lock is released and closed before its file is removed.

The lock file holds who holds it (pid, host, the path it opened), so a refused gateway names
the holder; it is removed on release (left behind by a crash, it is simply reused).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Protocol

import structlog

from ..errors import StoreError
from ..oscompat import O_BINARY
from ..timefmt import format_ns, now_ns

__all__ = ["StoreLock", "host_lock_dir", "lock_store"]

log = structlog.get_logger("gateway.store")

WINDOWS_LOCK_OFFSET = 1 << 30
"""The byte locked on Windows: far past the holder's few hundred bytes of JSON."""


class _Locking(Protocol):
    """The host's exclusive, non-blocking lock on an open lock file."""

    def try_lock(self, handle: IO[str]) -> bool:
        """Lock ``handle``'s file; False if another open file holds the lock."""
        ...

    def close(self, handle: IO[str]) -> None:
        """Unlock and close ``handle``."""
        ...

    def release(self, file: Path, handle: IO[str]) -> None:
        """Unlock and close ``handle`` and remove ``file`` (if nobody else has it open)."""
        ...


class _Flock:
    """POSIX: ``flock``, owned by the open file description; closing the file unlocks it."""

    def __init__(self) -> None:
        import fcntl

        self._fcntl = fcntl

    def try_lock(self, handle: IO[str]) -> bool:
        try:
            self._fcntl.flock(handle, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def close(self, handle: IO[str]) -> None:
        handle.close()

    def release(self, file: Path, handle: IO[str]) -> None:
        # Removed while still locked: a gateway that opened it meanwhile finds, once it gets
        # the lock, that the path names another file (or none), and starts again.
        with contextlib.suppress(OSError):  # e.g. another user's file in /run/lock
            file.unlink()
        handle.close()


class _MsvcrtLocking:
    """Windows: ``msvcrt.locking`` of the byte at :data:`WINDOWS_LOCK_OFFSET`."""

    def __init__(self, msvcrt: ModuleType) -> None:
        self._msvcrt = msvcrt

    def _lock(self, handle: IO[str], mode: int) -> None:
        fd = handle.fileno()
        # msvcrt.locking locks from the descriptor's position: go there and come back, so
        # the file object's idea of its position stays true.
        position = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            self._msvcrt.locking(fd, mode, 1)
        finally:
            os.lseek(fd, position, os.SEEK_SET)

    def try_lock(self, handle: IO[str]) -> bool:
        try:
            self._lock(handle, self._msvcrt.LK_NBLCK)
        except OSError as exc:
            if exc.errno in (errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)):
                return False
            raise
        return True

    def close(self, handle: IO[str]) -> None:
        # Windows frees the locks of a closed file "when resources allow": unlock first.
        with contextlib.suppress(OSError):
            self._lock(handle, self._msvcrt.LK_UNLCK)
        handle.close()

    def release(self, file: Path, handle: IO[str]) -> None:
        self.close(handle)
        # Fails while another gateway has the file open (Windows removes no open file): it
        # is then that gateway's lock file, as it should be.
        with contextlib.suppress(OSError):
            file.unlink()


def host_locking() -> _Locking:
    """The lock primitive of the host the gateway runs on."""
    if sys.platform == "win32":
        import msvcrt

        return _MsvcrtLocking(msvcrt)
    return _Flock()


def host_lock_dir() -> Path:
    """The folder every gateway on this host uses for the host-wide half of the lock."""
    run_lock = Path("/run/lock")
    if run_lock.is_dir() and os.access(run_lock, os.W_OK | os.X_OK):
        return run_lock
    return Path(tempfile.gettempdir())


@dataclass
class StoreLock:
    """The held lock of one store file; :meth:`release` (or closing the process) frees it."""

    path: Path
    device: int
    inode: int
    _held: list[tuple[Path, IO[str]]] = field(default_factory=list, repr=False)
    _locking: _Locking = field(default_factory=host_locking, repr=False)

    @property
    def files(self) -> list[Path]:
        """The lock files held."""
        return [file for file, _ in self._held]

    def release(self) -> None:
        """Free the lock and remove its files (a gateway that opened one meanwhile sees that it
        was removed, and takes a new one: see :func:`_lock_file`)."""
        held, self._held = self._held, []
        for file, handle in held:
            self._locking.release(file, handle)


def _identity(path: Path) -> os.stat_result:
    """The store file's identity, creating the (empty) file at first start: an empty file is
    an empty SQLite database, and the identity must exist before the lock can be named."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        pass
    with contextlib.suppress(FileExistsError):  # another gateway created it just now
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY, 0o644))
    return os.stat(path)


def _open(lock_file: Path) -> IO[str]:
    """Open (creating) a lock file, never through a symbolic link: the host's lock folder is
    writable by every user, and a link planted there must not make a gateway running as root
    truncate the file it points to."""
    flags = getattr(os, "O_NOFOLLOW", 0) | O_BINARY  # no links; on Windows no text mode
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | flags, 0o644)
        mode = "r+"
    except PermissionError:
        # Created by a gateway running as another user: flock works on a read-only descriptor.
        fd = os.open(lock_file, os.O_RDONLY | flags)
        mode = "r"
    except OSError as exc:
        if lock_file.is_symlink():
            raise StoreError(
                f"{lock_file} is a symbolic link, not a lock file: refusing to follow it"
                " (remove it if nobody planted it on purpose)"
            ) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{lock_file} is not a regular file: refusing to use it as a lock")
    return os.fdopen(fd, mode, encoding="utf-8")


def _holder(handle: IO[str]) -> dict[str, object]:
    handle.seek(0)
    try:
        holder = json.loads(handle.read(4096))
    except (ValueError, OSError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _refusal(path: Path, lock: StoreLock, holder: dict[str, object]) -> StoreError:
    pid = holder.get("pid", "unknown")
    where = f" on {holder['host']}" if holder.get("host") else ""
    other = holder.get("path")
    through = f", opened as {other}" if other else ""
    text = f"{path} is in use by another gateway (pid {pid}{where}{through})"
    if other and str(other) != str(path):
        text += f": the same file (device {lock.device}, inode {lock.inode}) through another path"
    return StoreError(text + "; one store, one gateway")


def _lock_file(file: Path, locking: _Locking) -> IO[str] | dict[str, object]:
    """Lock ``file``: its open (locked) handle, or, if another gateway holds it, who that is."""
    while True:
        handle = _open(file)
        try:
            locked = locking.try_lock(handle)
        except BaseException:
            handle.close()
            raise
        if not locked:
            holder = _holder(handle)
            handle.close()
            return holder
        try:
            current = os.stat(file)
        except FileNotFoundError:
            current = None
        opened = os.fstat(handle.fileno())
        if current is not None and (current.st_dev, current.st_ino) == (
            opened.st_dev,
            opened.st_ino,
        ):
            return handle
        locking.close(handle)  # its holder removed it on release after we opened it: again


def _acquire(lock: StoreLock, name: str) -> None:
    for folder in dict.fromkeys([host_lock_dir().resolve(), lock.path.parent]):
        locked = _lock_file(folder / name, lock._locking)
        if isinstance(locked, dict):
            lock.release()
            raise _refusal(lock.path, lock, locked)
        lock._held.append((folder / name, locked))
    again = os.stat(lock.path)
    if (again.st_dev, again.st_ino) != (lock.device, lock.inode):
        lock.release()
        raise StoreError(f"{lock.path} was replaced by another file while it was being locked")


def lock_store(path: Path) -> StoreLock:
    """Take the exclusive lock of the store file at ``path`` (created empty if missing), or
    raise :class:`StoreError` naming the gateway that holds it."""
    resolved = path.resolve()
    try:
        identity = _identity(resolved)
    except OSError as exc:
        raise StoreError(f"cannot open {resolved}: {exc}") from exc
    lock = StoreLock(resolved, identity.st_dev, identity.st_ino)
    try:
        _acquire(lock, f"patgw-store-{identity.st_dev}-{identity.st_ino}.lock")
    except OSError as exc:
        lock.release()
        raise StoreError(f"cannot lock {resolved}: {exc}") from exc
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "path": str(resolved)}
    holder["since"] = format_ns(now_ns())
    for _, handle in lock._held:
        # Only to name the holder in a refusal: a lock file we cannot write (another user's,
        # a full /run/lock) still locks.
        with contextlib.suppress(OSError):
            if handle.writable():
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(holder))
                handle.flush()
    if identity.st_nlink > 1:
        log.warning(
            "store.hard_linked",
            path=str(resolved),
            links=identity.st_nlink,
            why="SQLite names its WAL after the path: open this store through one name only",
        )
    return lock
