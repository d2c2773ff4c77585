"""Nothing POSIX-only at import time: every module of gateway/, plugins/ and firmware_stubs/
imports where the POSIX-only modules, ``os`` and ``signal`` names are missing, as on Windows.

This machine has no Windows. The subprocess below imports first, as this platform, whatever
the project's modules import from outside it (the standard library and third-party packages
choose their own Windows branches on Windows; that is theirs to prove), then makes the
POSIX-only modules unavailable, deletes the POSIX-only names from ``os`` and ``signal``,
sets ``sys.platform`` to ``"win32"``, and imports each of the project's modules in turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, demo_copy, write_config

from gateway import ConfigError, build_registry, load_plan

AS_ON_WINDOWS = r"""
import ast, importlib, json, os, signal, sys, traceback
from pathlib import Path

REPO, CONFIG = Path(sys.argv[1]), sys.argv[2]
PACKAGES = ("gateway", "plugins", "firmware_stubs")
POSIX_MODULES = (
    "fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "posix", "syslog", "crypt",
    "spwd", "nis", "curses", "_curses", "readline", "_posixsubprocess", "_posixshmem",
)
POSIX_OS_NAMES = (
    "getuid", "geteuid", "getgid", "getegid", "getgroups", "getpgid", "setpgid", "setsid",
    "killpg", "fork", "forkpty", "openpty", "pread", "pwrite", "nice", "ttyname", "sync",
    "statvfs", "fstatvfs", "chown", "fchown", "lchown", "getloadavg", "uname", "mkfifo",
    "mknod", "sysconf", "pathconf", "fpathconf", "confstr", "wait3", "wait4", "WNOHANG",
    "O_NOFOLLOW", "O_NONBLOCK", "O_DIRECTORY", "O_CLOEXEC", "O_SYNC", "O_DSYNC",
    "getpriority", "setpriority", "sched_getaffinity", "sched_setaffinity", "pipe2",
    "posix_spawn", "set_blocking", "get_blocking",
)
POSIX_SIGNAL_NAMES = (
    "SIGHUP", "SIGKILL", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGPIPE",
    "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGWINCH", "SIGTTIN", "SIGTTOU", "alarm", "pause",
    "setitimer", "getitimer", "siginterrupt", "sigwait", "pthread_kill", "pthread_sigmask",
)

modules, outside = [], set()
for package in PACKAGES:
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.Import):
                outside.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                outside.add(node.module)
for name in sorted(outside):
    if name.split(".")[0] not in PACKAGES:
        try:
            importlib.import_module(name)
        except Exception:  # not on this platform (msvcrt), or an extra not installed
            pass

for name in POSIX_MODULES:
    sys.modules[name] = None
for name in POSIX_OS_NAMES:
    if hasattr(os, name):
        delattr(os, name)
for name in POSIX_SIGNAL_NAMES:
    if hasattr(signal, name):
        delattr(signal, name)
sys.platform = "win32"

failed = {}
sys.argv = ["patgw", "--help"]  # what a __main__ module runs
for module in modules:
    try:
        importlib.import_module(module)
    except SystemExit as exc:
        if not (module.endswith("__main__") and exc.code == 0):
            failed[module] = f"SystemExit({exc.code!r})"
    except BaseException as exc:
        failed[module] = "".join(traceback.format_exception_only(exc)).strip()

check_exit = None
if not failed:
    from gateway.cli import main

    check_exit = main(["check", CONFIG])

pty_error = None
if not failed:
    import asyncio
    from firmware_stubs.raman.server import RamanEmulator

    async def start_on_a_pty():
        emulator = RamanEmulator(transport="pty")
        try:
            await emulator.start()
        finally:
            if emulator.is_serving:
                await emulator.stop()

    try:
        asyncio.run(start_on_a_pty())
    except OSError as exc:
        pty_error = str(exc)
report = {"modules": modules, "failed": failed, "check": check_exit, "pty_error": pty_error}
print(json.dumps(report))
"""


def simulated_windows(repo: Path, config: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", AS_ON_WINDOWS, str(repo), str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=repo,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def test_every_module_imports_without_posix_only_modules(tmp_path: Path) -> None:
    config, _ = demo_copy(tmp_path)
    report = simulated_windows(REPO, config)
    files = [
        path
        for package in ("gateway", "plugins", "firmware_stubs")
        for path in (REPO / package).rglob("*.py")
    ]
    assert len(report["modules"]) == len(files)  # every file of the three packages was tried
    assert report["failed"] == {}
    assert report["check"] == 0  # `patgw check` of the demo's configuration
    # The pseudo-terminal emulator needs POSIX: it says so when asked to start, not at import.
    assert report["pty_error"] is not None
    assert "needs a POSIX system" in report["pty_error"]
    assert "serial: false" in report["pty_error"]


@pytest.mark.parametrize("port", ["COM3", "COM12", r"\\.\COM12"])
def test_windows_serial_port_names_pass_config_validation(tmp_path: Path, port: str) -> None:
    """pyserial opens ``COM3`` (and ``\\\\.\\COM12``) on Windows: the built-in serial drivers'
    options keep the name as written, neither refused nor turned into a path."""
    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "area": "r1",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "instruments": [
                {
                    "id": "raman",
                    "driver": "ocean_obp",
                    "options": {"port": port, "laser_wavelength_nm": 785},
                    "signals": [{"id": "spectrum"}],
                },
                {
                    "id": "balance",
                    "driver": "modbus",
                    "options": {"transport": "rtu", "serial_port": port, "profile": "feed_pump"},
                },
            ],
        },
    )
    try:
        plan = load_plan(config, build_registry())
    except ConfigError as exc:
        pytest.fail(f"{port!r} refused: {list(exc.problems)}")
    options = {ip.config.id: ip.driver.options for ip in plan.instruments}  # type: ignore[attr-defined]
    assert options["raman"].port == port
    assert options["balance"].serial_port == port
