"""Named registry of running bioreactor processes, so emulators in one gateway share one run.

The ``bioreactor`` emulator registers its :class:`~firmware_stubs.bioreactor.clock.ProcessClock`
under its emulator id when it starts and unregisters it when it stops; the feed pump, Raman and
controller emulators :func:`lookup` that id when *they* start. The gateway enters emulators in
the order they are listed, so the ``bioreactor`` emulator must come first.

One registry per Python process, touched only from the event loop: no locking.

::

    LookupError
     └── ProcessNotFoundError   no process registered under the name asked for
"""

from __future__ import annotations

from gateway import GatewayError

from .clock import ProcessClock

__all__ = ["ProcessNotFoundError", "lookup", "register", "shared_process", "unregister"]

_processes: dict[str, ProcessClock] = {}


class ProcessNotFoundError(LookupError):
    """No bioreactor process is registered under the name an emulator asked for."""

    def __init__(self, name: str, running: list[str]) -> None:
        self.name = name
        known = ", ".join(repr(n) for n in running) if running else "none"
        super().__init__(
            f"no bioreactor process {name!r} is running (running: {known}); a 'bioreactor'"
            f" emulator with id {name!r} must be listed before the emulators that use it"
        )


def register(name: str, clock: ProcessClock) -> None:
    """Make ``clock`` findable as ``name``; ``ValueError`` if the name is taken."""
    if name in _processes:
        raise ValueError(f"a bioreactor process named {name!r} is already running")
    _processes[name] = clock


def unregister(name: str) -> None:
    """Forget the process ``name``; a name that is not registered is ignored (shutdown paths
    need not check)."""
    _processes.pop(name, None)


def lookup(name: str) -> ProcessClock:
    """The process registered as ``name``; :class:`ProcessNotFoundError` if there is none."""
    try:
        return _processes[name]
    except KeyError:
        raise ProcessNotFoundError(name, sorted(_processes)) from None


def shared_process(name: str) -> ProcessClock:
    """:func:`lookup` for an emulator that is starting: a missing process is a
    :class:`~gateway.GatewayError`, which the gateway reports as that emulator failing to start
    (naming it) rather than as an internal error."""
    try:
        return lookup(name)
    except ProcessNotFoundError as exc:
        raise GatewayError(str(exc)) from exc
