"""Emulated bioreactor process: the shared culture behind every emulated instrument.

``FedBatchModel`` is the pure process model (advanced explicitly in process time; a fed-batch, or a
perfusion run given ``PerfusionParams``), ``ProcessClock`` maps wall time onto it, and
:mod:`~firmware_stubs.bioreactor.hub` lets the emulators of one gateway process find the run they
share by name. The ``bioreactor`` emulator plugin (``plugin.py``) starts one run and registers it
and, given a port, serves it as a bioreactor controller over OPC UA: ``controller.py`` (the asyncua
server, imported only by the plugin so the hub stays light for the emulators that merely look the
run up), ``dcu.py`` (what the controller shows: variables, units, derived readings) and
``faults.py``.
"""

from .clock import ProcessClock
from .faults import Fault
from .hub import ProcessNotFoundError, lookup, register, shared_process, unregister
from .model import FedBatchModel, PerfusionParams, ProcessParams, ProcessState

__all__ = [
    "Fault",
    "FedBatchModel",
    "PerfusionParams",
    "ProcessClock",
    "ProcessNotFoundError",
    "ProcessParams",
    "ProcessState",
    "lookup",
    "register",
    "shared_process",
    "unregister",
]
