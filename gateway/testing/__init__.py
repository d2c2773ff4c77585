"""A test kit for plugin authors (and this project's own tests): drive a plugin as the runtime
does, without writing fakes of the gateway.

- :class:`RecordingIO`: the :class:`~gateway.InstrumentIO` a driver is run with, recording what
  it published through the runtime's real outputs (the same checks: a NaN, a timestamp in
  seconds or an invalid quality becomes a ``bad`` sample saying why) and the runtime's real
  supervision (``connected()``, a failure marks the signals ``bad``, backoff, ``run`` again).
- :class:`GatewayRun`: a whole gateway in process, from a configuration file or a
  :class:`~gateway.Plan`: start it, wait for samples to be committed, stop it, read back what
  the store committed.
- :class:`RunningEmulator`: an emulator started by type and options (on a free port unless told
  otherwise), and the endpoint it serves.
- :class:`RecordingSink` (type ``recording``, from the :class:`RecordingSinks` plugin that
  :class:`GatewayRun` adds): what the runtime delivered upstream, batch by batch.

The pytest plugin (:mod:`gateway.testing.plugin`, entry point ``pytest11``) turns these into
fixtures: ``recording_io``, ``start_emulator``, ``run_gateway`` and ``patgw_registry``. Nothing
here needs an async pytest plugin; the objects are async context managers, used from async
tests (pytest-asyncio, anyio...).
"""

from .emulators import RunningEmulator
from .instrument import RecordingIO
from .runner import GatewayRun
from .sinks import RecordingForwardingSink, RecordingSink, RecordingSinkOptions, RecordingSinks

__all__ = [
    "GatewayRun",
    "RecordingForwardingSink",
    "RecordingIO",
    "RecordingSink",
    "RecordingSinkOptions",
    "RecordingSinks",
    "RunningEmulator",
]
