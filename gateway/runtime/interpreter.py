"""Interpreter settings for a process that runs a gateway (``patgw run``, the benchmarks).

**Switch interval.** The store writer commits on its own thread. SQLite releases and retakes the
GIL around every statement's step; while the event loop is busy (a sink encoding JSON, a driver
decoding spectra), each retake waits for the loop's thread to yield — up to the switch interval,
5 ms by default. (Rows go in statements of 128 since issue 16; at one row a step, a commit of
thousands of rows was convoyed for seconds.) A shorter interval lets the writer through.
Measured with ``benchmarks/upstream.py`` (100,000 samples/s offered to the MQTT sink, 2 cores):
0.5 ms raised delivery from 68,936 to 85,722 samples/s and cut the p99 commit latency from
4.0 s to 1.4 s.

**Garbage collector.** Every sample allocates a few objects, so at tens of thousands of samples
a second the collector's default thresholds (700, 10, 10) ran a full collection every second or
so, each walking every object alive — the modules, the plan, the runtime — for up to 90 ms of
stalled event loop: measured at 60,000 values/s with ``benchmarks/modbus_mqtt.py``, 31 full
collections in a run, 2.2 s in all, and the p99 latency above 100 ms. What exists once the
gateway has started lives until it stops: :func:`freeze_long_lived` moves it out of the
collector's sight (``gc.freeze``), and a first generation of 10,000 objects makes collections
rarer. With both, the same run had one full collection (57 ms) and a p99 of 94 ms.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["GC_THRESHOLDS", "SWITCH_INTERVAL_S", "configure_interpreter", "freeze_long_lived"]

SWITCH_INTERVAL_S = 0.0005
GC_THRESHOLDS = (10_000, 10, 10)


def configure_interpreter() -> None:
    """Apply the settings, and freeze what exists (imports, the loaded configuration); called
    once by whatever owns the process (not by the library)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(*GC_THRESHOLDS)
    freeze_long_lived()


def freeze_long_lived() -> None:
    """Collect once, then keep every object alive now out of later collections (they are
    never freed; call it at start-up, again once the runtime has started)."""
    gc.collect()
    gc.freeze()
