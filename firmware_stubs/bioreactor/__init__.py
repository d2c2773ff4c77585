"""Emulated bioreactor process: the shared fed-batch culture behind every emulated instrument.

``FedBatchModel`` is the pure process model (advanced explicitly in process time),
``ProcessClock`` maps wall time onto it, and :mod:`~firmware_stubs.bioreactor.hub` lets the
emulators of one gateway process find the run they share by name. The ``bioreactor`` emulator
plugin (``plugin.py``) starts one run and registers it.
"""

from .clock import ProcessClock
from .hub import ProcessNotFoundError, lookup, register, shared_process, unregister
from .model import FedBatchModel, ProcessParams, ProcessState

__all__ = [
    "FedBatchModel",
    "ProcessClock",
    "ProcessNotFoundError",
    "ProcessParams",
    "ProcessState",
    "lookup",
    "register",
    "shared_process",
    "unregister",
]
