"""The project as if on Windows, on this Linux machine: what can be simulated, and a runner.

``python tests/windows_sim.py imports CONFIG`` and ``python tests/windows_sim.py run CONFIG
SECONDS`` (used by tests/test_portability.py) first import, as this platform, whatever the
project's modules import from outside it (the standard library and third-party packages choose
their own Windows branches on Windows: that is theirs to prove), then:

- make the POSIX-only modules unavailable (``sys.modules[name] = None``) and delete the
  POSIX-only names of ``os`` and ``signal``;
- set ``sys.platform`` to ``"win32"``, give ``os.O_BINARY`` and a stand-in ``msvcrt``
  (:class:`StandInMsvcrt`: ``msvcrt.locking`` over a real kernel byte-range lock);
- make ``os.open``, called from the project's code, refuse a folder (``PermissionError``, as
  Windows does) and record a data file opened without ``O_BINARY`` (Windows would open it in
  text mode: ``\\n`` written as ``\\r\\n``);
- make the event loop's ``add_signal_handler`` raise NotImplementedError, as Windows' loops do.

Not simulated: Windows' own system calls, its event loops, its path rules (drive letters,
backslashes, reserved names), its file sharing (no removing an open file), NTFS permissions.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import errno
import fcntl
import importlib
import json
import os
import signal
import struct
import sys
import traceback
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "plugins", "firmware_stubs")
POSIX_MODULES = (
    "fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "posix", "syslog", "crypt",
    "spwd", "nis", "curses", "_curses", "readline", "_posixsubprocess", "_posixshmem",
)  # fmt: skip
POSIX_OS_NAMES = (
    "getuid", "geteuid", "getgid", "getegid", "getgroups", "getpgid", "setpgid", "setsid",
    "killpg", "fork", "forkpty", "openpty", "pread", "pwrite", "nice", "ttyname", "sync",
    "statvfs", "fstatvfs", "chown", "fchown", "lchown", "getloadavg", "uname", "mkfifo",
    "mknod", "sysconf", "pathconf", "fpathconf", "confstr", "wait3", "wait4", "WNOHANG",
    "O_NOFOLLOW", "O_NONBLOCK", "O_DIRECTORY", "O_CLOEXEC", "O_SYNC", "O_DSYNC",
    "getpriority", "setpriority", "sched_getaffinity", "sched_setaffinity", "pipe2",
    "posix_spawn", "set_blocking", "get_blocking",
)  # fmt: skip
POSIX_SIGNAL_NAMES = (
    "SIGHUP", "SIGKILL", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGPIPE",
    "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGWINCH", "SIGTTIN", "SIGTTOU", "alarm", "pause",
    "setitimer", "getitimer", "siginterrupt", "sigwait", "pthread_kill", "pthread_sigmask",
)  # fmt: skip
WINDOWS_O_BINARY = 0x8000
LK_UNLCK, LK_LOCK, LK_NBLCK = 0, 1, 2  # msvcrt's values


class StandInMsvcrt(types.ModuleType):
    """``msvcrt.locking`` as documented (from the descriptor's position, ``nbytes`` bytes;
    OSError EACCES when held), over Linux open-file-description locks, which like Windows
    locks belong to the open file, not to the process."""

    LK_UNLCK, LK_LOCK, LK_NBLCK = LK_UNLCK, LK_LOCK, LK_NBLCK

    def __init__(self) -> None:
        super().__init__("msvcrt")
        self.calls: list[tuple[int, int, int]] = []  # (mode, offset, bytes)

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        self.calls.append((mode, offset, nbytes))
        kind = fcntl.F_UNLCK if mode == LK_UNLCK else fcntl.F_WRLCK
        # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks).
        request = struct.pack("@hhqqi4x", kind, os.SEEK_SET, offset, nbytes, 0)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
        except BlockingIOError as exc:
            raise OSError(errno.EACCES, "Permission denied") from exc  # what msvcrt raises


def project_modules() -> tuple[list[str], set[str]]:
    """Every module of the three packages, and every module they import from outside."""
    modules: list[str] = []
    outside: set[str] = set()
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
            for node in ast.walk(ast.parse(path.read_bytes())):
                if isinstance(node, ast.Import):
                    outside.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    outside.add(node.module)
    return modules, {name for name in outside if name.split(".")[0] not in PACKAGES}


def _from_project(depth: int = 2) -> bool:
    filename = sys._getframe(depth).f_code.co_filename
    return any(filename.startswith(str(REPO / package)) for package in PACKAGES)


def become_windows(outside: set[str]) -> list[str]:
    """Simulate Windows from here on; the data files the project opens in text mode."""
    for name in sorted(outside):
        with contextlib.suppress(Exception):  # not on this platform (msvcrt), or no extra
            importlib.import_module(name)
    for name in POSIX_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]
    for name in POSIX_OS_NAMES:
        if hasattr(os, name):
            delattr(os, name)
    for name in POSIX_SIGNAL_NAMES:
        if hasattr(signal, name):
            delattr(signal, name)
    sys.platform = "win32"
    sys.modules["msvcrt"] = StandInMsvcrt()
    os.O_BINARY = WINDOWS_O_BINARY  # type: ignore[attr-defined]
    text_mode: list[str] = []
    real_open = os.open

    def windows_open(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if _from_project():
            if os.path.isdir(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            if not flags & WINDOWS_O_BINARY and path != os.devnull:
                text_mode.append(str(path))
        return real_open(path, flags & ~WINDOWS_O_BINARY, mode, **kwargs)

    def add_signal_handler(self: Any, sig: int, callback: Any, *args: Any) -> None:
        raise NotImplementedError

    os.open = windows_open
    asyncio.SelectorEventLoop.add_signal_handler = add_signal_handler  # type: ignore[method-assign]
    return text_mode


def imports(config: str) -> dict[str, Any]:
    """Import every module; run ``patgw --help`` (``gateway.__main__``) and ``patgw check``;
    start the Raman emulator on a pseudo-terminal (which must refuse, saying why)."""
    modules, outside = project_modules()
    become_windows(outside)
    failed: dict[str, str] = {}
    sys.argv = ["patgw", "--help"]  # what a __main__ module runs
    for module in modules:
        try:
            importlib.import_module(module)
        except SystemExit as exc:
            if not (module.endswith("__main__") and exc.code == 0):
                failed[module] = f"SystemExit({exc.code!r})"
        except BaseException as exc:
            failed[module] = "".join(traceback.format_exception_only(exc)).strip()
    report: dict[str, Any] = {"modules": modules, "failed": failed}
    if failed:
        return report
    from firmware_stubs.raman.server import RamanEmulator
    from gateway.cli import main

    report["check"] = main(["check", config])

    async def start_on_a_pty() -> None:
        emulator = RamanEmulator(transport="pty")
        try:
            await emulator.start()
        finally:
            if emulator.is_serving:
                await emulator.stop()

    try:
        asyncio.run(start_on_a_pty())
    except OSError as exc:
        report["pty_error"] = str(exc)
    return report


def run(config: str, seconds: str) -> dict[str, Any]:
    """``patgw run CONFIG --for SECONDS``; its exit code and the files opened in text mode."""
    _, outside = project_modules()
    text_mode = become_windows(outside)
    from gateway.cli import main

    code = main(["--log-format", "json", "run", config, "--for", seconds])
    return {"exit": code, "text_mode": text_mode}


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    result = imports(*args) if what == "imports" else run(*args)
    print(json.dumps(result), flush=True)
