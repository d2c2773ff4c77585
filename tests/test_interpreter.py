"""The interpreter settings ``patgw run`` applies (gateway/runtime/interpreter.py), in a process
of their own: they change global state."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import gc, sys
from gateway.runtime.interpreter import GC_THRESHOLDS, configure_interpreter, freeze_long_lived
assert gc.get_freeze_count() == 0
configure_interpreter()
frozen = gc.get_freeze_count()
assert frozen > 1000, frozen  # the imports: out of the collector's sight
assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] >= 10_000
assert sys.getswitchinterval() == 0.0005
later = [[i] for i in range(5000)]  # what the runtime builds at start-up
freeze_long_lived()
assert gc.get_freeze_count() >= frozen + 5000
# Garbage made after the freeze is still collected.
class Cycle:
    pass
a = Cycle(); a.me = a
import weakref
ref = weakref.ref(a)
del a
gc.collect()
assert ref() is None
print("ok")
"""


def test_start_up_objects_are_frozen_and_collections_are_rarer() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
