"""The store lock's Windows branch, run here on Linux with ``msvcrt.locking`` stood in for.

This machine has no Windows. What is proven here: with ``sys.platform == "win32"`` the lock
takes the ``msvcrt`` path (no ``fcntl``), locks one byte past the holder's text, refuses a
second gateway naming the first, unlocks before closing and removes its files on release. The
stand-in (tests/windows_sim.py) is a real kernel lock with msvcrt's calling convention: Linux
open-file-description locks, which like Windows locks belong to the open file. Not proven:
Windows' own ``LockFile`` and its mandatory locking, its refusal to remove an open file, NTFS
file ids.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
from windows_sim import LK_NBLCK, LK_UNLCK, StandInMsvcrt

from gateway import StoreError
from gateway.store import lock as store_lock
from gateway.store.lock import WINDOWS_LOCK_OFFSET, lock_store


@pytest.fixture
def msvcrt(monkeypatch: pytest.MonkeyPatch) -> StandInMsvcrt:
    stand_in = StandInMsvcrt()
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "msvcrt", stand_in)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on Windows: any use of it fails
    return stand_in


def test_the_windows_branch_locks_with_msvcrt_and_refuses_a_second_gateway(
    tmp_path: Path, msvcrt: StandInMsvcrt
) -> None:
    path = tmp_path / "store" / "s.sqlite"
    path.parent.mkdir()
    first = lock_store(path)
    assert isinstance(first._locking, store_lock._MsvcrtLocking)
    assert len(first.files) == 2
    # One byte far past the holder's text, in each lock file, so the text stays readable.
    assert msvcrt.calls == [(LK_NBLCK, WINDOWS_LOCK_OFFSET, 1)] * 2
    assert all(0 < file.stat().st_size < WINDOWS_LOCK_OFFSET for file in first.files)

    with pytest.raises(StoreError) as refused:
        lock_store(path)
    assert f"in use by another gateway (pid {os.getpid()} " in str(refused.value)

    calls = len(msvcrt.calls)
    first.release()
    # Unlocked before closing, each file; then the files are removed.
    unlocks = [call for call in msvcrt.calls[calls:] if call[0] == LK_UNLCK]
    assert unlocks == [(LK_UNLCK, WINDOWS_LOCK_OFFSET, 1)] * 2
    assert not any(file.exists() for file in first.files)
    again = lock_store(path)
    again.release()


def test_the_windows_branch_holds_against_another_path_to_the_same_file(
    tmp_path: Path, msvcrt: StandInMsvcrt
) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "store" / "s.sqlite"
    path.touch()
    os.link(path, tmp_path / "elsewhere" / "copy.sqlite")  # NTFS has hard links too
    first = lock_store(path)
    try:
        with pytest.raises(StoreError, match="through another path"):
            lock_store(tmp_path / "elsewhere" / "copy.sqlite")
    finally:
        first.release()


def test_other_locking_failures_are_errors_not_a_refusal(
    tmp_path: Path, msvcrt: StandInMsvcrt, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int, mode: int, nbytes: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(msvcrt, "locking", broken)
    with pytest.raises(StoreError, match=r"cannot lock .*Bad file descriptor"):
        lock_store(tmp_path / "s.sqlite")


def test_the_posix_branch_is_taken_elsewhere() -> None:
    lock = store_lock.host_locking()
    assert isinstance(lock, store_lock._Flock)
